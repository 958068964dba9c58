-- The collector's own account on MariaDB/MySQL: it may read the source table, nothing else.
--
-- `collector init-db` runs this file after schema.sql and seed.sql on a mysql:// or
-- mariadb:// source, in the source's database, substituting :"table" (with
-- ANSI_QUOTES, so "data_1" is an identifier). By hand, name the table yourself:
--     sed 's/:"table"/data_1/' roles_mysql.sql | mariadb source_1
-- The account has no password: give it one (ALTER USER 'collector_reader'@'%'
-- IDENTIFIED BY '...') and put it in the DSN. Its sessions are read-only and
-- time-limited as well (the collector sets that on every connection).
CREATE USER IF NOT EXISTS 'collector_reader'@'%';
GRANT SELECT ON :"table" TO 'collector_reader'@'%';
