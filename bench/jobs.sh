#!/usr/bin/env bash
# Job queue benchmark: jobs/s through the queue (enqueue + run of a no-op job) and the latency
# from commit to the start of a job (p50/p99), and how fast a backlog drains against one a
# tenth its size, against the local PostgreSQL, in a fresh database that is dropped
# afterwards. See examples/jobs_bench.rs for what is measured.
#
# Usage: bash bench/jobs.sh [--jobs N] [--samples N] [--backlog N]
set -euo pipefail
cd "$(dirname "$0")/.."

server="${BENCH_DATABASE_SERVER:-postgres://postgres@127.0.0.1:5432}"
database="keel_bench_jobs_$$"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keel-target}"
export SQLX_OFFLINE=true

cargo build --release --quiet --example jobs_bench
psql "$server/postgres" -qc "CREATE DATABASE $database"
trap 'psql "$server/postgres" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)"' EXIT

echo "# keel job queue bench $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
# The loopback database without TLS: see bench/run.sh.
"$CARGO_TARGET_DIR/release/examples/jobs_bench" "$server/$database?sslmode=disable" "$@"
