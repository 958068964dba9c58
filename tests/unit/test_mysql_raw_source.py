"""The MySQL raw source over a fake asyncmy pool: what happens to a connection after a failure.

A server error leaves the session usable; a client error leaves it in an unknown state
(closed); an abandoned query is closed and killed in the server. Real asyncmy and
MariaDB are exercised in tests/integration/test_sources_against_mariadb.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from asyncmy.errors import OperationalError, ProgrammingError

from service.core import Row, SourceError, Window
from service.sources.base import DriverLimits
from service.sources.bridge import AsyncioBridge
from service.sources.mysql.raw import MySqlRawSource, lowest_in_sql, select_window_sql
from service.sources.mysql.session import SessionSpec


class FakeCursor:
    def __init__(self, connection: FakeConnection) -> None:
        self.connection = connection

    async def __aenter__(self) -> FakeCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def execute(self, query: str, args: object = None) -> int:
        self.connection.queries.append((query, args))
        if not query.startswith("SET"):
            await self.connection.behaviour()
        return 0

    async def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self.connection.records)


class FakeConnection:
    def __init__(self, behaviour: Callable[[], Awaitable[None]]) -> None:
        self.behaviour = behaviour
        self.records: list[tuple[Any, ...]] = [(1, "Test 1"), (2, None)]
        self.queries: list[tuple[str, object]] = []
        self.closed = False

    def cursor(self, *_: object) -> FakeCursor:
        return FakeCursor(self)

    def get_server_info(self) -> str:
        return "10.11.19-MariaDB"

    def thread_id(self) -> int:
        return 42

    def close(self) -> None:
        self.closed = True


class FakePool:
    def __init__(self, connection: FakeConnection) -> None:
        self.connection = connection
        self.released: list[FakeConnection] = []

    async def acquire(self) -> FakeConnection:
        return self.connection

    def release(self, connection: FakeConnection) -> None:
        self.released.append(connection)


async def answer() -> None:
    return None


def make(
    bridge: AsyncioBridge, behaviour: Callable[[], Awaitable[None]] = answer, deadline: float = 2.0
) -> tuple[MySqlRawSource, FakeConnection, FakePool, list[object]]:
    connection = FakeConnection(behaviour)
    pool = FakePool(connection)
    limits = DriverLimits.for_source("s", deadline)
    spec = SessionSpec.for_dsn("mysql://u:hunter2@h/db", limits)
    source = MySqlRawSource("s", "data_1", pool, spec, bridge, ("hunter2",))
    spawned: list[object] = []
    source.spawn = lambda fn, *args: spawned.append((fn.__name__, *args))  # type: ignore[method-assign]
    return source, connection, pool, spawned


async def test_rows_come_from_one_window_select_on_a_limited_read_only_session(
    asyncio_bridge: AsyncioBridge,
) -> None:
    source, connection, pool, spawned = make(asyncio_bridge)
    assert await source.fetch(Window(after=5, until=9, limit=3)) == [Row(1, "Test 1"), Row(2, None)]
    await source.fetch(Window())
    settings = [q for q, _ in connection.queries if q.startswith("SET")]
    assert settings == [  # once per connection, not per checkout
        "SET SESSION max_statement_time = 2.000, SESSION lock_wait_timeout = 2",
        "SET SESSION TRANSACTION READ ONLY",
    ]
    selects = [args for q, args in connection.queries if q == select_window_sql("data_1")]
    assert selects == [(5, 9, 3), (-(2**63), 2**63 - 1, 2**64 - 1)]
    assert pool.released == [connection, connection]
    assert not connection.closed
    assert spawned == []


async def test_a_server_error_keeps_the_connection(asyncio_bridge: AsyncioBridge) -> None:
    async def missing() -> None:
        raise ProgrammingError(1146, "Table 'db.data_1' doesn't exist")

    source, connection, pool, spawned = make(asyncio_bridge, missing)
    with pytest.raises(SourceError, match="1146"):
        await source.fetch(Window())
    assert (connection.closed, pool.released, spawned) == (False, [connection], [])


async def test_a_lost_connection_is_closed_and_retried_once(asyncio_bridge: AsyncioBridge) -> None:
    async def lost() -> None:
        raise OperationalError(2013, "Lost connection to server during query (u:hunter2)")

    source, connection, pool, spawned = make(asyncio_bridge, lost)
    with pytest.raises(SourceError) as caught:
        await source.fetch(Window())
    assert "hunter2" not in str(caught.value)
    assert connection.closed
    assert pool.released == [connection, connection]  # the retry, then the report
    assert spawned == []  # nothing is left running in the server to kill


async def test_an_abandoned_query_is_closed_and_killed_in_the_server(
    asyncio_bridge: AsyncioBridge,
) -> None:
    async def hang() -> None:
        await asyncio.sleep(3600)

    source, connection, pool, spawned = make(asyncio_bridge, hang, deadline=0.01)
    with pytest.raises(TimeoutError):  # the driver-timeout cut, just below the deadline
        await source.fetch(Window())
    assert connection.closed
    assert pool.released == [connection]
    assert [name for name, *_ in spawned] == ["kill_query"]
    assert spawned[0][2] == 42  # type: ignore[index]


async def test_a_query_cancelled_from_outside_is_killed_too(asyncio_bridge: AsyncioBridge) -> None:
    async def hang() -> None:
        await asyncio.sleep(3600)

    source, connection, _, spawned = make(asyncio_bridge, hang)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source.fetch, Window())
        await trio.testing.wait_all_tasks_blocked()  # the query now waits in the server
        nursery.cancel_scope.cancel()  # the client left
    await trio.testing.wait_all_tasks_blocked()  # the asyncio side has seen the cancel
    assert connection.closed
    assert [name for name, *_ in spawned] == ["kill_query"]


def test_the_ids_check_is_one_primary_key_probe_per_range() -> None:
    sql = lowest_in_sql("data_1", 2)
    assert sql.count("SELECT MIN(id) FROM `data_1` WHERE id BETWEEN %s AND %s") == 2
    assert sql.startswith("SELECT MIN(found) FROM (")
    assert " UNION ALL " in sql
