#!/usr/bin/env bash
# keel benchmark: one run, one machine, one table.
#
# Measures, against a fresh PostgreSQL database:
#   - start to ready: spawning `keel serve` until GET /health/live answers 200
#     (includes connecting to PostgreSQL, creating the database and migrating);
#   - idle RSS (1 s after ready) and peak RSS (after all load runs) of keel;
#   - req/s and p99 latency with wrk for keel's /, /health and /health/live,
#     and for examples/bare_hello serving the very bytes keel's / returned;
#   - then /dashboard signed in, directly and from a second keel whose pool goes through
#     PgBouncer (1.21+, transaction mode), logins, and webhook ingest.
# The bare server is measured before and after keel; the mean of the two runs
# is the baseline, so "ratio vs bare" is keel's middleware + templating cost on
# this (noisy, 2-core) machine rather than an absolute number.
#
# Usage: bash bench/run.sh [--no-build]     (knobs: see bench/README.md)
# All traffic goes to 127.0.0.1 only; every loop is bounded.
#
# The readiness poll is plain bash (/dev/tcp, $EPOCHREALTIME, read -t) rather
# than curl + date + sleep: on the 2-core box one curl takes ~14 ms to start,
# which would make a "<= 100 ms" start-to-ready target unmeasurable. This way
# a poll iteration is ~2 ms and the clock is read without forking.

set -euo pipefail

((BASH_VERSINFO[0] >= 5)) || { echo "bench/run.sh needs bash >= 5" >&2; exit 2; }

usage() {
    cat <<'EOF'
Usage: bash bench/run.sh [--no-build]

  --no-build   reuse the release binaries already in $CARGO_TARGET_DIR

Environment:
  CARGO_TARGET_DIR       default $HOME/.cache/keel-target
  BENCH_DURATION         seconds per measured wrk run (default 10)
  BENCH_DATABASE_SERVER  default postgres://postgres@127.0.0.1:5432 (no path)
  BENCH_REDIS_URL        default redis://127.0.0.1:6379
EOF
}

BUILD=1
for arg in "$@"; do
    case "$arg" in
        --no-build) BUILD=0 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keel-target}"
KEEL="$CARGO_TARGET_DIR/release/keel"
BARE="$CARGO_TARGET_DIR/release/examples/bare_hello"

DURATION="${BENCH_DURATION:-10}"
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_DURATION must be whole seconds, got '$DURATION'" >&2; exit 2; }
WARMUP=2
THREADS=2
CONNECTIONS=64
READY_TIMEOUT_S=30
POLL_INTERVAL_S=0.002
DB_SERVER="${BENCH_DATABASE_SERVER:-postgres://postgres@127.0.0.1:5432}"
DB_SERVER="${DB_SERVER%/}"
REDIS_URL="${BENCH_REDIS_URL:-redis://127.0.0.1:6379}"
BENCH_DB="keel_bench_$$"
RESULTS_DIR="$REPO_ROOT/bench/results"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
COMMAND="BENCH_DURATION=$DURATION bash bench/run.sh${*:+ $*}"

KEEL_PID=""
KEEL2_PID="" # keel through PgBouncer
PGB_PID=""
BARE_PID=""
WRK_PID=""
DB_CREATED=0 # set once keel (which creates the database) has been spawned
WORK=$(mktemp -d "${TMPDIR:-/tmp}/keel-bench.XXXXXX")

# ---------------------------------------------------------------- helpers ---

log() { printf '==> %s\n' "$*" >&2; }

die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

# Timestamps are ${EPOCHREALTIME/[.,]/}: microseconds since the epoch, read
# without forking (a $(function) or $(date) would fork).

# Prints a float expression's value with the given printf format, e.g.
# calc '%.2f' '1 / 3'.
calc() { awk "BEGIN { printf \"$1\", $2 }"; }

# True (exit 0) when the awk condition holds, e.g. check '1.2 >= 0.8'.
check() { awk "BEGIN { exit !($1) }"; }

# pass_fail CONDITION [WRK_KEY]: a run that had failed requests never passes.
pass_fail() {
    if [[ -n "${2:-}" ]] && ((NON2XX[$2] + SOCKET_ERRORS[$2] > 0)); then
        echo "FAIL (failed requests)"
    elif check "$1"; then
        echo PASS
    else
        echo FAIL
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# fetch URL FILE: the body of a 200 response, or die.
fetch() { curl -fsS --max-time 5 -o "$2" "$1" || die "GET $1 failed"; }

db_admin() {
    psql "$DB_SERVER/postgres" -X -q -v ON_ERROR_STOP=1 -c "$1"
}

# bench_sql SQL: one value from keel's bench database.
bench_sql() {
    psql "$DB_SERVER/$BENCH_DB?sslmode=disable" -X -q -t -A -v ON_ERROR_STOP=1 -c "$1"
}

# Reads a field (in KiB) from /proc/PID/status and prints it in MiB.
proc_mib() {
    local pid=$1 field=$2 kib
    kib=$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$pid/status")
    [[ -n "$kib" ]] || die "no $field in /proc/$pid/status"
    calc '%.1f' "$kib / 1024"
}

stop_server() {
    local pid=$1 _
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_server "$WRK_PID"
    stop_server "$BARE_PID"
    stop_server "$KEEL_PID"
    stop_server "$KEEL2_PID"
    stop_server "$PGB_PID"
    if ((DB_CREATED)); then
        db_admin "DROP DATABASE IF EXISTS \"$BENCH_DB\" WITH (FORCE)" >/dev/null 2>&1 ||
            printf 'WARNING: could not drop database %s\n' "$BENCH_DB" >&2
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# probe_200 PORT PATH: true when GET http://127.0.0.1:PORT/PATH answers 200.
# One HTTP/1.1 request over bash's /dev/tcp, so no process is forked.
# Callers ignore SIGPIPE meanwhile, in case the server drops the connection.
probe_200() {
    local port=$1 path=$2 fd status=""
    { exec {fd}<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null || return 1
    {
        printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' \
            "$path" "$port" >&"$fd"
    } 2>/dev/null || true
    IFS= read -r -t 1 -u "$fd" status || true
    exec {fd}>&-
    [[ "$status" == "HTTP/1."[01]" 200 "* ]]
}

# read -t on a pipe nobody writes to: a sub-ms-accurate sleep without a fork.
exec {SLEEP_FD}<> <(:)
nap() { read -r -t "$1" -u "$SLEEP_FD" _ || true; }

# wait_ready NAME PID PORT PATH LOGFILE START_US
# Polls 127.0.0.1:PORT/PATH every ~2 ms until it answers 200; sets READY_MS to
# the time since START_US. Fails after READY_TIMEOUT_S or if the process exits.
READY_MS=""
wait_ready() {
    local name=$1 pid=$2 port=$3 path=$4 logfile=$5 start_us=$6 deadline now
    deadline=$((start_us + READY_TIMEOUT_S * 1000000))
    trap '' PIPE
    while now=${EPOCHREALTIME/[.,]/} && ((now < deadline)); do
        if probe_200 "$port" "$path"; then
            now=${EPOCHREALTIME/[.,]/}
            READY_MS=$(calc '%.1f' "($now - $start_us) / 1000")
            trap - PIPE
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 40 "$logfile" >&2 || true
            die "$name exited before GET $path answered 200 (log above)"
        fi
        nap "$POLL_INTERVAL_S"
    done
    tail -n 40 "$logfile" >&2 || true
    die "$name: GET $path on port $port did not answer 200 within ${READY_TIMEOUT_S}s (log above)"
}

# wrk's latency value ("812.00us", "1.23ms", "2.00s", "1.00m") in ms.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000
        else if (v ~ /ms$/) n += 0
        else if (v ~ /s$/) n *= 1000
        else if (v ~ /m$/) n *= 60000
        else if (v ~ /h$/) n *= 3600000
        printf "%.2f", n
    }'
}

# Runs wrk in the background and waits for it: bash defers traps until a
# foreground command ends, so this lets INT/TERM stop a long run at once.
wrk_wait() {
    wrk "$@" &
    WRK_PID=$!
    wait "$WRK_PID"
    WRK_PID=""
}

# CPU time (user + system) a process has used so far, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
CLK_TCK=$(getconf CLK_TCK)

# run_wrk KEY URL PID [WRK_OPTION...]
# One discarded warm-up run, then the measured run (extra options, e.g. a header or a
# script, go to both). Fills RPS, P99_MS, CPU_US
# (CPU time the server process PID spent per request: unlike req/s, it hardly
# moves when the other core is busy), NON2XX and SOCKET_ERRORS for KEY, and
# warns about failed requests.
declare -A RPS=() P99_MS=() CPU_US=() NON2XX=() SOCKET_ERRORS=()
run_wrk() {
    local key=$1 url=$2 pid=$3 out="$WORK/wrk-$1.txt" p99 ticks requests
    shift 3
    log "wrk $url ($key): ${WARMUP}s warm-up + ${DURATION}s"
    wrk_wait -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" "$@" "$url" >/dev/null
    ticks=$(cpu_ticks "$pid")
    wrk_wait -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@" "$url" >"$out"
    ticks=$(($(cpu_ticks "$pid") - ticks))
    requests=$(awk '/requests in/ { print $1 }' "$out")
    CPU_US[$key]=$(calc '%.1f' "$ticks * 1000000 / $CLK_TCK / ${requests:-1}")

    RPS[$key]=$(awk '$1 == "Requests/sec:" { printf "%.0f", $2 }' "$out")
    p99=$(awk '$1 == "99%" { print $2 }' "$out")
    [[ -n "${RPS[$key]}" && -n "$p99" ]] || { cat "$out" >&2; die "cannot parse wrk output for $key"; }
    P99_MS[$key]=$(to_ms "$p99")
    NON2XX[$key]=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
    NON2XX[$key]=${NON2XX[$key]:-0}
    # "Socket errors: connect 0, read 0, write 0, timeout 0" -> sum.
    SOCKET_ERRORS[$key]=$(awk '/Socket errors:/ { gsub(/,/, ""); print $4 + $6 + $8 + $10 }' "$out")
    SOCKET_ERRORS[$key]=${SOCKET_ERRORS[$key]:-0}
    if ((NON2XX[$key] > 0 || SOCKET_ERRORS[$key] > 0)); then
        printf 'WARNING: %s: %s non-2xx/3xx responses, %s socket errors\n' \
            "$key" "${NON2XX[$key]}" "${SOCKET_ERRORS[$key]}" >&2
    fi
}

# ------------------------------------------------------------------ setup ---

for tool in curl wrk psql python3 awk; do
    command -v "$tool" >/dev/null || die "$tool is required (apt-get install -y wrk postgresql-client curl)"
done

if ((BUILD)); then
    log "cargo build --release --bin keel --example bare_hello (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$REPO_ROOT" && cargo build --release --bin keel --example bare_hello)
fi
for bin in "$KEEL" "$BARE"; do
    [[ -x "$bin" ]] || die "$bin not found: run without --no-build first"
done

db_admin 'SELECT 1' >/dev/null || die "cannot reach PostgreSQL at $DB_SERVER (set BENCH_DATABASE_SERVER)"

if command -v openssl >/dev/null; then
    SECRET_KEY=$(openssl rand -hex 64)
else
    SECRET_KEY=$(head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \n')
fi

WEBHOOK_SECRET="whsec_bench_$SECRET_KEY"

# ------------------------------------------------------------------- keel ---

KEEL_PORT=$(free_port)
KEEL_URL="http://127.0.0.1:$KEEL_PORT"
DB_CREATED=1

# Starts keel in the background (KEEL_PID) and waits for it (READY_MS).
# The database is on loopback, so TLS is turned off: against a server that offers TLS, each
# new connection costs a handshake (~90 ms with the local PostgreSQL here), which would
# measure the server's TLS setup rather than keel's start.
# Logging as in production (JSON lines, the default `info` filter: one access-log line per
# request), so the ratio includes what logging costs. The rate limit is raised out of the way
# but still runs: its per-request cost is part of the measurement.
KEEL_ENV=(
    APP_ENV=development
    BIND_ADDR="127.0.0.1:$KEEL_PORT"
    DATABASE_URL="$DB_SERVER/$BENCH_DB?sslmode=disable"
    REDIS_URL="$REDIS_URL"
    SECRET_KEY="$SECRET_KEY"
    STRIPE_WEBHOOK_SECRET="$WEBHOOK_SECRET"
    RATE_LIMIT_PER_SECOND=1000000
    RATE_LIMIT_BURST=1000000
    AUTH_RATE_LIMIT_PER_MINUTE=1000000
    LOG_FORMAT=json
)
start_keel() {
    local start_us=${EPOCHREALTIME/[.,]/}
    env -u RUST_LOG "${KEEL_ENV[@]}" "$KEEL" serve >>"$WORK/keel.log" 2>&1 &
    KEEL_PID=$!
    wait_ready keel "$KEEL_PID" "$KEEL_PORT" /health/live "$WORK/keel.log" "$start_us"
}

# The first start creates the database and applies every migration; a deploy or restart
# finds both done, so the start-to-ready target is measured on the second start.
log "first start of keel on $KEEL_URL (creates database $BENCH_DB)"
start_keel
KEEL_FIRST_READY_MS=$READY_MS
stop_server "$KEEL_PID"
log "restarting keel"
start_keel
KEEL_READY_MS=$READY_MS

sleep 1
KEEL_IDLE_MIB=$(proc_mib "$KEEL_PID" VmRSS)
log "keel ready in ${KEEL_READY_MS} ms, idle RSS ${KEEL_IDLE_MIB} MiB"

# ------------------------------------------------------------------- bare ---

fetch "$KEEL_URL/" "$WORK/index.html"
BARE_PORT=$(free_port)
BARE_URL="http://127.0.0.1:$BARE_PORT"
log "starting bare_hello on $BARE_URL ($(wc -c <"$WORK/index.html") byte body)"
start_us=${EPOCHREALTIME/[.,]/}
"$BARE" "127.0.0.1:$BARE_PORT" "$WORK/index.html" >"$WORK/bare.log" 2>&1 &
BARE_PID=$!
wait_ready bare_hello "$BARE_PID" "$BARE_PORT" / "$WORK/bare.log" "$start_us"
BARE_READY_MS=$READY_MS

# Both servers must serve the same bytes, or the ratio compares apples and pears.
fetch "$KEEL_URL/" "$WORK/keel-again.html"
fetch "$BARE_URL/" "$WORK/bare.html"
if ! cmp -s "$WORK/keel-again.html" "$WORK/bare.html"; then
    keel_size=$(wc -c <"$WORK/keel-again.html")
    bare_size=$(wc -c <"$WORK/bare.html")
    ((keel_size == bare_size)) ||
        die "keel / ($keel_size bytes) and bare / ($bare_size bytes) differ: not a fair baseline"
    printf 'WARNING: keel / varies per request (same %s bytes); comparison still fair\n' "$keel_size" >&2
fi

# -------------------------------------------------------------- load runs ---

run_wrk bare1 "$BARE_URL/" "$BARE_PID"
run_wrk root "$KEEL_URL/" "$KEEL_PID"
run_wrk health "$KEEL_URL/health" "$KEEL_PID"
run_wrk live "$KEEL_URL/health/live" "$KEEL_PID"
run_wrk bare2 "$BARE_URL/" "$BARE_PID"

# ----------------------------------------------------------- signed in ---

# One account, signed up through the real form; its session cookie for /dashboard.
JAR="$WORK/cookies.txt"
# form_token PATH: the csrf_token of the form at PATH, with the jar's cookies.
form_token() {
    curl -fsS --max-time 5 -b "$JAR" -c "$JAR" "$KEEL_URL$1" |
        sed -n 's/.*name="csrf_token" value="\([^"]*\)".*/\1/p' | head -n 1
}
BENCH_EMAIL="bench@example.com"
BENCH_PASSWORD="bench password 123"
token=$(form_token /signup)
[[ -n "$token" ]] || die "no csrf_token on /signup"
status=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' -b "$JAR" -c "$JAR" \
    --data-urlencode "email=$BENCH_EMAIL" --data-urlencode "password=$BENCH_PASSWORD" \
    --data-urlencode "csrf_token=$token" "$KEEL_URL/signup")
[[ "$status" == 303 ]] || die "signing up the bench user answered $status"
SESSION_COOKIE=$(awk '$6 == "keel_session" { print $6 "=" $7 }' "$JAR")
[[ -n "$SESSION_COOKIE" ]] || die "no session cookie after signup"
# As a B2B user: a member of 3 teams, working in one of 50 members (the 49 others written
# straight into the database: their signups are not what is measured).
bench_sql "WITH t AS (INSERT INTO teams (name) SELECT 'Bench team ' || n FROM generate_series(1, 2) AS n RETURNING id)
           INSERT INTO memberships (team_id, user_id, role)
           SELECT t.id, u.id, 'member' FROM t, users u WHERE u.email = '$BENCH_EMAIL'" >/dev/null
bench_sql "WITH u AS (INSERT INTO users (email, password_hash)
                      SELECT 'member' || n || '@example.com', 'not a hash' FROM generate_series(1, 49) AS n RETURNING id)
           INSERT INTO memberships (team_id, user_id, role)
           SELECT (SELECT team_id FROM sessions LIMIT 1), u.id, 'member' FROM u" >/dev/null
for path in /dashboard /team; do
    status=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code}' -H "Cookie: $SESSION_COOKIE" "$KEEL_URL$path")
    [[ "$status" == 200 ]] || die "$path with the session answered $status"
done
members=$(curl -fsS --max-time 5 -H "Cookie: $SESSION_COOKIE" "$KEEL_URL/team" | grep -c 'class="member-row"')
[[ "$members" == 50 ]] || die "/team lists $members members, not 50"
run_wrk dashboard "$KEEL_URL/dashboard" "$KEEL_PID" -H "Cookie: $SESSION_COOKIE"
run_wrk team "$KEEL_URL/team" "$KEEL_PID" -H "Cookie: $SESSION_COOKIE"

# ------------------------------------------------------------ PgBouncer ---

# /dashboard again, from a second keel (`serve --no-worker`) whose pool goes through PgBouncer
# in transaction mode, migrations and LISTEN over DATABASE_DIRECT_URL: same database, same
# session, same run. PgBouncer pools as many server connections as keel's pool holds (10).
PGB_BIN=""
for candidate in /usr/local/bin/pgbouncer /usr/sbin/pgbouncer; do
    minor=$("$candidate" --version 2>/dev/null | sed -n 's/^PgBouncer 1\.\([0-9]*\)\..*/\1/p')
    if [[ -n "$minor" ]] && ((minor >= 21)); then PGB_BIN=$candidate; break; fi
done
[[ -n "$PGB_BIN" ]] || die "PgBouncer 1.21 or later is required: bash scripts/install-pgbouncer.sh"
read -r PG_HOST PG_PORT PG_USER PG_PASSWORD < <(python3 -c '
import sys, urllib.parse
url = urllib.parse.urlsplit(sys.argv[1])
print(url.hostname or "127.0.0.1", url.port or 5432, url.username or "postgres", url.password or "")' "$DB_SERVER")
PGB_PORT=$(free_port)
chmod 755 "$WORK"
cat >"$WORK/pgbouncer.ini" <<INI
[databases]
* = host=$PG_HOST port=$PG_PORT user=$PG_USER${PG_PASSWORD:+ password=$PG_PASSWORD}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = trust
auth_file = $WORK/pgbouncer-users.txt
pool_mode = transaction
max_prepared_statements = 100
default_pool_size = 10
ignore_startup_parameters = extra_float_digits
INI
printf '"%s" ""\n' "$PG_USER" >"$WORK/pgbouncer-users.txt"
chmod 644 "$WORK/pgbouncer.ini" "$WORK/pgbouncer-users.txt"
log "$("$PGB_BIN" --version | head -n 1) on 127.0.0.1:$PGB_PORT, transaction mode"
if ((EUID == 0)); then
    # PgBouncer refuses to run as root.
    setpriv --reuid=postgres --regid=postgres --init-groups "$PGB_BIN" "$WORK/pgbouncer.ini" 2>"$WORK/pgbouncer.log" &
else
    "$PGB_BIN" "$WORK/pgbouncer.ini" 2>"$WORK/pgbouncer.log" &
fi
PGB_PID=$!
KEEL2_PORT=$(free_port)
start_us=${EPOCHREALTIME/[.,]/}
env -u RUST_LOG "${KEEL_ENV[@]}" \
    BIND_ADDR="127.0.0.1:$KEEL2_PORT" \
    DATABASE_URL="postgres://$PG_USER@127.0.0.1:$PGB_PORT/$BENCH_DB?sslmode=disable" \
    DATABASE_DIRECT_URL="$DB_SERVER/$BENCH_DB?sslmode=disable" \
    "$KEEL" serve --no-worker >>"$WORK/keel-pgbouncer.log" 2>&1 &
KEEL2_PID=$!
wait_ready "keel through PgBouncer" "$KEEL2_PID" "$KEEL2_PORT" /health "$WORK/keel-pgbouncer.log" "$start_us"
run_wrk dashboard_pgbouncer "http://127.0.0.1:$KEEL2_PORT/dashboard" "$KEEL2_PID" -H "Cookie: $SESSION_COOKIE"
stop_server "$KEEL2_PID"
stop_server "$PGB_PID"

# Logins: a wrk script posting the login form (right password: each one hashes and starts a
# session). The CSRF token is bound to the browser cookie fetched here. Each attempt is
# counted against its account before the hash (the per-account backoff locks an account
# after 5 attempts in flight or failed), so the logins rotate over 16 accounts: at most a few
# in flight per account, as with real users.
LOGIN_ACCOUNTS=16
for n in $(seq 0 $((LOGIN_ACCOUNTS - 1))); do
    rm -f "$JAR"
    token=$(form_token /signup)
    status=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' -b "$JAR" -c "$JAR" \
        --data-urlencode "email=login$n@example.com" --data-urlencode "password=$BENCH_PASSWORD" \
        --data-urlencode "csrf_token=$token" "$KEEL_URL/signup")
    [[ "$status" == 303 ]] || die "signing up login$n@example.com answered $status"
done
rm -f "$JAR"
token=$(form_token /login)
CSRF_COOKIE=$(awk '$6 == "keel_csrf" { print $6 "=" $7 }' "$JAR")
[[ -n "$token" && -n "$CSRF_COOKIE" ]] || die "no csrf token or cookie on /login"
cat >"$WORK/login.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Cookie"] = "$CSRF_COOKIE"
local threads_seen = 0
function setup(thread)
    thread:set("id", threads_seen)
    threads_seen = threads_seen + 1
end
local sent = 0
function request()
    sent = sent + 1
    local account = (id * 8 + sent) % $LOGIN_ACCOUNTS
    return wrk.format(nil, nil, nil,
        "email=login" .. account .. "%40example.com&password=bench+password+123&csrf_token=$token")
end
LUA
# A few connections: a login waits for a hashing thread, so 64 would only measure the queue.
CONNECTIONS=8 run_wrk login "$KEEL_URL/login" "$KEEL_PID" -s "$WORK/login.lua"
LOGIN_STATUS=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' -H "Cookie: $CSRF_COOKIE" \
    -H 'Content-Type: application/x-www-form-urlencoded' \
    --data "email=login0%40example.com&password=bench+password+123&csrf_token=$token" "$KEEL_URL/login")
[[ "$LOGIN_STATUS" == 303 ]] || die "the bench login answers $LOGIN_STATUS, not 303"

# /health while logins flood the server from a second wrk: hashing must not starve it.
log "login flood in the background, /health measured meanwhile"
wrk -t1 -c32 -d"$((WARMUP + DURATION + 2))s" -s "$WORK/login.lua" "$KEEL_URL/login" >"$WORK/wrk-flood.txt" &
FLOOD_PID=$!
run_wrk health_flood "$KEEL_URL/health" "$KEEL_PID"
wait "$FLOOD_PID" || true
FLOOD_RPS=$(awk '$1 == "Requests/sec:" { printf "%.0f", $2 }' "$WORK/wrk-flood.txt")

# ------------------------------------------------------------- webhooks ---

# Distinct signed events (customer.subscription.updated, ~3 KB, each of its own
# subscription), through verify + durable insert + enqueue, processed by keel's own worker
# meanwhile. Each wrk invocation (warm-up, measured) takes the next STRIDE events of the file
# (a cursor file read in wrk's setup), so no event is sent twice; the measured invocation's
# events are ids STRIDE…2·STRIDE-1. The bench team owns the events' customer, so processing
# does the real work (find the team, guarded upsert).
STRIDE=$((8000 * (WARMUP + DURATION)))
log "generating $((2 * STRIDE)) signed webhook events"
python3 "$REPO_ROOT/bench/webhook_events.py" generate "$WEBHOOK_SECRET" "$((2 * STRIDE))" "$WORK"
echo 0 >"$WORK/webhook-cursor"
bench_sql "UPDATE teams SET stripe_customer_id = 'cus_SaaSTest00001A'
           WHERE id = (SELECT m.team_id FROM memberships m JOIN users u ON u.id = m.user_id
                       WHERE u.email = '$BENCH_EMAIL' AND m.role = 'owner')" >/dev/null
cat >"$WORK/webhook.lua" <<LUA
local cursor_file, events_file, template_file = "$WORK/webhook-cursor", "$WORK/events.txt", "$WORK/template.json"
-- setup runs in wrk's main Lua state; id, base and threads become globals of each thread's.
local stride, threads_seen, first = $STRIDE, 0, 0
function setup(thread)
    if threads_seen == 0 then
        local f = io.open(cursor_file); first = tonumber(f:read("*l")); f:close()
        f = io.open(cursor_file, "w"); f:write(tostring(first + stride)); f:close()
    end
    thread:set("id", threads_seen); thread:set("base", first); thread:set("threads", $THREADS)
    threads_seen = threads_seen + 1
end
local events, sent, template = {}, 0, nil
function init(args)
    local f = io.open(template_file); template = f:read("*a"); f:close()
    local n = 0
    for line in io.lines(events_file) do
        if n >= base and n < base + stride and (n - base) % threads == id then
            events[#events + 1] = line
        end
        n = n + 1
    end
end
function request()
    sent = sent + 1
    local evt, sub, t, sig = events[(sent - 1) % #events + 1]:match("(%S+) (%S+) (%S+) (%S+)")
    local body = template:gsub("@@EVT@@", evt):gsub("@@SUB@@", sub)
    return wrk.format("POST", "/webhooks/stripe",
        { ["Content-Type"] = "application/json", ["Stripe-Signature"] = "t=" .. t .. ",v1=" .. sig }, body)
end
LUA
run_wrk webhook "$KEEL_URL/webhooks/stripe" "$KEEL_PID" -s "$WORK/webhook.lua"
MEASURED_FROM=$(printf 'evt_benchw%08d' "$STRIDE")
WEBHOOK_STORED=$(bench_sql "SELECT count(*) FROM stripe_events WHERE id LIKE 'evt_benchw%' AND id >= '$MEASURED_FROM'")
WEBHOOK_EPS=$(calc '%.0f' "$WEBHOOK_STORED / $DURATION")
log "webhooks: $WEBHOOK_STORED distinct events stored in ${DURATION}s; waiting for processing"
drain_start_us=${EPOCHREALTIME/[.,]/}
for _ in $(seq 1200); do
    waiting=$(bench_sql "SELECT count(*) FROM stripe_events WHERE processed_at IS NULL")
    ((waiting == 0)) && break
    nap 0.25
done
((waiting == 0)) || die "$waiting webhook events still unprocessed after 300 s"
WEBHOOK_DRAIN_S=$(calc '%.1f' "(${EPOCHREALTIME/[.,]/} - $drain_start_us) / 1000000")
PROCESSED_EPS=$(bench_sql "SELECT round(count(*) / extract(epoch FROM max(processed_at) - min(received_at)))
                           FROM stripe_events WHERE id LIKE 'evt_benchw%'")
# latency_ms PATTERN PERCENTILE: ingest (stored) to processed, over the events whose ids match.
latency_ms() {
    bench_sql "SELECT round((percentile_cont($2) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - received_at)) * 1000)::numeric, 1)
               FROM stripe_events WHERE id LIKE '$1'"
}
FLOOD_P50_MS=$(latency_ms 'evt_benchw%' 0.5)
FLOOD_P99_MS=$(latency_ms 'evt_benchw%' 0.99)
STEADY_RATE=50
STEADY_COUNT=$((STEADY_RATE * DURATION))
log "webhooks: $STEADY_COUNT more at $STEADY_RATE/s for ingest-to-processed latency"
python3 "$REPO_ROOT/bench/webhook_events.py" steady "$KEEL_URL/webhooks/stripe" "$WEBHOOK_SECRET" "$STEADY_COUNT" "$STEADY_RATE"
for _ in $(seq 240); do
    waiting=$(bench_sql "SELECT count(*) FROM stripe_events WHERE processed_at IS NULL")
    ((waiting == 0)) && break
    nap 0.25
done
((waiting == 0)) || die "$waiting steady webhook events still unprocessed after 60 s"
STEADY_P50_MS=$(latency_ms 'evt_benchs%' 0.5)
STEADY_P99_MS=$(latency_ms 'evt_benchs%' 0.99)

KEEL_PEAK_MIB=$(proc_mib "$KEEL_PID" VmHWM)
BARE_PEAK_MIB=$(proc_mib "$BARE_PID" VmHWM)

# ---------------------------------------------------------------- summary ---

BASELINE=$(calc '%.0f' "(${RPS[bare1]} + ${RPS[bare2]}) / 2")
((BASELINE > 0)) || die "bare baseline measured 0 req/s"
BARE_SPREAD=$(calc '%.1f' "(${RPS[bare1]} - ${RPS[bare2]}) * 100 / $BASELINE")
ratio() { calc '%.2f' "${RPS[$1]} / $BASELINE"; }
CPU_BASELINE=$(calc '%.2f' "(${CPU_US[bare1]} + ${CPU_US[bare2]}) / 2")
# Bare CPU per request over this target's: 1.00 means no overhead at all.
cpu_ratio() { calc '%.2f' "$CPU_BASELINE / ${CPU_US[$1]}"; }
# row KEY SERVER PATH [NOTE]: one markdown table row for a wrk run.
row() {
    printf "| %s \`%s\`%s | %s | %s | %s | %s | %s |\n" \
        "$2" "$3" "${4:+ $4}" "${RPS[$1]}" "${P99_MS[$1]}" "$(ratio "$1")" "${CPU_US[$1]}" "$(cpu_ratio "$1")"
}

FAILED_RUNS="none"
for key in bare1 root health live bare2 dashboard team dashboard_pgbouncer login health_flood webhook; do
    if ((NON2XX[$key] + SOCKET_ERRORS[$key] > 0)); then
        [[ "$FAILED_RUNS" == none ]] && FAILED_RUNS="WARNING:"
        FAILED_RUNS+=" $key (${NON2XX[$key]} non-2xx/3xx, ${SOCKET_ERRORS[$key]} socket errors)"
    fi
done

commit=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo uncommitted)
if [[ "$commit" != uncommitted && -n "$(git -C "$REPO_ROOT" status --porcelain 2>/dev/null)" ]]; then
    commit="$commit (dirty tree)"
fi

mkdir -p "$RESULTS_DIR"
REPORT="$RESULTS_DIR/$STAMP.md"
{
    echo "# keel bench $STAMP"
    echo
    echo "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency, after a ${WARMUP}s discarded warm-up each."
    echo
    echo "| target | req/s | p99 ms | ratio vs bare | server CPU µs/req | CPU ratio (bare ÷ target) |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    row bare1 bare_hello / '(run 1)'
    row root keel /
    row health keel /health
    row live keel /health/live
    row bare2 bare_hello / '(run 2)'
    row dashboard keel /dashboard '(signed in, a member of 3 teams)'
    row team keel /team '(the owner of 50 members: 50 rows of forms)'
    row dashboard_pgbouncer keel /dashboard "(the same, through PgBouncer in transaction mode: $(calc '%.2f' "${RPS[dashboard_pgbouncer]} / ${RPS[dashboard]}")× direct)"
    row login keel 'POST /login' '(argon2id m=19 MiB t=2 p=1)'
    row health_flood keel /health "(while logins flood: ${FLOOD_RPS} logins/s)"
    row webhook keel 'POST /webhooks/stripe' "(distinct signed events: ${WEBHOOK_EPS} stored/s)"
    printf '| baseline (mean of bare runs, spread %s%%) | %s | | 1.00 | %s | 1.00 |\n' "$BARE_SPREAD" "$BASELINE" "$CPU_BASELINE"
    echo
    echo "- start to ready: ${KEEL_READY_MS} ms (spawn → first 200 from /health/live, database and migrations already in place, as on a restart; bare_hello: ${BARE_READY_MS} ms)"
    echo "- first start: ${KEEL_FIRST_READY_MS} ms (creates the database and applies every migration)"
    echo "- idle RSS: ${KEEL_IDLE_MIB} MiB (1 s after ready)"
    echo "- peak RSS: ${KEEL_PEAK_MIB} MiB (after all load runs; bare_hello: ${BARE_PEAK_MIB} MiB)"
    echo "- webhook ingest: ${WEBHOOK_STORED} distinct events stored in ${DURATION} s = **${WEBHOOK_EPS} events/s** (verify + insert + enqueue, one commit each); processed by keel's worker at ${PROCESSED_EPS} events/s (all processed ${WEBHOOK_DRAIN_S} s after the flood ended)"
    echo "- ingest to processed: p50 ${STEADY_P50_MS} ms, p99 ${STEADY_P99_MS} ms at a steady ${STEADY_RATE} events/s; during the flood (queueing behind it) p50 ${FLOOD_P50_MS} ms, p99 ${FLOOD_P99_MS} ms"
    echo "- failed requests: $FAILED_RUNS"
    echo "- machine: $(nproc) cores, Linux $(uname -r)"
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "- git commit: $commit"
    echo "- command: \`$COMMAND\`"
    echo
    echo "## Targets"
    echo
    echo "| target | measured | result |"
    echo "| --- | ---: | --- |"
    echo "| keel \`/\` ≥ 0.8× bare (req/s) | $(ratio root)× | $(pass_fail "$(ratio root) >= 0.8" root) |"
    echo "| keel \`/\` ≥ 0.8× bare (CPU per request) | $(cpu_ratio root)× | $(pass_fail "$(cpu_ratio root) >= 0.8" root) |"
    echo "| keel \`/health\` p99 < 5 ms | ${P99_MS[health]} ms | $(pass_fail "${P99_MS[health]} < 5" health) |"
    echo "| keel \`/dashboard\` (signed in) ≥ 10k req/s | ${RPS[dashboard]} | $(pass_fail "${RPS[dashboard]} >= 10000" dashboard) |"
    echo "| keel \`/health\` p99 < 10 ms during a login flood | ${P99_MS[health_flood]} ms | $(pass_fail "${P99_MS[health_flood]} < 10" health_flood) |"
    echo "| webhook ingest ≥ 3,000 distinct events/s | ${WEBHOOK_EPS} | $(pass_fail "$WEBHOOK_EPS >= 3000" webhook) |"
    echo "| idle RSS ≤ 15 MiB | ${KEEL_IDLE_MIB} MiB | $(pass_fail "$KEEL_IDLE_MIB <= 15") |"
    echo "| start to ready ≤ 100 ms | ${KEEL_READY_MS} ms | $(pass_fail "$KEEL_READY_MS <= 100") |"
} >"$REPORT"

echo
cat "$REPORT"
echo
[[ "$FAILED_RUNS" == none ]] || printf '%s\n' "$FAILED_RUNS" >&2
log "written to ${REPORT#"$REPO_ROOT"/}"
