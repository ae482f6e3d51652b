#!/usr/bin/env bash
# Installs PgBouncer 1.21 or later as /usr/local/bin/pgbouncer, for the scale-out test
# (tests/api/scale.rs) and bench/run.sh. keel needs PgBouncer's tracking of protocol-level
# prepared statements (1.21+, `max_prepared_statements`; on by default from 1.22): sqlx prepares
# every query as a named statement, which PgBouncer 1.18 (Debian 12's) would send to whichever
# server connection comes next (README, "PgBouncer").
#
# Debian 12's package is used when it is new enough; otherwise Debian 13's source package is
# fetched with apt (signed, like any package) and built. Needs root (apt-get).
set -euo pipefail

MIN_MINOR=21

new_enough() {
  local major minor
  read -r major minor < <("$1" --version 2>/dev/null | sed -n 's/^PgBouncer \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  [ -n "${minor:-}" ] || return 1
  [ "$major" -gt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -ge "$MIN_MINOR" ]; }
}

for candidate in /usr/local/bin/pgbouncer /usr/sbin/pgbouncer; do
  if [ -x "$candidate" ] && new_enough "$candidate"; then
    echo "PgBouncer: $("$candidate" --version | head -n 1) at $candidate"
    exit 0
  fi
done

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq pgbouncer >/dev/null
if new_enough /usr/sbin/pgbouncer; then
  echo "PgBouncer: $(/usr/sbin/pgbouncer --version | head -n 1) from apt"
  exit 0
fi

echo "Debian's PgBouncer is older than 1.$MIN_MINOR: building Debian 13's source package"
apt-get install -y -qq build-essential pkg-config libevent-dev libssl-dev >/dev/null
sources=/etc/apt/sources.list.d/keel-trixie-src.list
work=$(mktemp -d)
trap 'rm -rf "$work" "$sources"; apt-get update -qq || true' EXIT
echo "deb-src http://deb.debian.org/debian trixie main" >"$sources"
apt-get update -qq
(cd "$work" && apt-get source --download-only pgbouncer >/dev/null 2>&1)
tar -xzf "$work"/pgbouncer_*.orig.tar.gz -C "$work"
cd "$work"/pgbouncer-*/
./configure --prefix=/usr/local --without-cares --without-pam >/dev/null
make -j"$(nproc)" >/dev/null
make install >/dev/null
new_enough /usr/local/bin/pgbouncer
echo "PgBouncer: $(/usr/local/bin/pgbouncer --version | head -n 1) at /usr/local/bin/pgbouncer"
