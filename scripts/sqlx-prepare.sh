#!/usr/bin/env bash
# Regenerates .sqlx/, the query metadata that lets `sqlx::query!` compile without a database
# (SQLX_OFFLINE=true in CI and Docker). Run after adding or changing a query or a migration,
# and commit the result. Needs the local PostgreSQL (KEEL_TEST_DATABASE_URL, as the tests).
#
# It applies the migrations to a scratch database, then rebuilds the crate with DATABASE_URL
# set and SQLX_OFFLINE_DIR pointing at .sqlx/: the query macros check every query against the
# database and write what they learned there.
set -euo pipefail
cd "$(dirname "$0")/.."

server="${KEEL_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432}"
database="keel_sqlx_prepare"
export DATABASE_URL="$server/$database"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keel-target}"

psql "$server/postgres" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)"
psql "$server/postgres" -qc "CREATE DATABASE $database"
trap 'psql "$server/postgres" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)"' EXIT
for migration in migrations/*.sql; do
    psql "$DATABASE_URL" -q -v ON_ERROR_STOP=1 -f "$migration"
done

rm -rf .sqlx && mkdir .sqlx
# Touch the sources so every query macro runs again.
find src tests -name '*.rs' -exec touch {} +
SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$PWD/.sqlx" cargo check --all-targets --quiet
echo "wrote $(find .sqlx -name 'query-*.json' | wc -l) queries to .sqlx/"
