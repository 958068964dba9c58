#!/bin/sh
# Runs once, when the PostgreSQL container starts on an empty volume: creates the
# three source databases and applies schema.sql, seed.sql and roles.sql to each.
set -eu
for n in 1 2 3; do
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        -c "CREATE DATABASE source_$n"
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "source_$n" \
        -v table="data_$n" \
        -f /collector/schema.sql -f /collector/seed.sql -f /collector/roles.sql
done
# The role is created without a password; over TCP this server asks for one.
# (psql quotes the value: variables are interpolated in script input, not in -c.)
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v password="$COLLECTOR_READER_PASSWORD" <<'SQL'
ALTER ROLE collector_reader PASSWORD :'password';
SQL
