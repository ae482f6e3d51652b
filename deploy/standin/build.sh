#!/usr/bin/env bash
# Builds the stand-in images (deploy/standin/README.md) for every image of
# docker-compose.prod.yml and the Dockerfile's runtime base that is neither present nor pullable:
#
#   deploy/standin/build.sh [--docker PATH]
#
# Each stand-in is labelled org.keel.standin.recipe=<hash of its recipe>; an image of that name
# carrying the current hash is reused as is (the cache between CI runs on one machine), a real
# image (no such label) is never replaced. The Debian roots come from debootstrap (minbase) on
# the mirror apt uses here, imported as keel-standin/debian:<suite>; packages are installed by
# `docker build --network host` (the engine may run without iptables, hence without NAT).
# Prints one line per image: reused, pulled or built (with seconds).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
docker=${DOCKER:-docker}
if [ "${1:-}" = --docker ]; then docker=$2; shift 2; fi

log() { printf '==> standin: %s\n' "$*"; }
die() { printf 'error: standin: %s\n' "$*" >&2; exit 1; }

# The mirror apt uses on this machine (deb822 or one-line sources), else deb.debian.org.
mirror() {
  local m
  m=$(grep -rhoE '^(URIs: *|deb +(\[[^]]*\] +)?)https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
    grep -oE 'https?://[^ ]+' | head -n 1 || true)
  printf '%s' "${m:-http://deb.debian.org/debian}"
}
MIRROR=${STANDIN_MIRROR:-$(mirror)}

# hash FILES...: the recipe's hash (file names and contents).
hash() {
  local f
  for f in "$@"; do printf '%s\n' "${f#"$here"/}"; cat "$f"; done | sha256sum | cut -c1-16
}
label() { "$docker" image inspect --format '{{ index .Config.Labels "org.keel.standin.recipe" }}' "$1" 2>/dev/null || true; }
present() { "$docker" image inspect "$1" >/dev/null 2>&1; }

# base_recipe SUITE: base's own text, the suite and the mirror.
base_recipe() { { declare -f base; printf '%s %s\n' "$1" "$MIRROR"; } | sha256sum | cut -c1-16; }

# base SUITE: keel-standin/debian:SUITE from debootstrap --variant=minbase.
base() {
  local suite=$1 name="keel-standin/debian:$1" recipe root started=$SECONDS
  recipe=$(base_recipe "$suite")
  if [ "$(label "$name")" = "$recipe" ]; then log "$name reused"; return; fi
  command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
  root=$(mktemp -d /var/tmp/keel-standin-root.XXXXXX)
  # shellcheck disable=SC2064 # $root is fixed now
  trap "rm -rf '$root' '$root.log'" EXIT
  # mktemp's 0700 would become the image's / (unreadable to postgres, redis, nonroot).
  chmod 755 "$root"
  log "$name: debootstrap --variant=minbase $suite $MIRROR"
  if ! debootstrap --variant=minbase "$suite" "$root" "$MIRROR" >"$root.log" 2>&1; then
    tail -n 20 "$root.log" >&2
    rm -rf "$root" "$root.log"
    die "debootstrap $suite failed"
  fi
  # As Debian's own container images: services are not started by package scripts, no docs,
  # no apt caches.
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 755 "$root/usr/sbin/policy-rc.d"
  printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n' \
    >"$root/etc/dpkg/dpkg.cfg.d/docker-nodoc"
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$root/etc/apt/apt.conf.d/docker-norecommends"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root/usr/share/doc" "$root/usr/share/man"
  tar -C "$root" -c . | "$docker" import --change "LABEL org.keel.standin.recipe=$recipe" \
    --change 'CMD ["bash"]' - "$name" >/dev/null
  rm -rf "$root" "$root.log"
  log "$name built ($((SECONDS - started)) s)"
}

# image NAME DIR SUITE: NAME from DIR/Dockerfile on keel-standin/debian:SUITE, unless present.
image() {
  local name=$1 dir="$here/$2" suite=$3 recipe started=$SECONDS
  # The recipe: the image's directory and its base's recipe.
  recipe=$({ hash "$dir"/*; base_recipe "$suite"; } | sha256sum | cut -c1-16)
  local have
  have=$(label "$name")
  if present "$name" && [ -z "$have" ]; then log "$name: a real image is present, used as is"; return; fi
  if [ "$have" = "$recipe" ]; then log "$name: stand-in reused"; return; fi
  if [ -z "$have" ] && [ -z "${STANDIN_NO_PULL:-}" ] && "$docker" pull -q "$name" >/dev/null 2>&1; then
    log "$name: pulled (the real image)"
    return
  fi
  base "$suite"
  log "$name: building the stand-in from $2/ on Debian $suite"
  local out old
  old=$("$docker" image inspect --format '{{.Id}}' "$name" 2>/dev/null || true)
  out=$(mktemp)
  if ! "$docker" build --network host --build-arg "BASE=keel-standin/debian:$suite" \
    --label "org.keel.standin.recipe=$recipe" -t "$name" "$dir" >"$out" 2>&1; then
    tail -n 30 "$out" >&2
    rm -f "$out"
    die "building the stand-in $name failed"
  fi
  rm -f "$out"
  # The stand-in it replaces, and the builds' intermediate stages (they carry a base's label).
  if [ -n "$old" ]; then "$docker" rmi "$old" >/dev/null 2>&1 || true; fi
  "$docker" image prune -f --filter label=org.keel.standin.recipe >/dev/null 2>&1 || true
  log "$name: stand-in built ($((SECONDS - started)) s)"
}

# Names exactly as docker-compose.prod.yml and the Dockerfile spell them.
image postgres:17-bookworm postgres trixie
image redis:7-bookworm redis bookworm
image nginx:1.28-bookworm nginx trixie
image gcr.io/distroless/cc-debian12:nonroot distroless bookworm
