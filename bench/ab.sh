#!/usr/bin/env bash
# Two (or more) keel binaries, alternately, under the same wrk load: req/s and server CPU
# time per request, BENCH_ROUNDS rounds. Alternating spreads this VM's drift over all of
# them; compare within a round.
#
# Usage: bash bench/ab.sh BINARY BINARY [BINARY...]
#   e.g. an old commit built into another target dir against the current build.
# Knobs: BENCH_PATH (default /), BENCH_DURATION (default 5), BENCH_ROUNDS (default 3),
# RUST_LOG (default unset: the production `info` filter), BENCH_DATABASE_SERVER,
# BENCH_REDIS_URL (as bench/run.sh).

set -euo pipefail

(($# >= 2)) || { sed -n '2,10p' "$0" >&2; exit 2; }
for tool in wrk curl psql python3; do
    command -v "$tool" >/dev/null || { echo "bench/ab.sh needs $tool" >&2; exit 2; }
done

REQUEST_PATH="${BENCH_PATH:-/}"
DURATION="${BENCH_DURATION:-5}"
ROUNDS="${BENCH_ROUNDS:-3}"
[[ "$DURATION" =~ ^[1-9][0-9]*$ && "$ROUNDS" =~ ^[1-9][0-9]*$ ]] \
    || { echo "BENCH_DURATION and BENCH_ROUNDS must be whole numbers" >&2; exit 2; }
DB="keel_ab_$$"
TICKS=$(getconf CLK_TCK)
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat; the
# command name in field 2 has no spaces here).
cpu_ticks() {
    awk '{print $14 + $15}' "/proc/$1/stat"
}

measure() {
    local binary=$1 port
    port=$(free_port)
    start_server "$port" /dev/null "$binary" serve
    wait_answering "$port" 15
    wrk -t2 -c64 -d2s "http://127.0.0.1:$port$REQUEST_PATH" >/dev/null
    local before after output
    before=$(cpu_ticks "$SERVER_PID")
    output=$(wrk -t2 -c64 -d"${DURATION}s" "http://127.0.0.1:$port$REQUEST_PATH")
    after=$(cpu_ticks "$SERVER_PID")
    stop_server
    local requests rate
    requests=$(awk '/requests in/ {print $1}' <<<"$output")
    rate=$(awk '/Requests\/sec/ {print $2}' <<<"$output")
    printf '| %s | %s | %s | %.0f | %s |\n' "$round" "$binary" "$REQUEST_PATH" "$rate" \
        "$(python3 -c "print(round(($after - $before) / $TICKS * 1e6 / $requests, 2))")"
}

echo "RUST_LOG=${RUST_LOG:-(unset)}, wrk -t2 -c64 -d${DURATION}s, $ROUNDS rounds"
echo
echo "| round | binary | path | req/s | server CPU µs/req |"
echo "| ---: | --- | --- | ---: | ---: |"
for round in $(seq 1 "$ROUNDS"); do
    for binary in "$@"; do
        measure "$binary"
    done
done
