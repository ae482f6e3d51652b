# shellcheck shell=bash
# Shared by the check scripts (scripts/check-*.sh, compose-up-check.sh): logging, PASS/FAIL
# lines with a failure count, `expect`, a free port, and apt-get on demand. Source it after
# `cd` to the repository root.

log() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

failures=0
pass() { printf 'PASS  %s\n' "$1"; }
fail() {
  printf 'FAIL  %s\n' "$1"
  failures=$((failures + 1))
}

# check NAME COMMAND...: runs COMMAND, PASS if it succeeds. Its output is shown on failure,
# and on success when it is a line or two (an observation worth seeing).
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then
    pass "$name"
    if [ -n "$out" ] && [ "$(printf '%s\n' "$out" | wc -l)" -le 2 ]; then
      printf '%s\n' "$out" | sed 's/^/      /'
    fi
  else
    fail "$name"
    printf '%s\n' "$out" | sed 's/^/      /'
  fi
}

# expect WANT COMMAND...: COMMAND prints WANT.
expect() {
  local want=$1 got
  shift
  got=$("$@") || true
  if [ "$got" = "$want" ]; then return 0; fi
  echo "expected '$want', got '$got'"
  return 1
}

# A TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

apt_updated=false
apt_install() {
  if [ "$apt_updated" = false ]; then
    apt-get update -qq
    apt_updated=true
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
