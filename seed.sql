-- The reference rows: source 1 holds ids 1-10 and 31-40 in data_1, source 2 holds
-- 11-20 and 41-50 in data_2, source 3 holds 21-30 and 51-60 in data_3, and every
-- row is named 'Test <id>'. A table not listed here is left empty.
--
-- Run by hand after schema.sql, naming the table:
--     psql -d source_1 -v table=data_1 -f seed.sql
-- Idempotent: rows that already exist are left as they are.
INSERT INTO :"table" (id, name)
SELECT id, 'Test ' || id
FROM (VALUES
        ('data_1', 1, 10), ('data_1', 31, 40),
        ('data_2', 11, 20), ('data_2', 41, 50),
        ('data_3', 21, 30), ('data_3', 51, 60)
     ) AS reference (table_name, first_id, last_id)
     CROSS JOIN LATERAL generate_series(first_id, last_id) AS id
WHERE table_name = :'table'
ORDER BY id
ON CONFLICT (id) DO NOTHING;
