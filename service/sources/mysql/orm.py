"""A MariaDB/MySQL source read through the SQLAlchemy ORM (AsyncSession over mysql+asyncmy).

The mapped class, window and ids-check statements are the engine-neutral ones of the
PostgreSQL ORM source; what differs is the session: its limits, read-only fence and
KILL QUERY on abandonment (:mod:`service.sources.mysql.session`).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import Executable, Result, Select, event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from service.core import Row, Window
from service.sources.base import (
    DriverSource,
    ReadAhead,
    checked_rows,
)
from service.sources.bridge import AsyncioBridge
from service.sources.mysql.session import (
    RECYCLE_AFTER,
    SessionSpec,
    bounded,
    is_stale,
    kill_query,
)
from service.sources.postgres.orm import MappedTableSource

#: Makes a new session (an ``async_sessionmaker``); a session is its own context manager.
SessionFactory = Callable[[], AsyncSession]


#: The server thread each asyncio task's latest ORM statement ran on (see ``note_thread``).
_THREADS: weakref.WeakKeyDictionary[asyncio.Task[Any], int] = weakref.WeakKeyDictionary()


def note_thread(conn: Any, cursor: Any, *_: Any) -> None:
    """Remember, for the running task, which server thread its statement is sent to.

    A ``before_cursor_execute`` hook: it runs inside SQLAlchemy's greenlet but in the
    task that awaits the statement, so the task can find the thread to kill when it is
    cancelled, after SQLAlchemy has already let go of the connection. Asking the
    session for its connection before each statement instead cost 10-20% of a read.
    """
    task = asyncio.current_task()
    if task is not None:
        _THREADS[task] = int(conn.connection.driver_connection.thread_id())


def abandoned_thread() -> int | None:
    """The server thread of the running task's latest statement, forgotten once read."""
    task = asyncio.current_task()
    return None if task is None else _THREADS.pop(task, None)


class MySqlOrmSource(MappedTableSource):
    """Reads one table through the ORM: a select of the mapped columns, in an AsyncSession."""

    def __init__(
        self,
        name: str,
        table: str,
        sessions: SessionFactory,
        spec: SessionSpec,
        bridge: AsyncioBridge,
        secrets: tuple[str, ...] = (),
    ) -> None:
        super().__init__(name, table, sessions, bridge, secrets, stale=is_stale)
        self._spec = spec

    def open_stream(self, window: Window, batch_size: int) -> MySqlOrmStream:
        """The ORM query over ``window`` on an unbuffered cursor (started on the first batch)."""
        return MySqlOrmStream(self, self._sessions, self._spec, self._statement(window), batch_size)

    async def _execute(self, statement: Executable) -> Result[Any]:
        return await bounded(self._spec, self._execute_unbounded(statement))

    async def _execute_unbounded(self, statement: Executable) -> Result[Any]:
        """Execute in a new session; an abandoned query is killed, a stale connection replaced.

        SQLAlchemy invalidates the connection of a cancelled execute by itself (a
        cancellation is an exit exception to it); the query's thread is killed here.
        """
        async with self._sessions() as session:
            try:
                return await session.execute(statement)
            except asyncio.CancelledError:
                if (thread_id := abandoned_thread()) is not None:
                    self.spawn(kill_query, self._spec, thread_id)
                raise
            except Exception as exc:
                if is_stale(exc):
                    await session.invalidate()
                raise


def create_engine(spec: SessionSpec, size: int) -> AsyncEngine:
    """An async engine on asyncmy whose connections carry the session's limits.

    Connections are made by ``SessionSpec.connect_session``, exactly as a raw
    source's are set up, so both access modes have the same limits and fence.
    They are opened lazily: a source that is down at start-up does not delay the service.
    """
    engine = create_async_engine(
        "mysql+asyncmy://",
        async_creator=spec.connect_session,
        # Each fetch is one SELECT, in autocommit; MySQL's dialect would still send a
        # ROLLBACK when the session closes (a round trip per read, measured: a third of
        # its CPU) unless told that autocommit has nothing to roll back.
        isolation_level="AUTOCOMMIT",
        skip_autocommit_rollback=True,
        pool_reset_on_return=None,
        pool_size=size,
        max_overflow=0,
        pool_timeout=spec.limits.timeout,
        pool_recycle=RECYCLE_AFTER,
    )
    event.listen(engine.sync_engine, "before_cursor_execute", note_thread)
    return engine


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that never expire loaded objects (no lazy loads after commit)."""
    return async_sessionmaker(engine, expire_on_commit=False)


class MySqlOrmStream:
    """The ORM statement streamed through an unbuffered cursor, read by batches.

    As for PostgreSQL, rows are read from the session's connection (``stream`` with
    ``yield_per``: SQLAlchemy's server-side cursor, asyncmy's ``SSCursor``), not
    through the ORM's per-row loading. A stream closed before its end still has rows
    on the wire: its connection is invalidated rather than drained, and its query killed.
    """

    def __init__(
        self,
        source: DriverSource,
        sessions: SessionFactory,
        spec: SessionSpec,
        statement: Select[int, str | None],
        batch_size: int,
    ) -> None:
        self._source = source
        self._sessions = sessions
        self._spec = spec
        self._statement = statement
        self._batch_size = batch_size
        self._session: AsyncSession | None = None
        self._thread_id: int | None = None
        self._result: Any = None
        self._read_ahead: ReadAhead | None = None
        self._finished = False

    async def next_batch(self) -> list[Row]:
        """The next rows, in id order; empty at the end (Trio-flavoured)."""
        return await self._source.run(self._next_on_asyncio)

    def close(self) -> None:
        """Close the result and the session in the background."""
        busy = self._read_ahead is not None and self._read_ahead.cancel()
        if self._session is not None:
            finished = self._finished and not busy
            self._source.spawn(
                self._close_on_asyncio, self._session, self._result, self._thread_id, finished
            )
            self._session = self._result = None

    async def _next_on_asyncio(self) -> list[Row]:
        if self._session is None:
            self._session = self._sessions()
            await bounded(self._spec, self._open(self._session))
        assert self._read_ahead is not None
        rows = await self._read_ahead.next()
        self._finished = len(rows) < self._batch_size
        return rows

    async def _open(self, session: AsyncSession) -> None:
        connection = await session.connection()
        try:
            self._result = await connection.stream(
                self._statement.execution_options(yield_per=self._batch_size)
            )
        finally:
            self._thread_id = abandoned_thread()
        self._read_ahead = ReadAhead(self._fetch_batch, self._batch_size)

    async def _fetch_batch(self) -> list[Row]:
        return checked_rows(await bounded(self._spec, self._result.fetchmany(self._batch_size)))

    async def _close_on_asyncio(
        self, session: AsyncSession, result: Any, thread_id: int | None, finished: bool
    ) -> None:
        if finished and result is not None:
            try:
                await bounded(self._spec, result.close())
            except BaseException:
                finished = False
        if not finished:
            await bounded(self._spec, session.invalidate())
            if thread_id is not None:
                await kill_query(self._spec, thread_id)
        await bounded(self._spec, session.close())
