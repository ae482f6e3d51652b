#!/usr/bin/env bash
# Renames this fork: `bash scripts/rename.sh NEW_NAME`.
#
# The current name is the crate's (Cargo.toml); every spelling of it in the tracked text files
# becomes the new one: name, Name and NAME (crate and binary, Cargo.lock, `use` paths, pages
# and emails, cookies, metrics and alert rules, env vars, Dockerfile, compose files,
# nginx.conf, workflows, scripts and docs). Applied migrations are never edited (sqlx checks
# their checksums): a new migration moves the job queue's NOTIFY channel and opt-out setting,
# which the trigger spells in SQL, to the new name. Running it again with the same name does
# nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "rename.sh: $*" >&2; exit 2; }

[ $# -eq 1 ] || die "usage: scripts/rename.sh NEW_NAME (lower case letters, digits and _)"
new=$1
old=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[ -n "$old" ] || die "no package name in Cargo.toml"

# The name becomes a crate and a Rust path, a metric prefix, a cookie, an image and a
# PostgreSQL channel: the characters all of them accept.
[[ $new =~ ^[a-z][a-z0-9_]{0,39}$ ]] ||
  die "'$new' is not usable as a name: lower case letters, digits and _, starting with a letter (at most 40)"
[[ $new == *_ ]] && die "'$new' ends with _, which makes names like ${new}_jobs hard to read"
case $new in
  std | core | alloc | proc_macro | test | self | super | crate | build | deps | examples | \
    as | async | await | break | const | continue | dyn | else | enum | extern | false | fn | \
    for | if | impl | in | let | loop | match | mod | move | mut | pub | ref | return | static | \
    struct | trait | true | type | unsafe | use | where | while | abstract | become | box | do | \
    final | gen | macro | override | priv | try | typeof | unsized | virtual | yield)
    die "'$new' is a Rust keyword or a reserved crate name" ;;
esac
if [ "$new" = "$old" ]; then
  echo "already named $new: nothing to do"
  exit 0
fi

# acme_quote -> AcmeQuote (alert names and prose that start with a capital).
capitalised() {
  local part out=""
  IFS=_ read -ra parts <<<"$1"
  for part in "${parts[@]}"; do out+="${part^}"; done
  printf '%s' "$out"
}
old_cap=$(capitalised "$old") new_cap=$(capitalised "$new")

# Tracked text files (or every file, outside a git checkout), less the applied migrations,
# the query cache (keyed by each query's hash; no query names the product) and this script.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  list_files() { git ls-files -z --cached --others --exclude-standard; }
else
  list_files() { find . -path ./target -prune -o -path '*/node_modules' -prune -o -type f -printf '%P\0'; }
fi
changed=0
while IFS= read -r -d '' file; do
  case $file in migrations/*.sql | .sqlx/* | scripts/rename.sh) continue ;; esac
  if [ ! -f "$file" ] || ! grep -Iq . "$file"; then continue; fi # text files only
  if grep -q -e "$old" -e "$old_cap" -e "${old^^}" "$file"; then
    sed -i -e "s/$old/$new/g" -e "s/$old_cap/$new_cap/g" -e "s/${old^^}/${new^^}/g" "$file"
    changed=$((changed + 1))
  fi
done < <(list_files)

# The trigger's latest definition, with the new channel and setting, in a migration of its own.
latest=$(grep -l 'FUNCTION jobs_notify()' migrations/*.sql | sort | tail -n 1)
last=$(find migrations -name '*.sql' -printf '%f\n' | sort | tail -n 1)
version=$(date -u +%Y%m%d%H%M%S)
[ "$version" -gt "${last%%_*}" ] || version=$((${last%%_*} + 1))
migration="migrations/${version}_jobs_notify_${new}.sql"
{
  echo "-- scripts/rename.sh $new: the job queue's NOTIFY channel and opt-out setting follow the"
  echo "-- product's name (src/jobs/queue.rs); the trigger as $(basename "$latest") defines it."
  awk '/FUNCTION jobs_notify\(\)/ { on = 1 } on { print } on && /^\$\$;/ { exit }' "$latest" |
    sed -e 's/^CREATE FUNCTION/CREATE OR REPLACE FUNCTION/' \
      -e "s/'${old}_jobs'/'${new}_jobs'/g" -e "s/'${old}\.jobs_notify'/'${new}.jobs_notify'/g"
} >"$migration"
grep -q "'${new}_jobs'" "$migration" || die "could not rewrite the trigger from $latest"

echo "renamed $old to $new in $changed files; wrote $migration"
echo "next: cargo check --all-targets, then commit (Cargo.lock is already consistent)"
