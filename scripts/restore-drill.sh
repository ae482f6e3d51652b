#!/usr/bin/env bash
# Restore drill: proves the newest backup restores. Restores the newest keel-*.dump in
# ${BACKUP_DIR:-./backups} into a fresh scratch database (unique name, on the server of
# ${DRILL_DATABASE_SERVER:-postgres://postgres@127.0.0.1:5432}, dropped at the end whatever
# happens), then checks it:
#   - the latest migration applied in `_sqlx_migrations` is the highest migrations/*.sql
#     version of this checkout (${MIGRATIONS_DIR:-<this checkout>/migrations});
#   - every key table exists;
#   - row counts of users, teams, subscriptions, stripe_events, jobs, emails;
#   - with `--expect-from URL` (the live database), each of those counts is at most the live
#     one (the live database may have grown since the dump, not shrunk).
# The last line is RESTORE_OK on success; otherwise `error: …` on stderr and exit 1.
#
#   scripts/restore-drill.sh [--expect-from "$DATABASE_URL"]
#
# pg_restore must be of the major version of the pg_dump that wrote the dump, or newer (in
# production: run it in the `backup` container, RUNBOOK.md "Backups and restore").
# URLs are never printed; their passwords reach libpq through PGPASSWORD, not the command line.
set -euo pipefail

log() { printf '%s\n' "$*"; }
die() { printf 'error: restore drill: %s\n' "$*" >&2; exit 1; }
usage() { die "usage: $0 [--expect-from URL]"; }

started=$SECONDS
here="$(cd "$(dirname "$0")" && pwd)"
dir="${BACKUP_DIR:-./backups}"
server="${DRILL_DATABASE_SERVER:-postgres://postgres@127.0.0.1:5432}"
migrations="${MIGRATIONS_DIR:-$here/../migrations}"
expect_from=""
while [ $# -gt 0 ]; do
  case $1 in
    --expect-from)
      if [ $# -lt 2 ] || [ -z "$2" ]; then usage; fi
      expect_from=$2
      shift 2
      ;;
    --expect-from=*)
      expect_from=${1#*=}
      [ -n "$expect_from" ] || usage
      shift
      ;;
    *) usage ;;
  esac
done

key_tables="users teams memberships sessions auth_tokens jobs job_schedules emails stripe_events subscriptions _sqlx_migrations"
counted_tables="users teams subscriptions stripe_events jobs emails"

for tool in psql pg_restore; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done

# split_url URL: sets `bare` (URL without its password) and `password` (percent-decoded; the
# inherited PGPASSWORD when the URL has none).
split_url() {
  bare=$1
  password=${PGPASSWORD:-}
  if [[ $1 =~ ^(postgres(ql)?://)([^:@/]*):([^@/]*)@(.*)$ ]]; then
    local pw=${BASH_REMATCH[4]}
    pw=${pw//\\/\\\\}
    password=$(printf '%b' "${pw//%/\\x}")
    bare="${BASH_REMATCH[1]}${BASH_REMATCH[3]}@${BASH_REMATCH[5]}"
  fi
}
secrets=()
redact() {
  local line=$1 s
  for s in "${secrets[@]+"${secrets[@]}"}"; do
    if [ -n "$s" ]; then line=${line//"$s"/***}; fi
  done
  printf '%s' "$line"
}
first_error() {
  local line
  line=$(grep -m 1 -iE 'error|fatal|failed' "$1" || tail -n 1 "$1" || true)
  redact "${line:-no message}"
}

# The scratch database's server: its URL without a database, query string kept.
split_url "$server"
server_bare=$bare
server_password=$password
secrets+=("$server_password")
server_base=${server_bare%%\?*}
server_query=${server_bare#"$server_base"}
server_base=${server_base%/}
[[ $server_base =~ ^postgres(ql)?://[^/]+$ ]] ||
  die "DRILL_DATABASE_SERVER must be postgres://user@host:port (no database name)"
scratch="keel_drill_$(date -u +%Y%m%d%H%M%S)_$$"
admin_url="$server_base/postgres$server_query"
scratch_url="$server_base/$scratch$server_query"

work=$(mktemp -d)
errors="$work/stderr"
created=false
cleanup() {
  if [ "$created" = true ]; then
    PGPASSWORD=$server_password psql -X -q -w -d "$admin_url" \
      -c "DROP DATABASE IF EXISTS \"$scratch\" WITH (FORCE)" >/dev/null 2>&1 ||
      printf 'warning: could not drop the scratch database %s: drop it by hand\n' "$scratch" >&2
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# sql URL_KIND QUERY: one query, unaligned tuples; URL_KIND is scratch, admin or live.
sql() {
  local url pw
  case $1 in
    scratch) url=$scratch_url pw=$server_password ;;
    admin) url=$admin_url pw=$server_password ;;
    live) url=$live_url pw=$live_password ;;
  esac
  PGPASSWORD=$pw psql -X -q -w -At -v ON_ERROR_STOP=1 -d "$url" -c "$2" 2>"$errors"
}

# ---- the newest dump -------------------------------------------------------------------------
[ -d "$dir" ] || die "BACKUP_DIR $dir does not exist"
dump=$(find "$dir" -maxdepth 1 -type f -name 'keel-*.dump' -printf '%f\n' | sort | tail -n 1)
[ -n "$dump" ] || die "no keel-*.dump in $dir"
dump="$dir/$dump"
log "dump: $dump ($(du -h "$dump" | cut -f1), $(date -u -r "$dump" +%Y-%m-%dT%H:%M:%SZ))"

checkout_version=$(find "$migrations" -maxdepth 1 -type f -name '[0-9]*_*.sql' -printf '%f\n' 2>/dev/null |
  sed 's/_.*//' | sort -n | tail -n 1)
[ -n "$checkout_version" ] || die "no migrations/*.sql in $migrations"

# ---- restore into a scratch database ---------------------------------------------------------
sql admin "CREATE DATABASE \"$scratch\"" >/dev/null ||
  die "cannot create the scratch database $scratch: $(first_error "$errors")"
created=true
log "scratch database: $scratch"
restore_started=$SECONDS
if ! PGPASSWORD=$server_password pg_restore --no-owner --no-acl --exit-on-error -w \
  --dbname="$scratch_url" "$dump" 2>"$errors"; then
  die "pg_restore of $dump failed: $(first_error "$errors")"
fi
log "restored in $((SECONDS - restore_started)) s"

# ---- checks ----------------------------------------------------------------------------------
missing=""
for table in $key_tables; do
  exists=$(sql scratch "SELECT to_regclass('public.$table') IS NOT NULL") ||
    die "querying the restored database failed: $(first_error "$errors")"
  [ "$exists" = t ] || missing="$missing $table"
done
[ -z "$missing" ] || die "tables missing from the restored database:$missing"
log "tables: all $(wc -w <<<"$key_tables") key tables present"

dump_version=$(sql scratch "SELECT coalesce(max(version), 0) FROM _sqlx_migrations WHERE success") ||
  die "reading _sqlx_migrations failed: $(first_error "$errors")"
log "migrations: latest applied in the dump $dump_version, latest in this checkout $checkout_version"
[ "$dump_version" = "$checkout_version" ] ||
  die "the dump's latest migration is $dump_version, this checkout's is $checkout_version"

declare -A restored
for table in $counted_tables; do
  restored[$table]=$(sql scratch "SELECT count(*) FROM $table") ||
    die "counting $table failed: $(first_error "$errors")"
  log "rows $table ${restored[$table]}"
done

if [ -n "$expect_from" ]; then
  split_url "$expect_from"
  live_url=$bare
  live_password=$password
  secrets+=("$live_password")
  shrunk=""
  for table in $counted_tables; do
    live=$(sql live "SELECT count(*) FROM $table") ||
      die "counting $table in the live database failed: $(first_error "$errors")"
    log "live $table ${live} (backup ${restored[$table]})"
    [ "$live" -ge "${restored[$table]}" ] || shrunk="$shrunk $table (backup ${restored[$table]}, live $live)"
  done
  [ -z "$shrunk" ] || die "the live database has fewer rows than the backup:$shrunk"
fi

log "drill took $((SECONDS - started)) s"
log RESTORE_OK
