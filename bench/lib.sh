# shellcheck shell=bash
# What bench/ab.sh and bench/instructions.sh share: sourced, not run.
#
# Sets DB_SERVER and REDIS_URL (BENCH_DATABASE_SERVER, BENCH_REDIS_URL, as bench/run.sh) and
# SERVER_PID; the caller sets DB (its database's name) before starting a server. On exit the
# server is stopped and the database dropped.

DB_SERVER="${BENCH_DATABASE_SERVER:-postgres://postgres@127.0.0.1:5432}"
DB_SERVER="${DB_SERVER%/}"
REDIS_URL="${BENCH_REDIS_URL:-redis://127.0.0.1:6379}"
SECRET_KEY="$(head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \n')"
SERVER_PID=""

stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}

cleanup() {
    stop_server
    psql -q "$DB_SERVER/postgres" -c "drop database if exists $DB" >/dev/null 2>&1 || true
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_server PORT LOG COMMAND...: COMMAND in the background with keel's bench settings
# (development, the access log on as JSON, the rate limit raised out of the way but running).
start_server() {
    local port=$1 log=$2
    shift 2
    env APP_ENV=development \
        BIND_ADDR="127.0.0.1:$port" \
        DATABASE_URL="$DB_SERVER/$DB?sslmode=disable" \
        REDIS_URL="$REDIS_URL" \
        SECRET_KEY="$SECRET_KEY" \
        RATE_LIMIT_PER_SECOND=1000000 \
        RATE_LIMIT_BURST=1000000 \
        LOG_FORMAT=json \
        "$@" >"$log" 2>&1 &
    SERVER_PID=$!
}

# wait_answering PORT SECONDS: until GET /health/live (keel) or / (bare_hello) answers.
wait_answering() {
    local port=$1 deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)); do
        if curl -fs "http://127.0.0.1:$port/health/live" >/dev/null 2>&1 \
            || curl -fs "http://127.0.0.1:$port/" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.05
    done
    echo "nothing answered on port $port within $2 s" >&2
    exit 1
}
