-- The one table shape every source shares.
--
-- Run by hand against a source database with psql, naming the table:
--     psql -d source_1 -v table=data_1 -f schema.sql
-- `collector init-db` runs this same file, substituting :"table" the way psql does.
CREATE TABLE IF NOT EXISTS :"table" (
    id   INT PRIMARY KEY,
    name VARCHAR(255)
);
