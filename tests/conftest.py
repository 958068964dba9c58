"""Fixtures shared by every test layer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from service.config import Config
from service.sources.aioloop import open_loop
from service.sources.bridge import AsyncioBridge
from tests.support import mysql, pg
from tests.support.faultproxy import ProxyFactory
from tests.support.pg import proxy_factory
from tests.support.time_limit import (  # noqa: F401 (hooks, registered by being here)
    pytest_collection_modifyitems,
    pytest_timeout_set_timer,
)


@pytest.fixture
async def asyncio_bridge() -> AsyncIterator[AsyncioBridge]:
    """A trio-asyncio loop for the drivers, opened for one test."""
    async with open_loop() as loop:
        yield AsyncioBridge(loop)


@pytest.fixture(scope="session")
def postgres_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A DSN for a real PostgreSQL server (see tests/support/pg.py for which one)."""
    with (
        pg.postgres_server(tmp_path_factory.mktemp("postgres")) as dsn,
        pg.reader_role_cleanup(dsn),
    ):
        yield dsn


@pytest.fixture(scope="session")
def reference_config(postgres_dsn: str) -> Iterator[Config]:
    """Three freshly created and seeded reference sources on the test server."""
    with pg.reference_databases(postgres_dsn) as config:
        yield config


@pytest.fixture(scope="session")
def mariadb_dsn() -> str:
    """A DSN for the real MariaDB server; skips when nothing answers (tests/support/mysql.py)."""
    return mysql.server_dsn()


@pytest.fixture(scope="session")
def mariadb_config(mariadb_dsn: str) -> Iterator[Config]:
    """The three reference sources created and seeded on MariaDB, by ``init-db``'s code."""
    with mysql.reference_databases(mariadb_dsn) as config:
        yield config


@pytest.fixture
def fault_proxy(nursery: trio.Nursery) -> ProxyFactory:
    """Make a fault proxy in front of a source's server; returns it and the proxied DSN."""
    return proxy_factory(nursery)
