"""A real MariaDB (or MySQL) server for the tests, and throwaway databases on it.

The machine and CI start MariaDB on 127.0.0.1:3306 (user ``root``, no password);
``COLLECTOR_TEST_MYSQL_DSN`` names another server. Tests that need it are skipped
only when nothing answers there. Databases are named ``collector_my_*`` and dropped.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncmy
import pytest
import trio
import trio_asyncio

from service.config import Config, SourceConfig
from service.dbinit import init_source
from service.embedded import REFERENCE_SOURCES
from service.sources.bridge import AsyncioBridge
from service.sources.mysql.dsn import connect_kwargs
from tests.support.pg import answers

T = TypeVar("T")
TEST_DSN_ENV = "COLLECTOR_TEST_MYSQL_DSN"
LOCAL_DSN = "mysql://root@127.0.0.1:3306/mysql"
#: The read-only account roles_mysql.sql creates.
READER = "collector_reader"


def server_dsn() -> str:
    """The DSN of the MariaDB the tests use; skips the test when nothing answers there."""
    dsn = os.environ.get(TEST_DSN_ENV) or LOCAL_DSN
    parts = urlsplit(dsn)
    if not answers(parts.hostname or "127.0.0.1", parts.port or 3306):
        pytest.skip(f"no MariaDB/MySQL answers at {parts.hostname}:{parts.port}")
    return dsn


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, "", ""))


def as_user(dsn: str, user: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, "", ""))


@contextmanager
def reference_databases(dsn: str) -> Iterator[Config]:
    """The three reference sources, each in its own MariaDB database; dropped after."""
    prefix = f"collector_my_{uuid.uuid4().hex[:8]}"
    config = Config(
        sources=tuple(
            SourceConfig(name, with_database(dsn, f"{prefix}_{name}"), table, access, ids=ids)
            for name, table, access, ids in REFERENCE_SOURCES
        )
    )
    reader_existed = trio_asyncio.run(_on_server, dsn, _reader_exists)
    try:
        trio_asyncio.run(_init_all, config)
        yield config
    finally:
        trio_asyncio.run(_on_server, dsn, partial(_drop_all, config, reader_existed))


async def _init_all(config: Config) -> None:
    for source in config.sources:
        await trio_asyncio.aio_as_trio(init_source)(source)


async def _on_server(dsn: str, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(cursor)`` on an administrative connection (Trio-flavoured)."""

    async def run() -> T:
        connection = await asyncmy.connect(**{**connect_kwargs(dsn), "autocommit": True})
        try:
            async with connection.cursor() as cursor:
                return await work(cursor)
        finally:
            connection.close()

    return await trio_asyncio.aio_as_trio(run)()


async def drop_source(dsn: str, source: SourceConfig) -> None:
    """Drop one source's database and the reader's grant on its table (asyncio-flavoured)."""
    connection = await asyncmy.connect(**{**connect_kwargs(dsn), "autocommit": True})
    try:
        async with connection.cursor() as cursor:
            await _drop_source(cursor, source)
    finally:
        connection.close()


async def _drop_source(cursor: Any, source: SourceConfig) -> None:
    database = urlsplit(source.dsn).path.lstrip("/")
    with contextlib.suppress(asyncmy.errors.MySQLError):  # 1147: no such grant
        await cursor.execute(f"REVOKE SELECT ON `{database}`.`{source.table}` FROM '{READER}'@'%'")
    await cursor.execute(f"DROP DATABASE IF EXISTS `{database}`")


async def _reader_exists(cursor: Any) -> bool:
    await cursor.execute("SELECT 1 FROM mysql.user WHERE user = %s AND host = '%%'", (READER,))
    return bool(await cursor.fetchall())


async def _drop_all(config: Config, reader_existed: bool, cursor: Any) -> None:
    """Drop the databases and the reader's grants on them (MySQL keeps grants of dropped
    tables); drop the reader too if this run created it."""
    for source in config.sources:
        await _drop_source(cursor, source)
    if not reader_existed:
        await cursor.execute(f"DROP USER IF EXISTS '{READER}'@'%'")


class Admin:
    """A plain connection for the tests' own statements (locks, the processlist)."""

    def __init__(self, bridge: AsyncioBridge, connection: Any, database: str) -> None:
        self.bridge = bridge
        self.connection = connection
        self.database = database

    async def fetchall(self, query: str, *args: object) -> list[Any]:
        async def run() -> list[Any]:
            async with self.connection.cursor() as cursor:
                await cursor.execute(query, args or None)
                return list(await cursor.fetchall())

        return await self.bridge.run(run)

    async def execute(self, query: str, *args: object) -> None:
        await self.fetchall(query, *args)

    async def running_queries(self) -> list[str]:
        """Statements of other sessions still running in this database."""
        rows = await self.fetchall(
            "SELECT info FROM information_schema.processlist"
            " WHERE db = %s AND command = 'Query' AND id <> CONNECTION_ID()",
            self.database,
        )
        return [str(row[0]) for row in rows]

    async def queries_left(self, within: float = 1.0) -> list[str]:
        """Other sessions' queries still running ``within`` seconds from now ([] once none are)."""
        with trio.move_on_after(within):
            while True:  # polling the server: nothing here could signal us
                if not await self.running_queries():
                    return []
                await trio.sleep(0.05)
        return await self.running_queries()


@asynccontextmanager
async def admin(bridge: AsyncioBridge, dsn: str) -> AsyncIterator[Admin]:
    kwargs = {**connect_kwargs(dsn), "autocommit": True}
    connection = await bridge.run(asyncmy.connect, **kwargs)
    try:
        yield Admin(bridge, connection, kwargs.get("database", ""))
    finally:
        connection.close()


@asynccontextmanager
async def locked_table(bridge: AsyncioBridge, dsn: str, table: str) -> AsyncIterator[None]:
    """``LOCK TABLES ... WRITE`` from another session: every read of ``table`` waits."""
    async with admin(bridge, dsn) as holder:
        await holder.execute(f"LOCK TABLES `{table}` WRITE")
        try:
            yield
        finally:
            with trio.CancelScope(shield=True):
                await holder.execute("UNLOCK TABLES")
