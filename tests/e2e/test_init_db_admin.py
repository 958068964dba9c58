"""``init-db`` as an administrative role, for a service that serves as the read-only one."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from service.config import Config
from service.sources.bridge import AsyncioBridge
from tests.e2e.conftest import running_server, write_config
from tests.e2e.test_serve import run_cli, trio_run_drop
from tests.integration.test_least_privilege import as_reader
from tests.support import pg

pytestmark = pytest.mark.e2e


def reader_config(reference_config: Config, postgres_dsn: str, path: Path) -> tuple[Path, str]:
    """A config whose only source is a fresh database, reached as the read-only role."""
    database = f"collector_test_admin_{uuid.uuid4().hex[:8]}"
    dsn = as_reader(pg.with_database(postgres_dsn, database))
    source = pg.source(reference_config, "source_3", dsn=dsn)
    return write_config(path, Config(sources=(source,))), dsn


async def test_init_db_with_an_admin_dsn_prepares_what_the_reader_serves(
    postgres_dsn: str, reference_config: Config, tmp_path: Path, asyncio_bridge: AsyncioBridge
) -> None:
    config_file, dsn = reader_config(reference_config, postgres_dsn, tmp_path / "c.toml")
    try:
        result = run_cli("init-db", "--config", str(config_file), "--admin-dsn", postgres_dsn)
        assert result.returncode == 0, result.stderr
        assert "source_3: 20 rows added, database created" in result.stdout
        async with (
            running_server(["--config", str(config_file)]) as server,
            httpx.AsyncClient(base_url=server.url) as client,
        ):
            response = await client.get("/collect-data")
            assert response.status_code == 200
            assert [row["id"] for row in response.json()] == [*range(21, 31), *range(51, 61)]
    finally:
        await pg._drop_all(postgres_dsn, [dsn])


def test_init_db_as_the_reader_alone_fails_in_one_line_naming_the_way_out(
    postgres_dsn: str, reference_config: Config, tmp_path: Path
) -> None:
    config_file, dsn = reader_config(reference_config, postgres_dsn, tmp_path / "c.toml")
    try:
        result = run_cli("init-db", "--config", str(config_file))
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert "permission denied" in result.stderr
        assert "--admin-dsn" in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        trio_run_drop(postgres_dsn, dsn)


def test_an_unparsable_admin_dsn_is_a_config_error(
    postgres_dsn: str, reference_config: Config, tmp_path: Path
) -> None:
    config_file, _ = reader_config(reference_config, postgres_dsn, tmp_path / "c.toml")
    result = run_cli(
        "init-db", "--config", str(config_file), "--admin-dsn", "postgresql://u:pw@[::1/db"
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "pw" not in result.stderr
