#!/bin/sh
# Patroni's post_bootstrap for kobo: run once, on the machine that
# bootstraps the cluster, with a superuser connection string as $1. Creates
# the role kobo-coord connects as and its database.
set -eu
: "${KOBO_DB_PASSWORD:?set KOBO_DB_PASSWORD in Patroni's environment}"
exec psql -X -q -v ON_ERROR_STOP=1 -v password="$KOBO_DB_PASSWORD" -d "$1" <<'SQL'
CREATE ROLE kobo LOGIN PASSWORD :'password';
CREATE DATABASE kobo OWNER kobo;
SQL
