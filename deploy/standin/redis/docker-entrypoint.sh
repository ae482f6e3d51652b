#!/bin/sh
# The stand-in's entrypoint: the part of docker-library/redis's docker-entrypoint.sh (and of its
# build) that keel relies on (deploy/standin/README.md). Arguments go to redis-server (a first
# argument starting with `-` or ending in `.conf` gets `redis-server` put before it); as root,
# /data is handed to the redis user and the server re-run as that user. The official build
# turns protected mode off by default (the container's network is the boundary): the same here
# unless the arguments set it.
set -e

case $1 in -* | *.conf) set -- redis-server "$@" ;; esac

if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
  find . \! -user redis -exec chown redis '{}' +
  exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

if [ "$1" = redis-server ]; then
  case " $* " in
    *" --protected-mode "*) ;;
    *) set -- "$@" --protected-mode no ;;
  esac
fi
umask 0077
exec "$@"
