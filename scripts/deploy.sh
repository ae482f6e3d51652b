#!/usr/bin/env bash
# Deploys (or rolls back to) an image of keel on the compose stack with no failed request
# (RUNBOOK.md, "Deploy and roll back"). Run it in the directory of docker-compose.prod.yml and
# .env.prod:
#
#   scripts/deploy.sh IMAGE        # e.g. keel:v1.4.0, ghcr.io/acme/keel:v1.4.0, keel:previous
#
# 1. IMAGE (pulled unless present) is tagged keel:latest, the image the compose file runs; once
#    it serves, the image it replaced is tagged keel:previous (the rollback:
#    `scripts/deploy.sh keel:previous`).
# 2. A second app container starts on it beside the old one (`up -d --no-deps --no-recreate
#    --scale app=2 app`) and must become healthy within DEPLOY_TIMEOUT seconds (default 120;
#    it applies pending migrations first). If not, it is removed, keel:latest goes back to the
#    old image and the script fails: the old container never stopped serving.
# 3. nginx reloads (it resolves `app` again: both containers), the old container stops (keel
#    drains in-flight requests for up to 20 s; nginx retries connection errors on the new one),
#    nginx reloads again (the new one only) and the old container is removed.
# Without a running app (first start), it is `up -d --no-build` of the whole stack.
#
# COMPOSE (default: `docker compose` when present, else `docker-compose`), COMPOSE_FILE_NAME
# (docker-compose.prod.yml), ENV_FILE (.env.prod) and COMPOSE_PROJECT (-p, optional) say how
# to reach the project; DOCKER (default docker) which client to use.
set -euo pipefail

log() { printf 'deploy: %s\n' "$*"; }
die() { printf 'error: deploy: %s\n' "$*" >&2; exit 1; }

if [ $# != 1 ] || [ -z "$1" ]; then die "usage: $0 IMAGE"; fi
image=$1
docker=${DOCKER:-docker}
timeout=${DEPLOY_TIMEOUT:-120}
if [ -z "${COMPOSE:-}" ]; then
  if "$docker" compose version >/dev/null 2>&1; then COMPOSE="$docker compose"; else COMPOSE="docker-compose"; fi
fi
read -r -a compose <<<"$COMPOSE"
compose+=(-f "${COMPOSE_FILE_NAME:-docker-compose.prod.yml}" --env-file "${ENV_FILE:-.env.prod}")
if [ -n "${COMPOSE_PROJECT:-}" ]; then compose+=(-p "$COMPOSE_PROJECT"); fi

started=$SECONDS
if ! "$docker" image inspect "$image" >/dev/null 2>&1; then
  log "pulling $image"
  "$docker" pull "$image" >/dev/null || die "cannot pull $image"
fi
new_image=$("$docker" image inspect --format '{{.Id}}' "$image")

mapfile -t old < <("${compose[@]}" ps -q app)
if [ ${#old[@]} = 0 ]; then
  log "no app running: starting the stack on $image"
  "$docker" tag "$new_image" keel:latest
  "${compose[@]}" up -d --no-build
  log "started in $((SECONDS - started)) s"
  exit 0
fi
[ ${#old[@]} = 1 ] || die "${#old[@]} app containers are running; expected 1 (a deploy half done? remove the extra one)"
old_image=$("$docker" inspect --format '{{.Image}}' "${old[0]}")
if [ "$old_image" = "$new_image" ]; then
  log "$image is already running"
  exit 0
fi
# By id: IMAGE may be keel:previous itself, moved at the end.
"$docker" tag "$new_image" keel:latest
log "starting a second app container on $image (running now: $old_image)"
"${compose[@]}" up -d --no-deps --no-build --no-recreate --scale app=2 app

new=""
for id in $("${compose[@]}" ps -q app); do
  if [ "$id" != "${old[0]}" ]; then new=$id; fi
done
[ -n "$new" ] || die "no new app container started"

health=""
for _ in $(seq 1 "$timeout"); do
  health=$("$docker" inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$new")
  if [ "$health" = healthy ]; then break; fi
  sleep 1
done
if [ "$health" != healthy ]; then
  "$docker" logs --tail 30 "$new" >&2 || true
  "$docker" rm -f "$new" >/dev/null
  "$docker" tag "$old_image" keel:latest
  die "the new container is $health after $timeout s: removed it, the old one still serves (keel:latest is the old image again)"
fi
log "new container healthy after $((SECONDS - started)) s"

# `docker exec`, not `compose exec`: the second reload must follow the stop at once (nginx
# may hold the stopped container's address until then: a request sent there waits for
# proxy_connect_timeout before it is retried on the new one).
nginx=$("${compose[@]}" ps -q nginx)
[ -n "$nginx" ] || die "nginx is not running"
"$docker" exec "$nginx" nginx -s reload
# Docker's stop timeout: keel's 20 s drain plus margin (the compose file's stop_grace_period).
"$docker" stop --time 30 "${old[0]}" >/dev/null
"$docker" exec "$nginx" nginx -s reload
"$docker" rm "${old[0]}" >/dev/null
"$docker" tag "$old_image" keel:previous
log "$image serving; the old container is gone ($((SECONDS - started)) s). Roll back: $0 keel:previous"
