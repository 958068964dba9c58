"""``collector init-db`` on MariaDB: database, table, reference rows and the reader account."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from service.config import Access, Config, SourceConfig
from service.sources.bridge import AsyncioBridge
from tests.e2e.conftest import running_server, write_config
from tests.e2e.test_serve import run_cli
from tests.support import mysql

pytestmark = pytest.mark.e2e


def reader_source(mariadb_dsn: str) -> SourceConfig:
    """source_3 in a fresh database, reached as the SELECT-only account."""
    database = f"collector_my_init_{uuid.uuid4().hex[:8]}"
    dsn = mysql.as_user(mysql.with_database(mariadb_dsn, database), mysql.READER)
    return SourceConfig("source_3", dsn, "data_3", Access.ORM, ids=((21, 30), (51, 60)))


async def test_init_db_with_an_admin_dsn_prepares_what_the_reader_serves(
    mariadb_dsn: str, mariadb_config: Config, tmp_path: Path, asyncio_bridge: AsyncioBridge
) -> None:
    source = reader_source(mariadb_dsn)
    config_file = write_config(tmp_path / "c.toml", Config(sources=(source,)))
    try:
        for expected in ("20 rows added, database created", "0 rows added"):  # idempotent
            result = run_cli("init-db", "--config", str(config_file), "--admin-dsn", mariadb_dsn)
            assert result.returncode == 0, result.stderr
            assert f"source_3: {expected}\n" in result.stdout
        async with (
            running_server(["--config", str(config_file)]) as server,
            httpx.AsyncClient(base_url=server.url) as client,
        ):
            response = await client.get("/collect-data")
            assert [row["id"] for row in response.json()] == [*range(21, 31), *range(51, 61)]
            assert response.json()[0] == {"id": 21, "name": "Test 21"}
    finally:
        await asyncio_bridge.run(mysql.drop_source, mariadb_dsn, source)


def test_init_db_as_the_reader_alone_fails_in_one_line_naming_the_way_out(
    mariadb_dsn: str, mariadb_config: Config, tmp_path: Path
) -> None:
    config_file = write_config(tmp_path / "c.toml", Config(sources=(reader_source(mariadb_dsn),)))
    result = run_cli("init-db", "--config", str(config_file))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Access denied" in result.stderr
    assert "--admin-dsn" in result.stderr


def test_an_admin_dsn_of_another_engine_is_a_config_error(mariadb_dsn: str, tmp_path: Path) -> None:
    config_file = write_config(tmp_path / "c.toml", Config(sources=(reader_source(mariadb_dsn),)))
    admin = "postgresql://postgres:pw@127.0.0.1:5432/postgres"
    result = run_cli("init-db", "--config", str(config_file), "--admin-dsn", admin)
    assert result.returncode == 2, result.stderr
    assert "must start with mysql://" in result.stderr
    assert "pw@" not in result.stderr
