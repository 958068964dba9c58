from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from service.core import Row, SourceError, Window
from service.sources.base import DriverLimits
from service.sources.bridge import AsyncioBridge
from service.sources.postgres.raw import (
    NO_LOWER_BOUND,
    NO_UPPER_BOUND,
    RawSource,
    select_window_sql,
)

LIMITS = DriverLimits.for_source("source_1", 2.0)


class FakeConnection:
    def __init__(self, records: Sequence[Any], error: Exception | None) -> None:
        self.records = records
        self.error = error
        self.queries: list[tuple[str, tuple[object, ...], float | None]] = []

    async def fetch(self, query: str, *args: object, timeout: float | None = None) -> Sequence[Any]:
        self.queries.append((query, args, timeout))
        if self.error is not None:
            raise self.error
        return self.records


class FakePool:
    """Stands in for asyncpg.Pool: hands out one fake connection, records timeouts."""

    def __init__(self, records: Sequence[Any] = (), error: Exception | None = None) -> None:
        self.connection = FakeConnection(records, error)
        self.acquire_timeouts: list[float | None] = []
        self.released = 0

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[FakeConnection]:
        try:
            yield self.connection
        finally:
            self.released += 1

    def acquire(self, *, timeout: float | None = None) -> Any:
        self.acquire_timeouts.append(timeout)
        return self._acquire()


def make_source(pool: FakePool, bridge: AsyncioBridge, table: str = "data_1") -> RawSource:
    return RawSource("source_1", table, pool, bridge, LIMITS)


async def test_raw_source_reads_rows_with_one_ordered_select(
    asyncio_bridge: AsyncioBridge,
) -> None:
    pool = FakePool([(1, "Test 1"), (31, None)])  # asyncpg Records iterate like tuples
    rows = await make_source(pool, asyncio_bridge).fetch(Window())
    assert rows == [Row(1, "Test 1"), Row(31, None)]
    assert pool.connection.queries == [
        (
            'SELECT id, name FROM "data_1" WHERE id > $1::bigint AND id <= $2::bigint '
            "ORDER BY id LIMIT $3::bigint",
            (NO_LOWER_BOUND, NO_UPPER_BOUND, None),
            LIMITS.timeout,
        )
    ]
    assert pool.released == 1


async def test_raw_source_pushes_the_window_down_as_parameters(
    asyncio_bridge: AsyncioBridge,
) -> None:
    pool = FakePool([])
    await make_source(pool, asyncio_bridge).fetch(Window(after=40, until=50, limit=7))
    assert pool.connection.queries[0][1] == (40, 50, 7)


async def test_raw_source_bounds_every_driver_wait_below_the_deadline(
    asyncio_bridge: AsyncioBridge,
) -> None:
    pool = FakePool([])
    await make_source(pool, asyncio_bridge).fetch(Window())
    assert pool.acquire_timeouts == [LIMITS.timeout]
    assert 0 < LIMITS.timeout < 2.0


async def test_raw_source_returns_the_connection_when_the_query_fails(
    asyncio_bridge: AsyncioBridge,
) -> None:
    pool = FakePool(error=asyncpg.UndefinedTableError('relation "data_1" does not exist'))
    with pytest.raises(SourceError, match=r'^UndefinedTableError: relation "data_1" does not'):
        await make_source(pool, asyncio_bridge).fetch(Window())
    assert pool.released == 1


async def test_raw_source_never_reports_its_password(asyncio_bridge: AsyncioBridge) -> None:
    pool = FakePool(error=ValueError("cannot parse postgresql://app:hunter2@db/x"))
    source = RawSource("source_1", "data_1", pool, asyncio_bridge, LIMITS, ("hunter2",))
    with pytest.raises(SourceError) as caught:
        await source.fetch(Window())
    assert str(caught.value) == "ValueError: cannot parse postgresql://app:***@db/x"


async def test_driver_timeout_reaches_the_core_as_a_timeout(
    asyncio_bridge: AsyncioBridge,
) -> None:
    with pytest.raises(TimeoutError):
        await make_source(FakePool(error=TimeoutError()), asyncio_bridge).fetch(Window())


async def test_ping_runs_a_trivial_query(asyncio_bridge: AsyncioBridge) -> None:
    pool = FakePool([(1,)])
    await make_source(pool, asyncio_bridge).ping()
    assert pool.connection.queries == [("SELECT 1", (), LIMITS.timeout)]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ((1, "x"), None),
        (("1", "x"), "id must be an integer, got str"),
        ((True, "x"), "id must be an integer, got bool"),
        ((1, 5), "name must be text or NULL, got int"),
    ],
)
async def test_raw_source_refuses_rows_of_the_wrong_shape(
    asyncio_bridge: AsyncioBridge, record: tuple[object, object], message: str | None
) -> None:
    source = make_source(FakePool([(0, "fine"), record]), asyncio_bridge)
    if message is None:
        assert (await source.fetch(Window()))[1] == Row(1, "x")
        return
    with pytest.raises(SourceError, match=f"^SourceDataError: {message}"):
        await source.fetch(Window())


def test_table_name_is_quoted_as_an_identifier() -> None:
    assert select_window_sql('we"ird').startswith('SELECT id, name FROM "we""ird" WHERE')


def test_driver_limits_sit_just_below_the_deadline() -> None:
    limits = DriverLimits.for_source("s", 2.0)
    assert limits.timeout == pytest.approx(1.95)
    assert limits.statement_timeout_ms == 2000
    assert DriverLimits.for_source("s", 0.1).timeout == pytest.approx(0.09)
    assert limits.server_settings() == {
        "application_name": "collector:s",
        "statement_timeout": "2000",
        "default_transaction_read_only": "on",
        "client_connection_check_interval": "100",
    }
