"""A MariaDB/MySQL source read with hand-written SQL over an asyncmy connection pool.

asyncmy rather than aiomysql, by measurement (``bench/mysql_drivers.py``, plain
asyncio, one read = checkout, select, rows checked, return): 42-56 against 145-174 us
of CPU for 20 rows and about 445 against 3200 us for 1000; its protocol is compiled,
where aiomysql's (PyMySQL's) is pure Python.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncmy
from asyncmy.cursors import SSCursor

from service.core import IdRanges, Row, Window
from service.sources.base import (
    DriverLimits,
    DriverSource,
    ReadAhead,
    checked_rows,
)
from service.sources.bridge import AsyncioBridge
from service.sources.mysql.session import (
    RECYCLE_AFTER,
    Prepared,
    SessionSpec,
    bounded,
    is_stale,
    kill_query,
    server_reported,
)

#: Stand-ins for open window bounds and "no limit" (MySQL has no ``LIMIT NULL``).
NO_LOWER_BOUND = -(2**63)
NO_UPPER_BOUND = 2**63 - 1
NO_LIMIT = 2**64 - 1


def quote_identifier(name: str) -> str:
    """A MySQL identifier in backticks (names are validated by the config as well)."""
    return "`" + name.replace("`", "``") + "`"


def select_window_sql(table: str) -> str:
    """The rows of a window, in id order (the driver quotes the ``%s`` values)."""
    return (
        f"SELECT id, name FROM {quote_identifier(table)} "
        "WHERE id > %s AND id <= %s ORDER BY id LIMIT %s"
    )


def lowest_in_sql(table: str, count: int) -> str:
    """The lowest id inside any of ``count`` ranges: one primary-key ``MIN`` probe per range."""
    probe = f"SELECT (SELECT MIN(id) FROM {quote_identifier(table)} WHERE id BETWEEN %s AND %s)"
    return (
        "SELECT MIN(found) FROM ("
        + " UNION ALL ".join(f"{probe} AS found" for _ in range(count))
        + ") AS per_range"
    )


def window_args(window: Window) -> tuple[int, int, int]:
    """The statement's parameters for ``window``."""
    after = NO_LOWER_BOUND if window.after is None else window.after
    until = NO_UPPER_BOUND if window.until is None else window.until
    return after, until, NO_LIMIT if window.limit is None else window.limit


class Checkout:
    """Borrows pooled connections with the session set up, and knows how to drop one.

    A connection whose query failed on the client side or was abandoned is in an
    unknown state: it is closed (the pool then forgets it) and, if the query may
    still be running, stopped in the server with ``KILL QUERY``.
    """

    def __init__(self, pool: Any, spec: SessionSpec, source: DriverSource) -> None:
        self.pool = pool
        self.spec = spec
        self._prepared = Prepared(spec)
        self._source = source

    async def take(self) -> Any:
        """A connection from the pool, its session limited and read-only."""
        connection = await self.pool.acquire()
        try:
            await self._prepared.ensure(connection)
        except BaseException:
            connection.close()
            self.pool.release(connection)
            raise
        return connection

    def drop(self, connection: Any, exc: BaseException | None) -> None:
        """Close a connection whose state is unknown; kill its query if it was abandoned."""
        if exc is not None and server_reported(exc):
            return  # the server answered with an error: the session is fine
        thread_id = connection.thread_id()
        connection.close()
        if exc is None or isinstance(exc, asyncio.CancelledError | TimeoutError):
            self._source.spawn(kill_query, self.spec, thread_id)


class MySqlRawSource(DriverSource):
    """Reads every row of one table with plain SQL on MariaDB or MySQL."""

    def __init__(
        self,
        name: str,
        table: str,
        pool: Any,
        spec: SessionSpec,
        bridge: AsyncioBridge,
        secrets: tuple[str, ...] = (),
    ) -> None:
        super().__init__(name, bridge, secrets, stale=is_stale)
        self._table = table
        self._query = select_window_sql(table)
        self._checkout = Checkout(pool, spec, self)

    def open_stream(self, window: Window, batch_size: int) -> MySqlRawStream:
        """An unbuffered (server-side) cursor over ``window``, opened on the first batch."""
        return MySqlRawStream(self, self._checkout, self._query, window, batch_size)

    async def _fetch_on_asyncio(self, window: Window) -> list[Row]:
        return checked_rows(await self._fetch(self._query, window_args(window)))

    async def _ping_on_asyncio(self) -> None:
        await self._fetch("SELECT 1", ())

    async def _lowest_in_on_asyncio(self, ranges: IdRanges) -> int | None:
        bounds = tuple(bound for pair in ranges for bound in pair)
        records = await self._fetch(lowest_in_sql(self._table, len(ranges)), bounds)
        found = records[0][0] if records else None
        return None if found is None else int(found)

    async def _fetch(self, query: str, args: tuple[Any, ...]) -> Sequence[Any]:
        return await bounded(self._checkout.spec, self._fetch_unbounded(query, args))

    async def _fetch_unbounded(self, query: str, args: tuple[Any, ...]) -> Sequence[Any]:
        connection = await self._checkout.take()
        try:
            async with connection.cursor() as cursor:
                await cursor.execute(query, args)
                records: Sequence[Any] = await cursor.fetchall()
        except BaseException as exc:
            self._checkout.drop(connection, exc)
            raise
        finally:
            self._checkout.pool.release(connection)
        return records


async def create_pool(dsn: str, size: int, limits: DriverLimits) -> tuple[Any, SessionSpec]:
    """An asyncmy pool that opens no connection up front, and the session spec it uses."""
    spec = SessionSpec.for_dsn(dsn, limits)
    pool = await asyncmy.create_pool(
        minsize=0, maxsize=size, pool_recycle=RECYCLE_AFTER, **spec.connect
    )
    return pool, spec


async def close_pool(pool: Any) -> None:
    """Close the pool's connections at shutdown (asyncio-flavoured)."""
    pool.close()
    await pool.wait_closed()


class MySqlRawStream:
    """An unbuffered cursor (``SSCursor``) on one pooled connection, read a batch per call.

    The server streams the result as the client reads it, so the connection is held
    until ``close``. Only a stream read to its end goes back to the pool; one closed
    early still has rows on the wire, so its connection is closed and its query killed.
    """

    def __init__(
        self,
        source: DriverSource,
        checkout: Checkout,
        query: str,
        window: Window,
        batch_size: int,
    ) -> None:
        self._source = source
        self._checkout = checkout
        self._query = query
        self._window = window
        self._batch_size = batch_size
        self._connection: Any = None
        self._cursor: Any = None
        self._read_ahead: ReadAhead | None = None
        self._finished = False

    async def next_batch(self) -> list[Row]:
        """The next rows, in id order; empty at the end (Trio-flavoured)."""
        return await self._source.run(self._next_on_asyncio)

    def close(self) -> None:
        """Return (or drop) the connection in the background."""
        busy = self._read_ahead is not None and self._read_ahead.cancel()
        if self._connection is not None:
            finished = self._finished and not busy
            self._source.spawn(self._close_on_asyncio, self._connection, self._cursor, finished)
            self._connection = self._cursor = None

    async def _next_on_asyncio(self) -> list[Row]:
        if self._cursor is None:
            await bounded(self._checkout.spec, self._open())
        assert self._read_ahead is not None
        rows = await self._read_ahead.next()
        self._finished = len(rows) < self._batch_size
        return rows

    async def _open(self) -> None:
        self._connection = await self._checkout.take()
        self._cursor = self._connection.cursor(SSCursor)
        await self._cursor.execute(self._query, window_args(self._window))
        self._read_ahead = ReadAhead(self._fetch_batch, self._batch_size)

    async def _fetch_batch(self) -> list[Row]:
        batch = self._cursor.fetchmany(self._batch_size)
        return checked_rows(await bounded(self._checkout.spec, batch))

    async def _close_on_asyncio(self, connection: Any, cursor: Any, finished: bool) -> None:
        try:
            if not finished:
                self._checkout.drop(connection, None)
            elif cursor is not None:
                await bounded(self._checkout.spec, cursor.close())
        except BaseException:
            self._checkout.drop(connection, None)
            raise
        finally:
            self._checkout.pool.release(connection)
