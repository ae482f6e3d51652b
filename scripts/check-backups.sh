#!/usr/bin/env bash
# Proves scripts/backup.sh and scripts/restore-drill.sh against a real PostgreSQL (run by
# .ci/run): a scratch database gets every migrations/*.sql (recorded in a `_sqlx_migrations`
# shaped like sqlx's) and a few rows; then backup, restore drill (RESTORE_OK, the counts),
# retention, the upload hook, and failures that must be clear and must not print a password.
# Prints PASS/FAIL per check; exits 1 if any failed. Needs the PostgreSQL that .ci/run starts
# (KEEL_TEST_DATABASE_URL: a server URL, without a database name).
set -euo pipefail
cd "$(dirname "$0")/.."

db_server="${KEEL_TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432}"
database="keel_backup_check_$$"
db_url="$db_server/$database"
started=$SECONDS

# shellcheck source=scripts/lib/checks.sh
. scripts/lib/checks.sh

for tool in psql pg_dump pg_restore sha384sum; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done

work=$(mktemp -d)
backups="$work/backups"
cleanup() {
  psql -X -q -d "$db_server/postgres" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# ---- a database like production's -------------------------------------------------------------
log "scratch database $database: migrations and a few rows"
psql -X -q -v ON_ERROR_STOP=1 -d "$db_server/postgres" -c "CREATE DATABASE $database" >/dev/null
q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$db_url" "$@"; }
q -c "CREATE TABLE _sqlx_migrations (
        version bigint PRIMARY KEY,
        description text NOT NULL,
        installed_on timestamptz NOT NULL DEFAULT now(),
        success boolean NOT NULL,
        checksum bytea NOT NULL,
        execution_time bigint NOT NULL)"
latest=""
for file in migrations/[0-9]*_*.sql; do
  name=$(basename "$file" .sql)
  version=${name%%_*}
  description=${name#*_}
  checksum=$(sha384sum "$file" | cut -d' ' -f1)
  q -f "$file" >/dev/null
  q -c "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
        VALUES ($version, '${description//_/ }', true, decode('$checksum', 'hex'), 1)"
  latest=$version
done
[ -n "$latest" ] || die "no migrations/*.sql"
q >/dev/null <<'SQL'
INSERT INTO users (id, email, password_hash)
  VALUES ('00000000-0000-0000-0000-000000000001', 'ada@example.com', '$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA');
INSERT INTO teams (id, name, stripe_customer_id)
  VALUES ('00000000-0000-0000-0000-0000000000a1', 'Ada''s team', 'cus_check');
INSERT INTO memberships (team_id, user_id, role)
  VALUES ('00000000-0000-0000-0000-0000000000a1', '00000000-0000-0000-0000-000000000001', 'owner');
INSERT INTO stripe_events (id, type, livemode, created, payload)
  VALUES ('evt_check', 'customer.subscription.created', false, now(), '{"id":"evt_check"}');
INSERT INTO subscriptions (id, team_id, customer_id, status, state_as_of)
  VALUES ('sub_check', '00000000-0000-0000-0000-0000000000a1', 'cus_check', 'active', now());
INSERT INTO jobs (kind, payload, max_attempts) VALUES ('stripe.process_event', '{"id":"evt_check"}', 5);
SQL

# run LOG COMMAND...: COMMAND's stdout and stderr to LOG, its exit status kept.
run() {
  local out=$1
  shift
  local t0=$SECONDS rc=0
  "$@" >"$out" 2>&1 || rc=$?
  printf '      (%s: exit %d, %d s)\n' "${out##*/}" "$rc" "$((SECONDS - t0))"
  return "$rc"
}
dumps() { find "$backups" -maxdepth 1 -name 'keel-*.dump' -printf '%f\n' | sort; }

# ---- backup -------------------------------------------------------------------------------------
log "backup"
backup_ok=true
run "$work/backup1.log" env DATABASE_URL="$db_url" BACKUP_DIR="$backups" bash scripts/backup.sh || backup_ok=false
one_dump() {
  $backup_ok || { cat "$work/backup1.log"; return 1; }
  [ "$(dumps | wc -l)" = 1 ] || { echo "dumps: $(dumps)"; return 1; }
  dumps | grep -qE '^keel-[0-9]{8}T[0-9]{6}Z\.dump$'
}
check "backup.sh exits 0 and writes one keel-YYYYMMDDTHHMMSSZ.dump" one_dump
first=$(dumps | head -n 1)
check "the dump is mode 600" test "$(stat -c %a "$backups/$first" 2>/dev/null)" = 600
check "the dump reads back (pg_restore --list lists users and subscriptions)" \
  bash -c "pg_restore --list '$backups/$first' | grep -q ' TABLE public users ' &&
           pg_restore --list '$backups/$first' | grep -q ' TABLE public subscriptions '"
check "no temporary file left in BACKUP_DIR" test -z "$(find "$backups" -name '.*' -type f)"
check "backup output does not print DATABASE_URL" bash -c "! grep -qF '$db_url' '$work/backup1.log'"

# ---- restore drill ------------------------------------------------------------------------------
log "restore drill"
drill_ok=true
run "$work/drill.log" env BACKUP_DIR="$backups" DRILL_DATABASE_SERVER="$db_server" \
  bash scripts/restore-drill.sh --expect-from "$db_url" || drill_ok=false
sed 's/^/      | /' "$work/drill.log"
check "restore-drill.sh exits 0 with RESTORE_OK as its last line" \
  bash -c "$drill_ok && [ \"\$(tail -n 1 '$work/drill.log')\" = RESTORE_OK ]"
check "the drill compares migration versions ($latest)" \
  grep -qx "migrations: latest applied in the dump $latest, latest in this checkout $latest" "$work/drill.log"
counts_ok() {
  local table want
  for pair in users=1 teams=1 subscriptions=1 stripe_events=1 jobs=1 emails=0; do
    table=${pair%=*} want=${pair#*=}
    grep -qx "rows $table $want" "$work/drill.log" || { echo "no 'rows $table $want' line"; return 1; }
    grep -qx "live $table $want (backup $want)" "$work/drill.log" || { echo "no live $table line"; return 1; }
  done
}
check "the drill reports the expected row counts, backup and live" counts_ok
scratch=$(sed -n 's/^scratch database: //p' "$work/drill.log")
scratch_dropped() {
  [ -n "$scratch" ] || { echo "no scratch database line"; return 1; }
  [ "$(psql -X -At -d "$db_server/postgres" -c "SELECT count(*) FROM pg_database WHERE datname = '$scratch'")" = 0 ]
}
check "the drill's scratch database is dropped afterwards" scratch_dropped

# The drill must fail: a checkout with a newer migration than the dump, a live database
# smaller than the backup, and no dump at all.
mkdir -p "$work/newer-migrations"
cp migrations/*.sql "$work/newer-migrations/"
touch "$work/newer-migrations/99991231000000_not_in_the_dump.sql"
drill_fails() {
  local want=$1 rc=0
  shift
  env BACKUP_DIR="$backups" DRILL_DATABASE_SERVER="$db_server" "$@" >"$work/drill-bad.log" 2>&1 || rc=$?
  if [ "$rc" = 0 ] || grep -q RESTORE_OK "$work/drill-bad.log" || ! grep -q "^error: .*$want" "$work/drill-bad.log"; then
    cat "$work/drill-bad.log"
    return 1
  fi
  grep '^error: ' "$work/drill-bad.log"
}
check "the drill fails on a migration mismatch" \
  drill_fails "latest migration is $latest, this checkout's is 99991231000000" \
  MIGRATIONS_DIR="$work/newer-migrations" bash scripts/restore-drill.sh
q -c "DELETE FROM subscriptions"
check "the drill fails when the live database has fewer rows than the backup" \
  drill_fails "fewer rows than the backup: subscriptions (backup 1, live 0)" \
  bash scripts/restore-drill.sh --expect-from "$db_url"
mkdir -p "$work/empty"
check "the drill fails without a dump" \
  drill_fails "no keel-\*.dump" env BACKUP_DIR="$work/empty" bash scripts/restore-drill.sh

# ---- retention and upload -----------------------------------------------------------------------
log "retention and upload hook"
old=keel-20200101T000000Z.dump
cp "$backups/$first" "$backups/$old"
touch -d '15 days ago' "$backups/$old"
recent=keel-20200102T000000Z.dump
cp "$backups/$first" "$backups/$recent"
touch -d '13 days ago' "$backups/$recent"
mkdir -p "$work/uploaded"
# shellcheck disable=SC2016 # $1 is for the hook's shell
upload='cp "$1" '"'$work/uploaded/'"
run "$work/backup2.log" env DATABASE_URL="$db_url" BACKUP_DIR="$backups" BACKUP_UPLOAD_CMD="$upload" \
  bash scripts/backup.sh || true
second=$(dumps | tail -n 1)
retention_ok() {
  local got
  got=$(dumps | tr '\n' ' ')
  echo "dumps: $got"
  [ ! -e "$backups/$old" ] && [ -e "$backups/$recent" ] && [ -e "$backups/$first" ] &&
    [ "$second" != "$first" ] && [ "$(dumps | wc -l)" = 3 ]
}
check "retention: a 15-day-old dump deleted, a 13-day-old one and the new ones kept" retention_ok
check "upload hook ran with the new dump as \$1" cmp "$backups/$second" "$work/uploaded/$second"

run "$work/backup3.log" env DATABASE_URL="$db_url" BACKUP_DIR="$backups" BACKUP_KEEP_DAYS=0 \
  bash scripts/backup.sh || true
newest_only() {
  local got
  got=$(dumps)
  echo "dumps: $got"
  [ "$(printf '%s\n' "$got" | wc -l)" = 1 ] && [[ $got > $second ]]
}
check "retention never deletes the newest dump (BACKUP_KEEP_DAYS=0 keeps just it)" newest_only

# ---- failures -----------------------------------------------------------------------------------
log "failures"
# fails_clearly WANT ENV...: backup.sh fails, with one `error: …WANT…` line on stderr, no
# password in its output and no new dump (with `keeps` first: the dump is kept).
fails_clearly() {
  local keeps=false want rc=0 before
  if [ "$1" = keeps ]; then keeps=true; shift; fi
  want=$1
  shift
  before=$(dumps)
  env "$@" BACKUP_DIR="$backups" bash scripts/backup.sh >"$work/fail.out" 2>"$work/fail.err" || rc=$?
  cat "$work/fail.err"
  [ "$rc" != 0 ] || { echo "exit 0"; return 1; }
  [ "$(wc -l <"$work/fail.err")" = 1 ] || { echo "not one line on stderr"; return 1; }
  grep -q "^error: backup: .*$want" "$work/fail.err" || { echo "expected '$want'"; return 1; }
  ! grep -q 'Sup3r-s3cret' "$work/fail.out" "$work/fail.err" || { echo "password printed"; return 1; }
  $keeps || [ "$before" = "$(dumps)" ] || { echo "a dump was written"; return 1; }
  [ -z "$(find "$backups" -name '.*' -type f)" ] || { echo "temporary file left"; return 1; }
}
check "no DATABASE_URL: fails clearly" fails_clearly "DATABASE_URL is not set" DATABASE_URL=
check "unreachable server: fails clearly, password not printed" fails_clearly "pg_dump failed" \
  DATABASE_URL="postgres://keel:Sup3r-s3cret@127.0.0.1:1/keel"
check "unknown database: fails clearly, password not printed" fails_clearly "pg_dump failed" \
  DATABASE_URL="${db_server%%://*}://postgres:Sup3r-s3cret@${db_server#*@}/keel_no_such_database_$$"
check "failing upload hook fails the backup (the dump is kept)" fails_clearly keeps "BACKUP_UPLOAD_CMD failed" \
  DATABASE_URL="$db_url" BACKUP_UPLOAD_CMD="exit 3"

elapsed=$((SECONDS - started))
if [ "$failures" -gt 0 ]; then
  printf '%d check(s) failed (%d s)\n' "$failures" "$elapsed"
  exit 1
fi
printf 'all backup checks passed (%d s)\n' "$elapsed"
