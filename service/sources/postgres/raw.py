"""A source read with hand-written SQL over pooled asyncpg connections."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg

from service.core import IdRanges, Row, Window
from service.sources.base import (
    DriverLimits,
    DriverSource,
    ReadAhead,
    checked_rows,
    is_stale,
)
from service.sources.bridge import AsyncioBridge
from service.sqlnames import quote_identifier


class RawConnection(Protocol):
    """The part of an asyncpg connection this source uses."""

    async def fetch(
        self,
        query: str,
        *args: object,
        timeout: float | None = None,  # noqa: ASYNC109 (asyncpg's own signature)
    ) -> Sequence[Mapping[str, Any]]:
        """Run a query and return its records."""
        ...

    def terminate(self) -> None:
        """Close the connection at once, without a goodbye to the server."""
        ...


class Acquiring(Protocol):
    """A pending checkout, as asyncpg's ``PoolAcquireContext``.

    Awaited, it lends a connection until ``release``; entered, it gives it back on exit.
    """

    def __await__(self) -> Generator[Any, None, Any]:
        """The borrowed connection, held until ``RawPool.release``."""
        ...

    async def __aenter__(self) -> Any:
        """The borrowed connection, returned on exit."""
        ...

    async def __aexit__(self, *exc: object) -> None:
        """Return the connection to the pool."""
        ...


class RawPool(Protocol):
    """What this source and its streams borrow connections from (a seam for tests).

    The shape of asyncpg's pool; the service passes a database's
    :class:`~service.sources.pool.DatabasePool`.
    """

    def acquire(self, *, timeout: float | None = None) -> Acquiring:
        """Borrow a connection, for a block (``async with``) or until ``release``."""
        ...

    async def release(
        self,
        connection: Any,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (asyncpg's own signature)
    ) -> None:
        """Give back a connection borrowed by awaiting ``acquire``."""
        ...


#: Stand-ins for open window bounds: beyond any INT (or BIGINT) id. ``LIMIT NULL``
#: is PostgreSQL's "no limit", so one prepared statement serves every window.
NO_LOWER_BOUND = -(2**63)
NO_UPPER_BOUND = 2**63 - 1


def select_window_sql(table: str) -> str:
    """The one query a raw source runs: the rows in a window, in id order."""
    return (
        f"SELECT id, name FROM {quote_identifier(table)} "
        "WHERE id > $1::bigint AND id <= $2::bigint ORDER BY id LIMIT $3::bigint"
    )


def lowest_in_sql(table: str) -> str:
    """The lowest id inside any of the ranges given as two arrays of bounds.

    Each range is its own ``min(id)`` over a bounded primary-key range, which
    PostgreSQL answers from the index without reading the rows elsewhere.
    """
    return (
        "SELECT min(found) AS lowest FROM (SELECT "
        f"(SELECT min(id) FROM {quote_identifier(table)} WHERE id BETWEEN g.lo AND g.hi) AS found "
        "FROM unnest($1::bigint[], $2::bigint[]) AS g(lo, hi)) AS per_range"
    )


def window_args(window: Window) -> tuple[int, int, int | None]:
    """The statement's parameters for ``window``."""
    after = NO_LOWER_BOUND if window.after is None else window.after
    until = NO_UPPER_BOUND if window.until is None else window.until
    return after, until, window.limit


class RawSource(DriverSource):
    """Reads every row of one table with plain SQL.

    The query is sent as a prepared statement (asyncpg caches it per connection),
    and every client-side wait has the driver timeout so that an abandoned fetch
    still releases its connection soon after the deadline.
    """

    def __init__(
        self,
        name: str,
        table: str,
        pool: RawPool,
        bridge: AsyncioBridge,
        limits: DriverLimits,
        secrets: tuple[str, ...] = (),
    ) -> None:
        super().__init__(name, bridge, secrets)
        self._query = select_window_sql(table)
        self._lowest_in = lowest_in_sql(table)
        self._pool = pool
        self._limits = limits

    def open_stream(self, window: Window, batch_size: int) -> RawStream:
        """A server-side cursor over ``window`` (opened on the first batch)."""
        cursor = Cursor(self._pool, self._query, self._limits.timeout, window, batch_size)
        return RawStream(self, cursor)

    async def _fetch_on_asyncio(self, window: Window) -> list[Row]:
        return checked_rows(await self._fetch_pooled(self._query, *window_args(window)))

    async def _ping_on_asyncio(self) -> None:
        await self._fetch_pooled("SELECT 1")

    async def _fetch_pooled(self, query: str, *args: object) -> Sequence[Mapping[str, Any]]:
        """Run ``query`` on a pooled connection, cutting it if it turns out stale.

        A cut connection is reopened by the pool on its next checkout, so the
        retry (``once_more_if_stale``) does not meet the same dead session.
        """
        timeout = self._limits.timeout
        async with self._pool.acquire(timeout=timeout) as connection:
            try:
                records: Sequence[Mapping[str, Any]] = await connection.fetch(
                    query, *args, timeout=timeout
                )
            except Exception as exc:
                if is_stale(exc):
                    # A connection that is closed already went back to the pool
                    # by itself, and its proxy refuses every call.
                    with contextlib.suppress(asyncpg.InterfaceError):
                        connection.terminate()
                raise
            return records

    async def _lowest_in_on_asyncio(self, ranges: IdRanges) -> int | None:
        lows, highs = [first for first, _ in ranges], [last for _, last in ranges]
        records = await self._fetch_pooled(self._lowest_in, lows, highs)
        found = records[0]["lowest"] if records else None
        return None if found is None else int(found)


@dataclass(frozen=True, slots=True)
class Cursor:
    """What a stream opens: the source's pool and query, its driver timeout, the window."""

    pool: RawPool
    query: str
    timeout: float
    window: Window
    batch_size: int


class RawStream:
    """A server-side cursor on one pooled connection, read a batch per call.

    The connection stays checked out, inside a read-only transaction, until
    ``close``. A batch that failed or was abandoned leaves the connection in an
    unknown state, so it is then cut rather than returned to the pool as is.
    """

    def __init__(self, source: DriverSource, cursor: Cursor) -> None:
        self._source = source
        self._spec = cursor
        self._connection: Any = None
        self._transaction: Any = None
        self._cursor: Any = None
        self._read_ahead: ReadAhead | None = None
        self._clean = True

    async def next_batch(self) -> list[Row]:
        """The next rows, in id order; empty at the end (Trio-flavoured)."""
        self._clean = False
        rows = await self._source.run(self._next_on_asyncio)
        self._clean = True
        return rows

    def close(self) -> None:
        """End the transaction and return (or cut) the connection, in the background."""
        if self._read_ahead is not None and self._read_ahead.cancel():
            self._clean = False  # a fetch was in flight on the connection
        if self._connection is not None:
            self._source.spawn(self._close_on_asyncio, self._connection, self._clean)
            self._connection = None

    async def _next_on_asyncio(self) -> list[Row]:
        spec = self._spec
        if self._cursor is None:
            self._connection = await spec.pool.acquire(timeout=spec.timeout)
            self._transaction = self._connection.transaction(readonly=True)
            await self._transaction.start()
            self._cursor = await self._connection.cursor(
                spec.query, *window_args(spec.window), timeout=spec.timeout
            )
            self._read_ahead = ReadAhead(self._fetch_batch, spec.batch_size)
        assert self._read_ahead is not None
        return await self._read_ahead.next()

    async def _fetch_batch(self) -> list[Row]:
        spec = self._spec
        return checked_rows(await self._cursor.fetch(spec.batch_size, timeout=spec.timeout))

    async def _close_on_asyncio(self, connection: Any, clean: bool) -> None:
        timeout = self._spec.timeout
        if clean:
            try:
                await asyncio.wait_for(self._transaction.rollback(), timeout)
            except (Exception, asyncio.CancelledError):
                connection.terminate()
        else:
            connection.terminate()
        await self._spec.pool.release(connection, timeout=timeout)
