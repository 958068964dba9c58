-- The reference rows: source 1 holds ids 1-10 and 31-40 in data_1, source 2 holds
-- 11-20 and 41-50 in data_2, source 3 holds 21-30 and 51-60 in data_3, and every
-- row is named 'Test <id>'. A table not listed here is left empty.
--
-- Run by hand after schema.sql, naming the table:
--     psql -d source_1 -v table=data_1 -f seed.sql
-- Idempotent: rows that already exist are left as they are.
-- Written in SQL that PostgreSQL, MariaDB and MySQL share (on the latter two with
-- ANSI_QUOTES, as `collector init-db` runs it), so one file seeds every engine.
INSERT INTO :"table" (id, name)
WITH RECURSIVE
    reference (table_name, first_id, last_id) AS (
        SELECT 'data_1', 1, 10 UNION ALL SELECT 'data_1', 31, 40
        UNION ALL SELECT 'data_2', 11, 20 UNION ALL SELECT 'data_2', 41, 50
        UNION ALL SELECT 'data_3', 21, 30 UNION ALL SELECT 'data_3', 51, 60
    ),
    numbers (id) AS (SELECT 1 UNION ALL SELECT id + 1 FROM numbers WHERE id < 60)
SELECT numbers.id, CONCAT('Test ', numbers.id)
FROM reference
JOIN numbers ON numbers.id BETWEEN reference.first_id AND reference.last_id
WHERE reference.table_name = :'table'
  AND NOT EXISTS (SELECT 1 FROM :"table" AS existing WHERE existing.id = numbers.id)
ORDER BY numbers.id;
