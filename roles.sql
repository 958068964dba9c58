-- The collector's own role: it may connect and read the source table, nothing else.
--
-- Run by hand as a superuser (or the table's owner), naming the table:
--     psql -d source_1 -v table=data_1 -f roles.sql
-- `collector init-db` runs this same file after schema.sql and seed.sql. The role
-- has no password: give it one (ALTER ROLE collector_reader PASSWORD '...') where
-- the server asks for passwords, and put it in the DSN.
DO $$
BEGIN
    CREATE ROLE collector_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- the role is cluster-wide: another database created it already
END
$$;
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO collector_reader', current_database());
END
$$;
GRANT USAGE ON SCHEMA public TO collector_reader;
GRANT SELECT ON :"table" TO collector_reader;
