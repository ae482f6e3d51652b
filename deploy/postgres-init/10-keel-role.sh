#!/usr/bin/env bash
# Run once by the postgres image, when it initialises an empty data directory
# (/docker-entrypoint-initdb.d): keel's own role, `keel`, with KEEL_DB_PASSWORD, owner of the
# `keel` database and nothing more (no superuser, no CREATEDB, no CREATEROLE). The image's
# superuser, `postgres` (POSTGRES_PASSWORD), is the operator's: restores and drills.
set -euo pipefail
: "${KEEL_DB_PASSWORD:?KEEL_DB_PASSWORD is not set}"
psql -v ON_ERROR_STOP=1 --username postgres --dbname postgres --set password="$KEEL_DB_PASSWORD" <<'SQL'
CREATE ROLE keel LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'password';
CREATE DATABASE keel OWNER keel;
SQL
echo "created the role keel (no superuser) and its database keel"
