#!/usr/bin/env bash
# The stand-in's entrypoint: the part of docker-library/postgres's docker-entrypoint.sh that
# keel relies on (deploy/standin/README.md). `postgres ARGS` as root: PGDATA owned by postgres,
# then re-run as postgres; a PGDATA without PG_VERSION is initialised from POSTGRES_USER,
# POSTGRES_PASSWORD (required) and POSTGRES_DB, runs /docker-entrypoint-initdb.d/*, and
# accepts password (scram-sha-256) connections from anywhere. Anything else is exec'd as is.
set -Eeo pipefail

if [ "${1:0:1}" = - ]; then set -- postgres "$@"; fi

if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA"
  chown postgres:postgres "$PGDATA"
  chmod 00700 "$PGDATA"
  mkdir -p /var/run/postgresql
  chown postgres:postgres /var/run/postgresql
  chmod 3777 /var/run/postgresql
  exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]; then
    echo 'error: database is uninitialized and superuser password is not specified (POSTGRES_PASSWORD)' >&2
    exit 1
  fi
  user=${POSTGRES_USER:-postgres}
  db=${POSTGRES_DB:-$user}
  auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
  # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of arguments
  initdb --username="$user" --pwfile=<(printf '%s\n' "${POSTGRES_PASSWORD:-}") ${POSTGRES_INITDB_ARGS:-}
  printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -w start -o "-c listen_addresses='' -p 5432"
  export PGPASSWORD="${POSTGRES_PASSWORD:-}"
  if [ "$db" != postgres ]; then
    printf 'CREATE DATABASE :"db";\n' |
      psql -v ON_ERROR_STOP=1 --username "$user" --no-password --dbname postgres --set db="$db"
  fi
  shopt -s nullglob
  for f in /docker-entrypoint-initdb.d/*; do
    # shellcheck disable=SC1090 # the image user's scripts
    case $f in
      *.sh) echo "running $f"; if [ -x "$f" ]; then "$f"; else . "$f"; fi ;;
      *.sql) echo "running $f"; psql -v ON_ERROR_STOP=1 --username "$user" --no-password --dbname "$db" -f "$f" ;;
      *.sql.gz) echo "running $f"; gunzip -c "$f" | psql -v ON_ERROR_STOP=1 --username "$user" --no-password --dbname "$db" ;;
      *) echo "ignoring $f" ;;
    esac
  done
  unset PGPASSWORD
  pg_ctl -D "$PGDATA" -m fast -w stop
  echo 'PostgreSQL init process complete; ready for start up.'
fi

exec "$@"
