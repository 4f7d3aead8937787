#!/usr/bin/env bash
# First start (empty PGDATA): initdb with POSTGRES_USER/POSTGRES_PASSWORD, then POSTGRES_DB; then the
# server, listening on every interface of the container.
set -euo pipefail
if [[ "${1:-}" == postgres ]]; then
    shift
    : "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
    : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
    if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
        initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
            --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA"
        echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
        if [[ "$POSTGRES_DB" != postgres ]]; then
            pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
            psql -v ON_ERROR_STOP=1 --username="$POSTGRES_USER" --dbname=postgres \
                -c "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\""
            pg_ctl -D "$PGDATA" -m fast -w stop
        fi
    fi
    exec postgres -c listen_addresses='*' "$@"
fi
exec "$@"
