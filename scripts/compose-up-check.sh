#!/usr/bin/env bash
# Starts the production compose stack for real and uses it (run by .ci/run; by the GitHub
# workflow with --real-images):
#
#   scripts/compose-up-check.sh [--real-images | --release-binary] [--break KIND] [--self-test] [--keep]
#
# - a Docker engine: the running one, else dockerd started here (vfs storage, no iptables) and
#   stopped at the end; none can start: a loud SKIPPED notice and exit 0 (never a quiet pass);
# - images: by default the stand-ins of deploy/standin/ for whatever cannot be pulled (cached
#   between runs), keel's image from the Dockerfile's own runtime stage around a binary built
#   here: the debug build .ci/run's tests made (`cargo build --all-targets`, a no-op after
#   them; debug info stripped), or with --release-binary `cargo build --release` (minutes of
#   CPU after any source change); --real-images pulls postgres, redis and nginx and runs the
#   Dockerfile's two-stage build (the release profile);
# - a copy of the deploy files (docker-compose.prod.yml, nginx.conf, scripts/, migrations/) in
#   a temporary directory with a throwaway .env.prod and a self-signed certificate for
#   example.com; `up -d`, every service running and healthy;
# - through nginx over https (published on a free loopback port): /health 200 with postgres
#   and redis passing; sign up and log in; a signed Stripe webhook answered 200 and processed;
#   /metrics 404 from nginx (while the app serves it inside the network with METRICS_TOKEN);
# - `restart app`: the session still works; scripts/deploy.sh to a second image tag and back
#   (RUNBOOK.md's deploy and rollback) with a request loop that must see no failed request;
# - `down` (no -v) keeps the volumes: up again, the user logs in; the RUNBOOK's backup and
#   restore drill commands against the compose PostgreSQL; `down -v` at the end.
# Prints PASS/FAIL per check and the time of each step; exits 1 if any failed.
# Not for a production server: it runs the project `keelcheck` on the fixed subnet of the
# compose file and tags (then deletes) keel:latest and keel:previous on the engine.
# KEEL_BINARY=PATH takes that binary instead of building one.
# --break KIND applies a deliberate break to the copy (healthcheck: postgres's healthcheck
# probes a wrong port; upstream: nginx proxies to a service that does not exist; env: the app
# loses REDIS_URL; deploy: scripts/deploy.sh is replaced by a plain `up -d app` on the new
# image, which stops the old container before the new one serves; its outage is short, so the
# request loop catches it most times, not always): the check must then fail. --self-test runs the check with each break and
# passes only if every one of them fails it. --keep leaves the stack and the directory.
set -euo pipefail
cd "$(dirname "$0")/.."

real_images=false
release_binary=false
break_kind=""
self_test=false
keep=false
while [ $# -gt 0 ]; do
  case $1 in
    --real-images) real_images=true ;;
    --release-binary) release_binary=true ;;
    --break) break_kind=${2:-}; shift ;;
    --break=*) break_kind=${1#*=} ;;
    --self-test) self_test=true ;;
    --keep) keep=true ;;
    *) printf 'usage: %s [--real-images | --release-binary] [--break healthcheck|upstream|env|deploy] [--self-test] [--keep]\n' "$0" >&2; exit 2 ;;
  esac
  shift
done
case $break_kind in "" | healthcheck | upstream | env | deploy) ;; *) echo "error: unknown --break $break_kind" >&2; exit 2 ;; esac

# shellcheck source=scripts/lib/checks.sh
. scripts/lib/checks.sh

started=$SECONDS
step_name=""
step_started=$SECONDS
timings=""
step() {
  local now=$SECONDS
  if [ -n "$step_name" ]; then timings="$timings$(printf '%5d s  %s' $((now - step_started)) "$step_name")"$'\n'; fi
  step_name=$1
  step_started=$now
  if [ -n "$1" ]; then log "[$((now - started)) s] $1"; fi
}

skip() {
  rm -f "${dockerd_log:-}"
  printf '\n%s\n' '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!'
  printf '!!! SKIPPED: compose-up-check did NOT run: %s\n' "$1"
  printf '!!! The production compose stack was not started; nothing about it is proven here.\n'
  printf '%s\n\n' '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!'
  exit 0
}

# ---- self-test: every deliberate break must fail the check ------------------------------------
if [ "$self_test" = true ]; then
  outcome=0
  # Not `deploy`: the naive deploy's outage is a second or two, which a request may ride out
  # (stalled, then answered by the new container on the same address): run it by hand.
  for kind in upstream env healthcheck; do
    log "self-test: --break $kind must fail the check"
    out=$(mktemp)
    if bash "$0" --break "$kind" >"$out" 2>&1; then
      if grep -q 'SKIPPED: compose-up-check did NOT run' "$out"; then cat "$out"; rm -f "$out"; exit 0; fi
      fail "--break $kind: the check passed"
      outcome=1
    else
      pass "--break $kind: the check failed"
      # What failed, with the check's own explanation (its indented lines).
      awk '/^FAIL|^error:/ {show = 1; print; next} show && /^      / {print; next} {show = 0}' "$out" |
        head -n 12 | sed 's/^/      /'
    fi
    rm -f "$out"
  done
  printf 'self-test %s (%d s)\n' "$([ $outcome = 0 ] && echo passed || echo FAILED)" $((SECONDS - started))
  exit $outcome
fi

# One run at a time on a machine: runs share the project name, its fixed subnet, the image tags
# and a dockerd one of them may have started (and stops at its end).
# The lock file is writable by all: root and docker-group users share the engine.
lock="${TMPDIR:-/tmp}/keel-compose-up-check.lock"
if { [ ! -e "$lock" ] && touch "$lock" && chmod 666 "$lock"; } 2>/dev/null || [ -w "$lock" ]; then
  exec 9>>"$lock"
  chmod 666 "$lock" 2>/dev/null || true
  if ! flock -n 9; then
    log "waiting for another compose-up-check on this machine ($lock)"
    flock 9
  fi
else
  log "warning: $lock is not writable: no guard against a concurrent run"
fi

# ---- a Docker engine ---------------------------------------------------------------------------
step "Docker engine"
# Debian's client matches Debian's engine; any client works with any engine of API >= 1.41.
docker=docker
if [ -x /usr/bin/docker ]; then docker=/usr/bin/docker; fi
command -v "$docker" >/dev/null || docker=""
dockerd_pid=""
dockerd_log=$(mktemp)
engine_up() { [ -n "$docker" ] && timeout 10 "$docker" info >/dev/null 2>&1; }
if ! engine_up; then
  if ! command -v dockerd >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing docker.io, docker-compose and debootstrap"
    apt_install docker.io docker-compose debootstrap || true
    if [ -x /usr/bin/docker ]; then docker=/usr/bin/docker; fi
  fi
  command -v dockerd >/dev/null || skip "no Docker engine and no dockerd to start (apt-get install docker.io)"
  [ "$(id -u)" = 0 ] || skip "no Docker engine running and not root to start dockerd"
  [ -n "$docker" ] || docker=docker
  log "starting dockerd (vfs storage, no iptables)"
  dockerd --storage-driver=vfs --iptables=false >"$dockerd_log" 2>&1 9>&- &
  dockerd_pid=$!
  for _ in $(seq 1 60); do
    if engine_up; then break; fi
    kill -0 "$dockerd_pid" 2>/dev/null || break
    sleep 0.5
  done
  if ! engine_up; then
    tail -n 5 "$dockerd_log" | sed 's/^/      /'
    kill "$dockerd_pid" 2>/dev/null || true
    wait "$dockerd_pid" 2>/dev/null || true
    skip "dockerd did not start (its log above)"
  fi
fi
engine=$("$docker" version --format '{{.Server.Version}}')
if [ -n "${COMPOSE:-}" ]; then
  read -r -a compose_cmd <<<"$COMPOSE"
elif "$docker" compose version >/dev/null 2>&1; then
  compose_cmd=("$docker" compose)
elif command -v docker-compose >/dev/null; then
  compose_cmd=(docker-compose)
else
  apt_install docker-compose
  compose_cmd=(docker-compose)
fi
compose_version=$("${compose_cmd[@]}" version --short 2>/dev/null || true)
log "engine $engine, client $docker, compose ${compose_cmd[*]} $compose_version"
# The classic builder for the stand-ins: BuildKit would fetch the `# syntax=` frontend image.
if [ "$real_images" = false ]; then export DOCKER_BUILDKIT=0; fi

project=keelcheck
work=$(mktemp -d)
dir="$work/project"
loop_pid=""
# purge_project: every container, volume and network of the project, by compose's labels
# (whatever state an interrupted run left them in).
purge_project() {
  local kind filter="label=com.docker.compose.project=$project"
  mapfile -t ids < <("$docker" ps -aq --filter "$filter")
  if [ ${#ids[@]} -gt 0 ]; then "$docker" rm -f -v "${ids[@]}" >/dev/null 2>&1 || true; fi
  for kind in volume network; do
    mapfile -t ids < <("$docker" "$kind" ls -q --filter "$filter")
    if [ ${#ids[@]} -gt 0 ]; then "$docker" "$kind" rm "${ids[@]}" >/dev/null 2>&1 || true; fi
  done
}
cleanup() {
  local rc=$?
  if [ -n "$loop_pid" ]; then kill "$loop_pid" 2>/dev/null || true; fi
  if [ "$keep" = true ]; then
    log "kept: the project $project in $dir"
  else
    if [ -f "$dir/docker-compose.prod.yml" ]; then
      (cd "$dir" && "${compose[@]}" down -v --remove-orphans -t 5 >/dev/null 2>&1) || true
    fi
    purge_project
    "$docker" rmi keel:ci-a keel:ci-b keel:latest keel:previous >/dev/null 2>&1 || true
    rm -rf "$work"
  fi
  if [ -n "$dockerd_pid" ]; then
    log "stopping the dockerd started here"
    kill "$dockerd_pid" 2>/dev/null || true
    wait "$dockerd_pid" 2>/dev/null || true
  fi
  rm -f "$dockerd_log"
  exit $rc
}
trap cleanup EXIT

# ---- images ------------------------------------------------------------------------------------
command -v openssl >/dev/null || apt_install openssl
if [ "$real_images" = true ]; then
  step "images: pull postgres, redis, nginx; the Dockerfile's two-stage build"
  sed -n 's/^ *image: *\([^ ]*\).*/\1/p' docker-compose.prod.yml | grep -v '^keel:' | sort -u |
    while read -r image; do
      "$docker" pull -q "$image" >/dev/null || die "cannot pull $image"
    done
  "$docker" build -q -t keel:ci-a . >/dev/null
  "$docker" build -q --label org.keel.ci.build=b -t keel:ci-b . >/dev/null
else
  step "images: stand-ins (deploy/standin/build.sh)"
  command -v debootstrap >/dev/null || apt_install debootstrap
  bash deploy/standin/build.sh --docker "$docker"

  step "images: keel (host cargo build, the Dockerfile's runtime stage)"
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keel-target}"
  export SQLX_OFFLINE=true
  mkdir -p "$work/app"
  if [ -n "${KEEL_BINARY:-}" ]; then
    # A binary built elsewhere (e.g. by hand, to iterate on the deploy files).
    cp "$KEEL_BINARY" "$work/app/keel"
  elif [ "$release_binary" = true ]; then
    cargo build --release --locked --bin keel 2>&1 | tail -n 1
    cp "$CARGO_TARGET_DIR/release/keel" "$work/app/keel"
  else
    # As scripts/check-deploy.sh: the tests' feature set, so right after them a no-op.
    cargo build --locked --all-targets 2>&1 | tail -n 1
    strip --strip-debug -o "$work/app/keel" "$CARGO_TARGET_DIR/debug/keel" 2>/dev/null ||
      cp "$CARGO_TARGET_DIR/debug/keel" "$work/app/keel"
  fi
  # The Dockerfile's last stage, verbatim but for its one COPY --from=builder, which takes the
  # binary from the build context instead.
  awk '/^FROM /{stage=""} {stage=stage $0 "\n"} END{printf "%s", stage}' Dockerfile |
    sed 's|^COPY --from=builder /build/target/release/keel /keel$|COPY keel /keel|' >"$work/app/Dockerfile"
  if [ "$(grep -c '^COPY keel /keel$' "$work/app/Dockerfile")" != 1 ] || grep -q -- '--from=' "$work/app/Dockerfile"; then
    die "the Dockerfile's runtime stage no longer has exactly one 'COPY --from=builder /build/target/release/keel /keel'"
  fi
  "$docker" build -q -t keel:ci-a "$work/app" >/dev/null
  "$docker" build -q --label org.keel.ci.build=b -t keel:ci-b "$work/app" >/dev/null
fi
image_a=$("$docker" image inspect --format '{{.Id}}' keel:ci-a)
image_b=$("$docker" image inspect --format '{{.Id}}' keel:ci-b)
[ "$image_a" != "$image_b" ] || die "keel:ci-a and keel:ci-b are the same image"

# ---- the project -------------------------------------------------------------------------------
step "project: deploy files, .env.prod, certificate"
mkdir -p "$dir/certs" "$dir/acme" "$dir/backups"
cp docker-compose.prod.yml nginx.conf "$dir/"
cp -r scripts migrations "$dir/"
mkdir -p "$dir/deploy" && cp -r deploy/postgres-init "$dir/deploy/"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=example.com \
  -addext subjectAltName=DNS:example.com \
  -keyout "$dir/certs/privkey.pem" -out "$dir/certs/fullchain.pem" 2>/dev/null
cp "$dir/certs/fullchain.pem" "$dir/certs/chain.pem"
http_port=$(free_port)
https_port=$(free_port)
pg_password=$(openssl rand -hex 24)
webhook_secret="whsec_$(openssl rand -hex 24)"
metrics_token=$(openssl rand -hex 24)
cat >"$dir/.env.prod" <<ENV
COMPOSE_PROJECT_NAME=$project
HTTP_PORT=127.0.0.1:$http_port
HTTPS_PORT=127.0.0.1:$https_port
APP_ENV=production
BASE_URL=https://example.com
POSTGRES_PASSWORD=$(openssl rand -hex 24)
KEEL_DB_PASSWORD=$pg_password
DATABASE_URL=postgres://keel:$pg_password@postgres:5432/keel
REDIS_PASSWORD=$(openssl rand -hex 24)
SECRET_KEY=$(openssl rand -hex 64)
STRIPE_SECRET_KEY=sk_test_$(openssl rand -hex 12)
STRIPE_WEBHOOK_SECRET=$webhook_secret
STRIPE_API_BASE=http://127.0.0.1:9
SMTP_URL=smtp://127.0.0.1:2525
EMAIL_FROM=keel check <noreply@example.com>
METRICS_TOKEN=$metrics_token
ENV
chmod 600 "$dir/.env.prod"
compose=("${compose_cmd[@]}" -f docker-compose.prod.yml --env-file .env.prod -p "$project")
dc() { (cd "$dir" && "${compose[@]}" "$@"); }

# shellcheck disable=SC2016 # nginx's variable, not the shell's
case $break_kind in
  healthcheck) sed -i 's|pg_isready -U keel -d keel|pg_isready -U keel -d keel -p 5433|' "$dir/docker-compose.prod.yml" ;;
  upstream) sed -i 's|set $keel_app http://app:8080;|set $keel_app http://api:8080;|' "$dir/nginx.conf" ;;
  env) sed -i '/^ *REDIS_URL: redis:/d' "$dir/docker-compose.prod.yml" ;;
  deploy)
    cat >"$dir/scripts/deploy.sh" <<'NAIVE'
#!/usr/bin/env bash
# The naive deploy (the RUNBOOK's before): compose stops the old app container, then starts
# the new one.
set -euo pipefail
read -r -a compose <<<"$COMPOSE"
"${DOCKER:-docker}" tag "$1" keel:latest
"${compose[@]}" -f docker-compose.prod.yml --env-file .env.prod -p "$COMPOSE_PROJECT" up -d --no-build
NAIVE
    ;;
esac
if [ -n "$break_kind" ]; then
  cmp -s docker-compose.prod.yml "$dir/docker-compose.prod.yml" && cmp -s nginx.conf "$dir/nginx.conf" &&
    cmp -s scripts/deploy.sh "$dir/scripts/deploy.sh" &&
    die "--break $break_kind changed nothing (the files moved on: update the break)"
  log "DELIBERATE BREAK applied to the copy: $break_kind"
fi

# A project left by an interrupted run goes first (same fixed subnet).
purge_project

# ---- up ----------------------------------------------------------------------------------------
step "first start: scripts/deploy.sh keel:ci-a (up -d; initdb, migrations)"
# status_all: "service state health" per container of the project.
status_all() {
  local id
  for id in $(dc ps -q); do
    "$docker" inspect --format '{{ index .Config.Labels "com.docker.compose.service" }} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}-{{end}}' "$id"
  done
}
all_healthy() {
  local states
  states=$(status_all)
  [ "$(wc -l <<<"$states")" -ge 5 ] || return 1
  ! grep -vE '^[a-z]+ running (healthy|-)$' <<<"$states" >/dev/null
}
wait_healthy() {
  for _ in $(seq 1 "${1:-120}"); do
    if all_healthy; then return 0; fi
    sleep 1
  done
  status_all
  return 1
}
# `up -d` waits for the healthchecks compose's depends_on names; a container in a crash loop
# (restart policy) would keep it waiting for ever, so that ends it early.
crash_looping() {
  local id
  for id in $(dc ps -q 2>/dev/null); do
    if [ "$("$docker" inspect --format '{{.RestartCount}}' "$id")" -ge 2 ]; then
      "$docker" inspect --format '{{ index .Config.Labels "com.docker.compose.service" }}' "$id"
      return 0
    fi
  done
  return 1
}
# The RUNBOOK's first start: scripts/deploy.sh with nothing running is `up -d --no-build`.
(cd "$dir" && DOCKER="$docker" COMPOSE="${compose_cmd[*]}" COMPOSE_PROJECT=$project \
  exec bash scripts/deploy.sh keel:ci-a) >"$work/up.log" 2>&1 &
up_pid=$!
up_ok=true
for _ in $(seq 1 300); do
  kill -0 "$up_pid" 2>/dev/null || break
  if looping=$(crash_looping); then
    echo "      $looping keeps restarting"
    kill "$up_pid" 2>/dev/null || true
    break
  fi
  sleep 1
done
if kill -0 "$up_pid" 2>/dev/null; then kill "$up_pid" 2>/dev/null || true; fi
wait "$up_pid" || up_ok=false
if [ "$up_ok" = false ]; then
  sed 's/^/      /' "$work/up.log" | tail -n 20
  status_all | sed 's/^/      /'
  dc logs --tail 10 2>&1 | sed 's/^/      /' | tail -n 50
  fail "up -d"
  die "the stack did not start"
fi
pass "up -d"
if wait_healthy 120 >"$work/health.txt"; then
  pass "every service running, healthy where it has a healthcheck"
  status_all | sed 's/^/      /'
else
  fail "every service running, healthy where it has a healthcheck"
  sed 's/^/      /' "$work/health.txt"
  dc logs --tail 20 2>&1 | sed 's/^/      /' | tail -n 60
  die "the stack is not healthy"
fi

# ---- through nginx -----------------------------------------------------------------------------
base="https://example.com:$https_port"
tls() { curl -sk --max-time 15 --resolve "example.com:$https_port:127.0.0.1" "$@"; }
status() { tls -o /dev/null -w '%{http_code}' "$@"; }

step "through nginx: /health, signup, login, webhook, /metrics"
health_passes() {
  local body code
  body=$(tls -w '\n%{http_code}' "$base/health")
  code=${body##*$'\n'}
  body=${body%$'\n'*}
  python3 - "$code" "$body" <<'PY'
import json, sys
code = sys.argv[1]
try:
    body = json.loads(sys.argv[2])
except ValueError:
    print(f"{code}, not JSON: {sys.argv[2][:120]!r}")
    sys.exit(1)
checks = {name: [c.get("status") for c in entries] for name, entries in body.get("checks", {}).items()}
print(f"{code} status={body.get('status')} checks={checks}")
ok = code == "200" and body.get("status") == "pass"
for want in ("postgres", "redis"):
    ok = ok and any(n.startswith(want) and all(s == "pass" for s in st) for n, st in checks.items())
sys.exit(0 if ok else 1)
PY
}
check "GET /health through nginx: 200, postgres and redis pass" health_passes
if [ "$failures" -gt 0 ]; then
  dc logs --tail 10 nginx app 2>&1 | sed 's/^/      /' | tail -n 30
  die "nothing else can work without /health through nginx"
fi
check "plain HTTP: 301 to https" expect "301 https://example.com/login" \
  curl -s --max-time 10 -o /dev/null -w '%{http_code} %{redirect_url}' -H 'Host: example.com' \
  "http://127.0.0.1:$http_port/login"

email="compose-check-$(openssl rand -hex 4)@example.com"
password="compose check $(openssl rand -hex 8)"
jar="$work/cookies.txt"
form_token() {
  tls -b "$jar" -c "$jar" "$base$1" | sed -n 's/.*name="csrf_token" value="\([^"]*\)".*/\1/p' | head -n 1
}
session_cookie() { awk '$6 == "__Host-keel_session" { print $6 "=" $7 }' "$jar"; }
signup() {
  local token code
  rm -f "$jar"
  token=$(form_token /signup)
  [ -n "$token" ] || { echo "no csrf_token on /signup"; return 1; }
  code=$(status -b "$jar" -c "$jar" --data-urlencode "email=$email" --data-urlencode "password=$password" \
    --data-urlencode "csrf_token=$token" "$base/signup")
  [ "$code" = 303 ] || { echo "POST /signup: $code"; return 1; }
  [ -n "$(session_cookie)" ] || { echo "no session cookie after signup"; return 1; }
}
login() {
  local token code
  rm -f "$jar"
  token=$(form_token /login)
  [ -n "$token" ] || { echo "no csrf_token on /login"; return 1; }
  code=$(tls -o /dev/null -w '%{http_code} %{redirect_url}' -b "$jar" -c "$jar" \
    --data-urlencode "email=$email" --data-urlencode "password=$password" \
    --data-urlencode "csrf_token=$token" "$base/login")
  [ "${code%% *}" = 303 ] || { echo "POST /login: $code"; return 1; }
  [ -n "$(session_cookie)" ] || { echo "no session cookie after login"; return 1; }
  echo "POST /login: $code"
}
dashboard() { expect 200 status -H "Cookie: $session" "$base/dashboard"; }
check "sign up $email (303, a session)" signup
check "log in (303, a new session)" login
# (check runs its command in a subshell: the cookie is read from the jar here.)
session=$(session_cookie)
check "GET /dashboard with that session: 200" dashboard

event_file=tests/fixtures/stripe/events/customer.updated.json
event_id=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["id"])' "$event_file")
psql_keel() { dc exec -T postgres psql -U keel -d keel -XAtc "$1"; }
webhook() {
  local t sig code
  t=$(date +%s)
  sig=$({ printf '%s.' "$t"; cat "$event_file"; } | openssl dgst -sha256 -hmac "$webhook_secret" -r | cut -d' ' -f1)
  code=$(status -H 'Content-Type: application/json' -H "Stripe-Signature: t=$t,v1=$sig" \
    --data-binary "@$event_file" "$base/webhooks/stripe")
  [ "$code" = 200 ] || { echo "POST /webhooks/stripe: $code"; return 1; }
  local processed=""
  for _ in $(seq 1 30); do
    processed=$(psql_keel "SELECT processed_at IS NOT NULL FROM stripe_events WHERE id = '$event_id'" 2>&1) || true
    if [ "$processed" = t ]; then echo "200; $event_id stored and processed"; return 0; fi
    sleep 1
  done
  echo "200, but $event_id: processed='$processed' after 30 s"
  return 1
}
check "signed Stripe webhook ($event_id): 200, stored, processed" webhook
bad_signature() {
  expect 400 status -H 'Content-Type: application/json' -H "Stripe-Signature: t=$(date +%s),v1=$(printf '0%.0s' $(seq 1 64))" \
    --data-binary "@$event_file" "$base/webhooks/stripe"
}
check "webhook with a wrong signature: 400" bad_signature

metrics_hidden() {
  local headers="$work/metrics.headers" code
  code=$(tls -D "$headers" -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $metrics_token" "$base/metrics")
  [ "$code" = 404 ] || { echo "GET /metrics through nginx: $code"; return 1; }
  if grep -qi '^x-request-id:' "$headers"; then echo "the 404 came from keel, not nginx"; return 1; fi
  # Inside the network it is there (Prometheus's way): the app container's own address.
  local app_ip
  app_ip=$("$docker" inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$(dc ps -q app)")
  code=$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $metrics_token" "http://$app_ip:8080/metrics")
  echo "through nginx: 404 (nginx's); app:8080/metrics inside the network: $code"
  [ "$code" = 200 ]
}
check "/metrics: 404 from nginx outside, 200 on app:8080 inside with METRICS_TOKEN" metrics_hidden

# nginx sets X-Forwarded-For to the peer it sees and keel trusts nginx's address alone: a
# client writing a new address into it on every request still spends one budget
# (RATE_LIMIT_BURST 50, then 10/s). With the old rule (nginx appending, the whole subnet
# trusted, its gateway included) each request here was a new client.
forged_addresses_share_a_budget() {
  local i limited args=()
  # One curl, one connection (--next), so the 150 requests take well under a second: faster
  # than the budget refills.
  for i in $(seq 1 150); do
    args+=(-sk --resolve "example.com:$https_port:127.0.0.1" -o /dev/null -w '%{http_code}\n'
      -H "X-Forwarded-For: 203.0.113.$i" "$base/" --next)
  done
  limited=$(curl --max-time 30 "${args[@]:0:${#args[@]}-1}" | grep -c '^429$' || true)
  sleep 6 # the budget refills before the next steps
  echo "$limited of 150 requests with a forged X-Forwarded-For answered 429"
  [ "$limited" -gt 0 ]
}
check "a forged X-Forwarded-For does not buy a new rate-limit budget" forged_addresses_share_a_budget

# Least privilege: every container drops all capabilities (adding back only what its
# entrypoint needs) and cannot gain more; the backup container holds the database's
# credentials but none of keel's other secrets; Redis answers no client without its password.
least_privilege() {
  local id name caps opts env
  for id in $(dc ps -q); do
    name=$("$docker" inspect --format '{{.Name}}' "$id")
    caps=$("$docker" inspect --format '{{.HostConfig.CapDrop}}' "$id")
    opts=$("$docker" inspect --format '{{.HostConfig.SecurityOpt}}' "$id")
    [[ $caps == *ALL* && $opts == *no-new-privileges* ]] || { echo "$name: cap_drop $caps, security_opt $opts"; return 1; }
  done
  env=$("$docker" inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$(dc ps -q backup)")
  grep -q '^DATABASE_URL=' <<<"$env" || { echo "backup: no DATABASE_URL"; return 1; }
  if grep -E '^(SECRET_KEY|STRIPE_SECRET_KEY|STRIPE_WEBHOOK_SECRET|SMTP_URL|METRICS_TOKEN)=' <<<"$env"; then
    echo "backup: holds the secrets above"
    return 1
  fi
  local superuser
  superuser=$(psql_keel "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
  [ "$superuser" = f ] || { echo "keel's database role is a superuser"; return 1; }
  local anonymous
  anonymous=$(dc exec -T redis env -u REDISCLI_AUTH redis-cli ping 2>&1 || true)
  echo "keel's role: no superuser; redis-cli ping without the password: $anonymous"
  [[ $anonymous == *NOAUTH* ]]
}
check "least privilege: cap_drop ALL and no-new-privileges everywhere, backup without keel's secrets, keel's database role no superuser, Redis behind its password" least_privilege

# ---- restart -----------------------------------------------------------------------------------
step "restart app: the session survives"
dc restart app >/dev/null 2>&1
check "after restart app: every service healthy" wait_healthy 90
restarted_dashboard() {
  local code=""
  for _ in $(seq 1 20); do
    code=$(status -H "Cookie: $session" "$base/dashboard")
    if [ "$code" = 200 ]; then echo "GET /dashboard: 200"; return 0; fi
    sleep 0.5
  done
  echo "GET /dashboard after the restart: $code"
  return 1
}
check "the same session cookie: /dashboard 200" restarted_dashboard

# ---- deploy and roll back (RUNBOOK.md) ---------------------------------------------------------
# request_loop FILE: GET /health/live through nginx until FILE.stop exists, one "status
# seconds" a line.
request_loop() {
  while [ ! -e "$1.stop" ]; do
    tls -o /dev/null -w '%{http_code} %{time_total}\n' --max-time 10 "$base/health/live" >>"$1" ||
      echo "curl-failed 10" >>"$1"
    sleep 0.05
  done
}
running_image() { "$docker" inspect --format '{{.Image}}' "$(dc ps -q app)"; }
deploy() {
  local image=$1 want=$2 loop="$work/loop.$3"
  : >"$loop"
  request_loop "$loop" &
  loop_pid=$!
  sleep 1
  (cd "$dir" && DOCKER="$docker" COMPOSE="${compose_cmd[*]}" COMPOSE_PROJECT=$project bash scripts/deploy.sh "$image") >"$work/deploy.log" 2>&1
  local rc=$?
  tail -n 1 "$work/deploy.log"
  sleep 2
  touch "$loop.stop"
  wait "$loop_pid" || true
  loop_pid=""
  local total bad
  total=$(wc -l <"$loop")
  bad=$(grep -cv '^200 ' "$loop" || true)
  echo "request loop: $total requests, $bad failed ($(cut -d' ' -f1 "$loop" | sort | uniq -c | tr -s ' ' | tr '\n' ';')" \
    "slowest $(cut -d' ' -f2 "$loop" | sort -n | tail -n 1) s)"
  [ "$rc" = 0 ] || { sed 's/^/  /' "$work/deploy.log"; echo "scripts/deploy.sh $image failed"; return 1; }
  [ "$(running_image)" = "$want" ] || { echo "the app runs $(running_image), not $want"; return 1; }
  [ "$(dc ps -q app | wc -l)" = 1 ] || { echo "more than one app container left"; return 1; }
  [ "$total" -ge 20 ] && [ "$bad" = 0 ]
}
step "deploy keel:ci-b (scripts/deploy.sh) under a request loop"
check "deploy keel:ci-b: running it, no failed request" deploy keel:ci-b "$image_b" deploy
step "roll back to keel:previous under a request loop"
check "roll back (keel:previous = keel:ci-a): running it, no failed request" deploy keel:previous "$image_a" rollback
check "after the rollback: the session still works" dashboard

# ---- down keeps the volume ---------------------------------------------------------------------
step "down (no -v), up again: the data is still there"
dc down -t 30 >/dev/null 2>&1
volume_kept() {
  "$docker" volume inspect "${project}_pgdata" >/dev/null || { echo "volume ${project}_pgdata is gone"; return 1; }
  [ -z "$(dc ps -q)" ] || { echo "containers left after down"; return 1; }
  echo "${project}_pgdata kept, no container left"
}
check "down: no container left, volume ${project}_pgdata kept" volume_kept
dc up -d --no-build >"$work/up2.log" 2>&1 || sed 's/^/      /' "$work/up2.log"
check "up again: every service healthy" wait_healthy 120
check "up again: the user logs in (data kept)" login
session=$(session_cookie)
check "up again: /dashboard 200" dashboard

# ---- backup and restore drill (RUNBOOK.md's commands) ------------------------------------------
step "backup now and the restore drill (RUNBOOK.md)"
backup_now() {
  local out
  out=$(dc run --rm --entrypoint bash backup /scripts/backup.sh 2>&1) || { printf '%s\n' "$out" | tail -n 5; return 1; }
  printf '%s\n' "$out" | grep '^backup: wrote' || true
  compgen -G "$dir/backups/keel-*.dump" >/dev/null
}
check "backup now: a keel-*.dump in ./backups" backup_now
# shellcheck disable=SC2016 # expanded in the container, as in the RUNBOOK
drill() {
  local out
  out=$(dc run --rm --entrypoint bash backup -c \
    'PGPASSWORD="$POSTGRES_PASSWORD" DRILL_DATABASE_SERVER=postgres://postgres@postgres:5432 bash /scripts/restore-drill.sh --expect-from "$DATABASE_URL"' 2>&1)
  [ "$(printf '%s\n' "$out" | tail -n 1)" = RESTORE_OK ] || { printf '%s\n' "$out" | tail -n 5; return 1; }
  printf '%s\n' "$out" | grep -E '^(rows users|live users|drill took)' | tr '\n' ';'
  echo " RESTORE_OK"
}
check "restore drill against the compose PostgreSQL: RESTORE_OK" drill
runbook_matches() {
  # The commands above are the RUNBOOK's, verbatim (but for -p and the project directory).
  grep -qF 'run --rm --entrypoint bash backup /scripts/backup.sh' RUNBOOK.md &&
    grep -qF "'PGPASSWORD=\"\$POSTGRES_PASSWORD\" DRILL_DATABASE_SERVER=postgres://postgres@postgres:5432 bash /scripts/restore-drill.sh --expect-from \"\$DATABASE_URL\"'" RUNBOOK.md &&
    grep -qF 'scripts/deploy.sh keel:previous' RUNBOOK.md
}
check "RUNBOOK.md states the backup, drill and deploy/rollback commands run here" runbook_matches

no_restarts() {
  local id restarts=""
  for id in $(dc ps -q); do
    restarts="$restarts$("$docker" inspect --format '{{ index .Config.Labels "com.docker.compose.service" }}={{.RestartCount}}' "$id") "
  done
  echo "$restarts"
  ! grep -qE '=[1-9]' <<<"$restarts"
}
check "no container restarted by its restart policy (a crash)" no_restarts
step ""

printf '\ntimings:\n%s' "$timings"
elapsed=$((SECONDS - started))
if [ "$failures" -gt 0 ]; then
  printf '%d check(s) failed (%d s)\n' "$failures" "$elapsed"
  exit 1
fi
printf 'compose up check passed (%d s; engine %s, %s images)\n' "$elapsed" "$engine" \
  "$([ "$real_images" = true ] && echo real || echo stand-in)"
