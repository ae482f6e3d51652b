#!/usr/bin/env bash
# Backs up keel's database: `pg_dump --format=custom` of $DATABASE_URL into
# ${BACKUP_DIR:-./backups}/keel-YYYYMMDDTHHMMSSZ.dump (UTC, mode 600).
#
#   DATABASE_URL=postgres://keel:…@host:5432/keel scripts/backup.sh
#
# - The dump is written under a hidden temporary name and renamed once pg_dump succeeded and
#   `pg_restore --list` read it back, so a keel-*.dump file is always complete.
# - Retention: dumps older than ${BACKUP_KEEP_DAYS:-14} days are deleted, never the one just
#   written (the newest).
# - BACKUP_UPLOAD_CMD, if set, runs with `sh -c` and the dump's path as $1 after the dump was
#   kept, e.g. BACKUP_UPLOAD_CMD='rclone copy "$1" remote:keel'. Its failure fails the script.
# - Exits non-zero with one `error: …` line on stderr on any failure. DATABASE_URL is never
#   printed, nor put on a command line (the password goes to pg_dump through PGPASSWORD).
# docker-compose.prod.yml's `backup` service runs this daily; RUNBOOK.md, "Backups and restore".
set -euo pipefail

log() { printf 'backup: %s\n' "$*"; }
die() { printf 'error: backup: %s\n' "$*" >&2; exit 1; }

started=$SECONDS
url="${DATABASE_URL:-}"
dir="${BACKUP_DIR:-./backups}"
keep_days="${BACKUP_KEEP_DAYS:-14}"

[ -n "$url" ] || die "DATABASE_URL is not set"
[[ $keep_days =~ ^[0-9]+$ ]] || die "BACKUP_KEEP_DAYS must be a whole number of days, not '$keep_days'"
command -v pg_dump >/dev/null || die "pg_dump is not installed"
command -v pg_restore >/dev/null || die "pg_restore is not installed"

# postgres://user:password@rest -> PGPASSWORD (percent-decoded) and postgres://user@rest, so
# the password shows neither in `ps` nor in any message. `secret` is redacted from messages.
secret=""
if [[ $url =~ ^(postgres(ql)?://)([^:@/]*):([^@/]*)@(.*)$ ]]; then
  secret=${BASH_REMATCH[4]}
  pw=${secret//\\/\\\\}
  PGPASSWORD=$(printf '%b' "${pw//%/\\x}")
  export PGPASSWORD
  url="${BASH_REMATCH[1]}${BASH_REMATCH[3]}@${BASH_REMATCH[5]}"
fi
redact() {
  local line=$1
  if [ -n "$secret" ]; then line=${line//"$secret"/***}; fi
  if [ -n "${PGPASSWORD:-}" ]; then line=${line//"$PGPASSWORD"/***}; fi
  printf '%s' "$line"
}
# The first error line of a tool's stderr (else its last line), redacted.
first_error() {
  local line
  line=$(grep -m 1 -iE 'error|fatal|failed' "$1" || tail -n 1 "$1" || true)
  redact "${line:-no message}"
}

mkdir -p "$dir" || die "cannot create BACKUP_DIR $dir"
[ -w "$dir" ] || die "BACKUP_DIR $dir is not writable"
umask 077

tmp=""
work=$(mktemp -d)
errors="$work/stderr"
cleanup() {
  if [ -n "$tmp" ]; then rm -f "$tmp"; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# One dump per second at most: a second run within the same second waits for the next one.
for _ in 1 2 3; do
  name="keel-$(date -u +%Y%m%dT%H%M%SZ).dump"
  [ -e "$dir/$name" ] || break
  sleep 1
done
[ ! -e "$dir/$name" ] || die "$dir/$name already exists"
final="$dir/$name"
tmp="$dir/.$name.partial"

if ! pg_dump --format=custom --no-password --file="$tmp" --dbname="$url" 2>"$errors"; then
  die "pg_dump failed: $(first_error "$errors")"
fi
if ! pg_restore --list "$tmp" >"$work/list" 2>"$errors"; then
  die "the dump does not read back (pg_restore --list): $(first_error "$errors")"
fi
tables=$(grep -c ' TABLE ' "$work/list" || true)
[ "$tables" -gt 0 ] || die "the dump holds no table: is DATABASE_URL the right database?"

chmod 600 "$tmp"
mv -f "$tmp" "$final"
tmp=""
size=$(du -h "$final" | cut -f1)
log "wrote $final ($size, $tables tables) in $((SECONDS - started)) s"

# Retention: older than keep_days days, by modification time; never the dump just written.
deleted=0
while IFS= read -r -d '' old; do
  [ "$old" -ef "$final" ] && continue
  rm -f -- "$old" || die "cannot delete old dump $old"
  log "deleted $old (older than $keep_days days)"
  deleted=$((deleted + 1))
done < <(find "$dir" -maxdepth 1 -type f -name 'keel-*.dump' -mmin "+$((keep_days * 1440))" -print0)
# Temporary files of runs killed outright (SIGKILL, power loss), a day on.
find "$dir" -maxdepth 1 -type f -name '.keel-*.dump.partial' -mmin +1440 -delete 2>/dev/null || true

if [ -n "${BACKUP_UPLOAD_CMD:-}" ]; then
  if ! env -u PGPASSWORD sh -c "$BACKUP_UPLOAD_CMD" backup-upload "$final" </dev/null 2>"$errors"; then
    die "BACKUP_UPLOAD_CMD failed for $final (kept locally): $(first_error "$errors")"
  fi
  log "uploaded $final"
fi
log "done in $((SECONDS - started)) s"
