from __future__ import annotations

import pytest

from service.dbinit import render_psql, sql_file


def test_psql_identifier_and_literal_variables_are_quoted() -> None:
    sql = "CREATE TABLE :\"table\" (x int); SELECT :'table';"
    assert render_psql(sql, {"table": "we\"i'rd"}) == (
        "CREATE TABLE \"we\"\"i'rd\" (x int); SELECT 'we\"i''rd';"
    )


def test_undefined_psql_variable_is_an_error() -> None:
    with pytest.raises(KeyError, match="undefined variable 'other'"):
        render_psql('SELECT :"other"', {"table": "t"})


def test_schema_and_seed_files_are_found_and_take_the_table_name() -> None:
    schema = render_psql(sql_file("schema.sql"), {"table": "data_9"})
    seed = render_psql(sql_file("seed.sql"), {"table": "data_9"})
    assert 'CREATE TABLE IF NOT EXISTS "data_9"' in schema
    assert 'INSERT INTO "data_9"' in seed
    assert "WHERE reference.table_name = 'data_9'" in seed


def test_mysql_role_file_takes_the_table_name_and_splits_into_statements() -> None:
    from service.sources.mysql.initdb import statements

    roles = render_psql(sql_file("roles_mysql.sql"), {"table": "data_9"})
    assert statements(roles) == [
        "CREATE USER IF NOT EXISTS 'collector_reader'@'%'",
        "GRANT SELECT ON \"data_9\" TO 'collector_reader'@'%'",
    ]
