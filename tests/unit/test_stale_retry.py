"""The one retry rule both access modes share: stale connections and statements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest
from sqlalchemy.exc import DBAPIError

from service.core import Row, SourceError, Window
from service.sources.base import is_stale, once_more_if_stale
from service.sources.bridge import AsyncioBridge
from tests.unit.test_raw_source import FakeConnection, FakePool, make_source


def wrapped(error: BaseException, invalidated: bool = False) -> DBAPIError:
    """An error as the ORM raises it: asyncpg's inside SQLAlchemy's."""
    outer = DBAPIError("SELECT 1", None, error, connection_invalidated=invalidated)
    outer.__cause__ = error
    return outer


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InvalidCachedStatementError("cached statement plan is invalid"),
        asyncpg.exceptions.OutdatedSchemaCacheError("type changed"),
        asyncpg.InterfaceError("cannot call fetch(): the underlying connection is closed"),
        wrapped(asyncpg.InvalidCachedStatementError("cached statement plan is invalid")),
        wrapped(RuntimeError("closed"), invalidated=True),
    ],
    ids=lambda e: type(e).__name__,
)
def test_stale_connections_and_statements_are_recognised(error: BaseException) -> None:
    assert is_stale(error)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.UndefinedTableError('relation "t" does not exist'),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
        ConnectionRefusedError(111, "refused"),
        TimeoutError(),
        wrapped(asyncpg.UndefinedTableError('relation "t" does not exist')),
    ],
    ids=lambda e: type(e).__name__,
)
def test_other_failures_are_not_stale(error: BaseException) -> None:
    assert not is_stale(error)


class Attempts:
    def __init__(self, *errors: Exception | None) -> None:
        self.errors = list(errors)
        self.count = 0

    async def __call__(self) -> str:
        self.count += 1
        error = self.errors[min(self.count, len(self.errors)) - 1]
        if error is not None:
            raise error
        return "rows"


STALE = asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")


@pytest.mark.parametrize(
    ("errors", "attempts", "outcome"),
    [
        ((None,), 1, "rows"),
        ((STALE, None), 2, "rows"),
        ((STALE,), 2, STALE),  # stale every time: the second failure is final
        ((asyncpg.UndefinedTableError("no table"),), 1, asyncpg.UndefinedTableError),
        ((STALE, asyncpg.UndefinedTableError("no table")), 2, asyncpg.UndefinedTableError),
    ],
)
async def test_a_stale_failure_is_retried_once_and_never_more(
    asyncio_bridge: AsyncioBridge,
    errors: tuple[Exception | None, ...],
    attempts: int,
    outcome: object,
) -> None:
    attempt = Attempts(*errors)

    async def run() -> str:
        return await once_more_if_stale(attempt, "source_1")

    if outcome == "rows":
        assert await asyncio_bridge.run(run) == "rows"
    else:
        expected = outcome if isinstance(outcome, type) else type(outcome)
        with pytest.raises(expected):
            await asyncio_bridge.run(run)
    assert attempt.count == attempts


class DyingConnection(FakeConnection):
    """A pooled connection the server ended: the first fetch fails, the pool's next works."""

    def __init__(self, records: Sequence[Any]) -> None:
        super().__init__(records, STALE)
        self.terminated = 0

    def terminate(self) -> None:
        self.terminated += 1
        self.error = None  # the pool reconnects a cut connection on its next checkout


async def test_raw_source_cuts_a_stale_connection_and_answers_from_a_fresh_one(
    asyncio_bridge: AsyncioBridge,
) -> None:
    pool = FakePool()
    pool.connection = connection = DyingConnection([(1, "Test 1")])
    assert await make_source(pool, asyncio_bridge).fetch(Window()) == [Row(1, "Test 1")]
    assert (connection.terminated, len(connection.queries), pool.released) == (1, 2, 2)


async def test_raw_source_keeps_a_connection_after_an_ordinary_error(
    asyncio_bridge: AsyncioBridge,
) -> None:
    pool = FakePool(error=asyncpg.UndefinedTableError('relation "t" does not exist'))
    with pytest.raises(SourceError, match="UndefinedTableError"):
        await make_source(pool, asyncio_bridge).fetch(Window())
    assert len(pool.connection.queries) == 1


def test_mysql_connection_errors_are_stale_and_server_errors_are_not() -> None:
    from asyncmy.errors import InterfaceError, OperationalError, ProgrammingError

    from service.sources.mysql.session import is_stale as mysql_is_stale

    lost = OperationalError(2013, "Lost connection to MySQL server during query")
    gone = OperationalError(2006, "MySQL server has gone away")
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = gone
    assert all(mysql_is_stale(e) for e in (lost, gone, InterfaceError(0, "Not connected"), wrapped))
    refused = OperationalError(2003, "Can't connect to MySQL server")
    missing = ProgrammingError(1146, "Table 'x.y' doesn't exist")
    assert not any(mysql_is_stale(e) for e in (refused, missing, ValueError("x")))
