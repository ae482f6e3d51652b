#!/usr/bin/env bash
# Proves `scripts/rename.sh` (run by .ci/run): renames a copy of this tree to acmequote, checks
# that every target compiles with --locked, that at most a few lines outside the applied
# migrations still say keel, and runs a smoke test of the renamed product: /health names it,
# a signup flow with its cookies, and a new job waking a worker on the renamed NOTIFY channel.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keel-target}"
export SQLX_OFFLINE=true
# shellcheck source=scripts/lib/checks.sh
. scripts/lib/checks.sh

copy=$(mktemp -d)
trap 'rm -rf "$copy"' EXIT
# The tree's files: git's list in a checkout; in .ci/run's copy (no .git, only the tracked and
# untracked files already) every file but build output, as scripts/rename.sh does.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  list_files() { git ls-files -z --cached --others --exclude-standard; }
else
  list_files() { find . -path ./target -prune -o -path '*/node_modules' -prune -o -type f -printf '%P\0'; }
fi
list_files |
  while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done |
  tar --null -T - -cf - | tar -xf - -C "$copy"
cd "$copy"

bash scripts/rename.sh acmequote
bash scripts/rename.sh acmequote | grep -q 'nothing to do'
check "a name that is not a crate name is refused" \
  sh -c '! bash scripts/rename.sh Acme-Quote 2>/dev/null'

left=$(grep -rIin keel . --exclude-dir=migrations || true)
echo "lines still naming keel outside migrations/: $(printf '%s' "$left" | grep -c . || true)"
[ -z "$left" ] || printf '%s\n' "$left"
check "at most 5 lines outside migrations/ still name keel" \
  test "$(printf '%s' "$left" | grep -c . || true)" -le 5

log "cargo check --locked --all-targets (renamed)"
cargo check --locked --all-targets --quiet

log "smoke test of the renamed product"
export ACMEQUOTE_TEST_DATABASE_URL="${KEEL_TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432}"
export ACMEQUOTE_TEST_REDIS_URL="${KEEL_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
cargo nextest run --locked --no-fail-fast -E '
  test(=health::health_passes_when_postgres_and_redis_answer)
  | test(=auth::sign_up_verify_log_out_log_in_and_see_the_dashboard)
  | test(=jobs::a_new_job_wakes_an_idle_worker_at_once)
  | test(=jobs::the_trigger_notifies_on_the_channel_workers_listen_to_unless_opted_out)'
[ "$failures" -eq 0 ] || die "$failures rename checks failed"
