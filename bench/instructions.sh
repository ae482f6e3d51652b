#!/usr/bin/env bash
# User-space instructions per request of keel binaries, counted by callgrind.
#
# On a shared 2-core VM a wall-clock A/B cannot see a microsecond; an instruction count can.
# For each binary: `keel serve` under `valgrind --tool=callgrind --instr-atstart=no`, a 2 s
# warm-up with wrk, instrumentation switched on, BENCH_DURATION seconds of `wrk -t1 -c4` on
# BENCH_PATH, instrumentation off, and the program total divided by the requests served.
# The kernel's work (TCP) is not counted; background threads' work is counted per second,
# so two runs of one binary differ by a few hundred to a few thousand instructions.
#
# Usage: bash bench/instructions.sh BINARY [BINARY...]
#   Build an unstripped binary to read the profile by function, e.g.
#   CARGO_TARGET_DIR=$HOME/.cache/keel-target-prof CARGO_PROFILE_RELEASE_STRIP=false \
#     CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release --locked --bin keel
#   then `callgrind_annotate --inclusive=yes <the .out file printed>`.
# Knobs: BENCH_PATH (default /), BENCH_DURATION (default 10), RUST_LOG (default unset: the
# production `info` filter), BENCH_DATABASE_SERVER, BENCH_REDIS_URL (as bench/run.sh).
# A binary named bare_hello (examples/bare_hello.rs) serves the bytes keel's `/` returned in
# this run: list it after a keel binary.

set -euo pipefail

(($# > 0)) || { sed -n '2,18p' "$0" >&2; exit 2; }
for tool in valgrind callgrind_control callgrind_annotate wrk curl psql; do
    command -v "$tool" >/dev/null || { echo "bench/instructions.sh needs $tool" >&2; exit 2; }
done

REQUEST_PATH="${BENCH_PATH:-/}"
DURATION="${BENCH_DURATION:-10}"
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_DURATION must be whole seconds" >&2; exit 2; }
DB="keel_instructions_$$"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/keel-instructions.XXXXXX")
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

measure() {
    local binary=$1 port label out
    port=$(free_port)
    label="$(basename "$binary")-$(date -u +%H%M%S)"
    out="$WORK/$label.callgrind"
    local command=("$binary" serve)
    if [[ "$(basename "$binary")" == bare_hello ]]; then
        [[ -s "$WORK/body.html" ]] || { echo "list a keel binary before bare_hello" >&2; exit 2; }
        command=("$binary" "127.0.0.1:$port" "$WORK/body.html")
    fi
    start_server "$port" "$WORK/$label.log" \
        valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" "${command[@]}"
    wait_answering "$port" 60
    [[ -s "$WORK/body.html" ]] || curl -fs "http://127.0.0.1:$port/" -o "$WORK/body.html"
    wrk -t1 -c4 -d2s "http://127.0.0.1:$port$REQUEST_PATH" >/dev/null
    callgrind_control -i on "$SERVER_PID" >/dev/null 2>&1
    wrk -t1 -c4 -d"${DURATION}s" "http://127.0.0.1:$port$REQUEST_PATH" >"$WORK/$label.wrk"
    callgrind_control -i off "$SERVER_PID" >/dev/null 2>&1
    callgrind_control -d "$SERVER_PID" >/dev/null 2>&1
    stop_server
    local requests total
    requests=$(awk '/requests in/ {print $1}' "$WORK/$label.wrk")
    total=$(callgrind_annotate "$out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ && !seen {gsub(",", "", $1); print $1; seen = 1}')
    printf '| %s | %s | %s | %s | %s |\n' "$binary" "$REQUEST_PATH" "$requests" \
        "$((total / requests))" "$out.1"
}

echo "RUST_LOG=${RUST_LOG:-(unset)}, $DURATION s of wrk -t1 -c4 per binary"
echo
echo "| binary | path | requests | instructions per request | profile |"
echo "| --- | --- | ---: | ---: | --- |"
for binary in "$@"; do
    measure "$binary"
done
