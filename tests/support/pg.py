"""Finding a real PostgreSQL server for the tests, and making throwaway databases on it.

Which server: ``COLLECTOR_TEST_DSN`` if set (any database on the server; the tests
create and drop their own), else 127.0.0.1:5432 if something answers there, else an
embedded server (``service.embedded``) started in a temporary directory.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import trio
import trio_asyncio

from service.config import Config, SourceConfig
from service.dbinit import READER_ROLE, init_source
from service.embedded import REFERENCE_SOURCES, embedded_server
from service.sources.bridge import AsyncioBridge
from tests.support.faultproxy import FaultProxy, ProxyFactory

TEST_DSN_ENV = "COLLECTOR_TEST_DSN"
LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


@contextmanager
def postgres_server(scratch: Path) -> Iterator[str]:
    """Yield a DSN for the server the tests should use."""
    explicit = os.environ.get(TEST_DSN_ENV)
    if explicit:
        yield explicit
    elif answers("127.0.0.1", 5432):
        yield LOCAL_DSN
    else:
        with embedded_server(scratch / "pgdata") as server:
            yield server.get_uri("postgres")


@contextmanager
def reader_role_cleanup(server_dsn: str, role: str = READER_ROLE) -> Iterator[None]:
    """Drop the cluster-wide read-only role after the session, if the session made it.

    init-db creates ``collector_reader`` on the shared server. Another run may
    have made it first, or may use it now: the role is dropped only when it did
    not exist when the session began, and left alone when objects in databases
    other than the session's (already dropped) still depend on it.
    """
    existed = trio_asyncio.run(_role_exists, server_dsn, role)
    try:
        yield
    finally:
        if not existed:
            trio_asyncio.run(_drop_role, server_dsn, role)


async def _role_exists(server_dsn: str, role: str) -> bool:
    async def query() -> bool:
        admin = await asyncpg.connect(server_dsn)
        try:
            found = await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
            return found is not None
        finally:
            await admin.close()

    return bool(await trio_asyncio.aio_as_trio(query)())


async def _drop_role(server_dsn: str, role: str) -> None:
    async def drop() -> None:
        admin = await asyncpg.connect(server_dsn)
        try:
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        except asyncpg.DependentObjectsStillExistError:
            pass  # another run's databases grant to it: theirs to keep
        finally:
            await admin.close()

    await trio_asyncio.aio_as_trio(drop)()


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def server_address(dsn: str) -> tuple[str, int] | str:
    """Host and port of a DSN's server, or the path of its Unix socket."""
    parts = urlsplit(dsn)
    port = parts.port or 5432
    if parts.hostname:
        return parts.hostname, port
    socket_dir = dict(parse_qsl(parts.query)).get("host", "/var/run/postgresql")
    return f"{socket_dir}/.s.PGSQL.{port}"


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def reference_databases(server_dsn: str) -> Iterator[Config]:
    """Create the three reference databases (uniquely named), seeded; drop them after."""
    prefix = f"collector_test_{uuid.uuid4().hex[:8]}"
    config = Config(
        sources=tuple(
            SourceConfig(
                name, with_database(server_dsn, f"{prefix}_{name}"), table, access, ids=ids
            )
            for name, table, access, ids in REFERENCE_SOURCES
        )
    )
    trio_asyncio.run(_init_all, config)
    try:
        yield config
    finally:
        trio_asyncio.run(_drop_all, server_dsn, [s.dsn for s in config.sources])


@contextmanager
def fleet_databases(server_dsn: str, count: int, rows: int = 20) -> Iterator[list[str]]:
    """``count`` throwaway databases, each with a table ``rows_k`` of ``rows`` rows.

    Database ``k`` (from 0) holds the ids ``k * rows + 1`` to ``(k + 1) * rows``, so
    a fan-out over all of them returns ``count * rows`` distinct, ordered ids.
    """
    prefix = f"collector_fleet_{uuid.uuid4().hex[:8]}"
    dsns = [with_database(server_dsn, f"{prefix}_{k}") for k in range(count)]
    trio_asyncio.run(_create_fleet, server_dsn, dsns, rows)
    try:
        yield dsns
    finally:
        trio_asyncio.run(_drop_all, server_dsn, dsns)


async def _create_fleet(server_dsn: str, dsns: list[str], rows: int) -> None:
    async def create() -> None:
        admin = await asyncpg.connect(server_dsn)
        try:
            for k, dsn in enumerate(dsns):
                await admin.execute(f'CREATE DATABASE "{urlsplit(dsn).path.lstrip("/")}"')
                connection = await asyncpg.connect(dsn)
                try:
                    await connection.execute(
                        f"CREATE TABLE rows_{k} (id INT PRIMARY KEY, name VARCHAR(255));"
                        f"INSERT INTO rows_{k} SELECT g, 'Row ' || g"
                        f" FROM generate_series({k * rows + 1}, {(k + 1) * rows}) AS g"
                    )
                finally:
                    await connection.close()
        finally:
            await admin.close()

    await trio_asyncio.aio_as_trio(create)()


async def _init_all(config: Config) -> None:
    for source in config.sources:
        await trio_asyncio.aio_as_trio(init_source)(source)


async def _drop_all(server_dsn: str, dsns: list[str]) -> None:
    async def drop() -> None:
        admin = await asyncpg.connect(server_dsn)
        try:
            for dsn in dsns:
                name = urlsplit(dsn).path.lstrip("/")
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    await trio_asyncio.aio_as_trio(drop)()


def source(config: Config, name: str, **changes: object) -> SourceConfig:
    """A copy of the named reference source, with some fields changed."""
    original = next(s for s in config.sources if s.name == name)
    fields = {
        "name": original.name,
        "dsn": original.dsn,
        "table": original.table,
        "access": original.access,
        "pool_size": original.pool_size,
        "pgbouncer": original.pgbouncer,
        "ids": original.ids,
        "breaker": original.breaker,
    }
    fields.update(changes)
    return SourceConfig(**fields)  # type: ignore[arg-type]


def through_proxy(dsn: str, port: int) -> str:
    """The same DSN, pointed at a proxy on 127.0.0.1:<port> (over TCP)."""
    parts = urlsplit(dsn)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "host"])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class Admin:
    """A plain connection for the tests' own statements (locks, pg_stat_activity)."""

    def __init__(self, bridge: AsyncioBridge, connection: asyncpg.Connection) -> None:
        self.bridge = bridge
        self.connection = connection

    async def fetchval(self, query: str, *args: object) -> object:
        return await self.bridge.run(self.connection.fetchval, query, *args)

    async def execute(self, query: str, *args: object) -> str:
        return await self.bridge.run(self.connection.execute, query, *args)

    async def fill_table(self, table: str, ids: range, name: str = "Row ") -> None:
        """(Re)create ``table`` with a row per id in ``ids``, named ``name`` + id, analysed."""
        await self.execute(
            f"DROP TABLE IF EXISTS {table};"
            f"CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(255));"
            f"INSERT INTO {table} SELECT g, '{name}' || g"
            f" FROM generate_series({ids.start}, {ids.stop - 1}) AS g;"
            f"ANALYZE {table}"
        )

    async def active_queries(self, application_name: str) -> int:
        """Our queries still running (or holding a transaction) in this database.

        Only this database's: other test runs on the same server use the same
        application names for their own sources.
        """
        count = await self.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = $1 AND state <> 'idle' AND datname = current_database()",
            application_name,
        )
        assert isinstance(count, int)
        return count

    async def queries_left(self, application_name: str, within: float = 1.0) -> int:
        """Our queries still running ``within`` seconds from now (0 as soon as none are).

        The server ends an abandoned query a moment after the client gives up on it
        (the cancel request travels on its own connection): a second is the bound
        we promise, not an instant.
        """
        with trio.move_on_after(within):
            while True:  # polling the server: nothing here could signal us
                if not await self.active_queries(application_name):
                    return 0
                await trio.sleep(0.05)
        return await self.active_queries(application_name)


@asynccontextmanager
async def admin(bridge: AsyncioBridge, dsn: str) -> AsyncIterator[Admin]:
    connection = await bridge.run(asyncpg.connect, dsn)
    try:
        yield Admin(bridge, connection)
    finally:
        with trio.CancelScope(shield=True):
            await bridge.run(connection.close)


@asynccontextmanager
async def locked_table(bridge: AsyncioBridge, dsn: str, table: str) -> AsyncIterator[None]:
    """Hold an ACCESS EXCLUSIVE lock on ``table``: every read of it blocks in the server."""
    async with admin(bridge, dsn) as holder:
        await holder.execute("BEGIN")
        await holder.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
        try:
            yield
        finally:
            with trio.CancelScope(shield=True):
                await holder.execute("ROLLBACK")


def proxy_factory(nursery: trio.Nursery) -> ProxyFactory:
    """Makes fault proxies running in ``nursery``: (proxy, DSN through it) for a DSN."""

    async def make(dsn: str) -> tuple[FaultProxy, str]:
        proxy = FaultProxy(server_address(dsn))
        port = await nursery.start(proxy.run)
        return proxy, through_proxy(dsn, port)

    return make


async def create_database(server_dsn: str, database: str, *statements: str) -> None:
    """Create ``database`` and run ``statements`` in it, in turn (asyncio-flavoured)."""
    await _on_server(server_dsn, f'CREATE DATABASE "{database}"')
    connection = await asyncpg.connect(with_database(server_dsn, database))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def drop_database(server_dsn: str, database: str) -> None:
    """Drop ``database`` if it exists, whoever is still connected to it."""
    await _on_server(server_dsn, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


async def _on_server(server_dsn: str, statement: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()
