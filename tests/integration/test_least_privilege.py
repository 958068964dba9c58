"""The collector reads through a role and a session that cannot write."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from service.config import Config
from service.core import Collector, Status
from service.dbinit import READER_ROLE
from service.sources import open_sources
from service.sources.base import DriverLimits
from service.sources.bridge import AsyncioBridge
from tests.support import pg

pytestmark = pytest.mark.integration


def as_reader(dsn: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{READER_ROLE}@{host}", parts.path, parts.query, ""))


async def test_reader_role_may_read_and_may_not_write(
    asyncio_bridge: AsyncioBridge, reference_config: Config
) -> None:
    readers = tuple(
        pg.source(reference_config, s.name, dsn=as_reader(s.dsn)) for s in reference_config.sources
    )
    async with open_sources(Config(sources=readers), asyncio_bridge) as members:
        collection = await Collector(members, 2.0).collect()
    assert [o.status for o in collection.outcomes] == [Status.OK] * 3
    assert len(collection.rows) == 60
    source = readers[0]
    async with pg.admin(asyncio_bridge, source.dsn) as reader:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await reader.execute(f"INSERT INTO {source.table} VALUES (9999, 'no')")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await reader.execute("CREATE TABLE intruder (id INT)")


async def test_source_sessions_are_read_only_and_time_limited_in_the_server(
    asyncio_bridge: AsyncioBridge, reference_config: Config
) -> None:
    source = reference_config.sources[0]  # connects as the superuser, on purpose
    limits = DriverLimits.for_source(source.name, 2.0)
    connection = await asyncio_bridge.run(
        asyncpg.connect, source.dsn, server_settings=limits.server_settings()
    )
    try:
        assert await asyncio_bridge.run(connection.fetchval, "SHOW statement_timeout") == "2s"
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await asyncio_bridge.run(
                connection.execute, f"INSERT INTO {source.table} VALUES (9999, 'no')"
            )
    finally:
        await asyncio_bridge.run(connection.close)
