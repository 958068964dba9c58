"""What both MySQL access modes share: connecting, the session's limits, KILL QUERY, staleness.

A source's session is bounded on both sides of the wire, as PostgreSQL's is:

- the client side: every driver wait is cut at ``DriverLimits.timeout`` (just below
  the deadline) by ``bounded``, and the driver's own connect timeout sits at the
  deadline itself as a backstop (``read_timeout`` is left unset: when set, asyncmy
  wraps every packet read in ``wait_for``, a task per read, off its fast path);
- the server side: the engine's statement time limit is the deadline
  (``max_statement_time`` in seconds on MariaDB, ``max_execution_time`` in
  milliseconds on MySQL), and ``lock_wait_timeout`` bounds waits on a metadata
  lock (``LOCK TABLES ... WRITE`` held by another session) on either engine;
- an abandoned query is stopped at once: its connection is closed and a
  ``KILL QUERY`` is sent on a separate connection, because a server thread that
  waits on a lock does not notice that its client went away.

Sessions are read-only (``SET SESSION TRANSACTION READ ONLY``): even an account
that may write cannot, through the collector.
"""

from __future__ import annotations

import asyncio
import logging
import math
import weakref
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncmy
from asyncmy.errors import InterfaceError, OperationalError

from service.sources.base import DriverLimits
from service.sources.mysql.dsn import connect_kwargs

#: Seconds after which a pooled MySQL connection is replaced on its next checkout.
RECYCLE_AFTER = 300

T = TypeVar("T")
log = logging.getLogger("collector.sources")

#: Client error numbers for a connection that died under us (server gone away, lost
#: during a query, lost at handshake, forcing close): a fresh one may well work.
_STALE_ERRNOS = frozenset({2006, 2013, 2055})
#: Error numbers below this are reported by the server; the connection is still sound.
_FIRST_CLIENT_ERRNO = 2000


@dataclass(frozen=True, slots=True)
class SessionSpec:
    """How one source connects and sets up each new session."""

    connect: dict[str, Any]
    """``asyncmy.connect`` keyword arguments (from the DSN, with the timeouts)."""
    limits: DriverLimits

    @classmethod
    def for_dsn(cls, dsn: str, limits: DriverLimits) -> SessionSpec:
        """The driver's arguments for ``dsn``; its connect timeout at the deadline as a backstop."""
        kwargs = {
            **connect_kwargs(dsn),
            "connect_timeout": limits.statement_timeout_ms / 1000,
            "autocommit": True,
            "program_name": limits.application_name,
        }
        return cls(kwargs, limits)

    def settings(self, server_info: str) -> list[str]:
        """The statements that limit and fence a new session on this server."""
        deadline_ms = self.limits.statement_timeout_ms
        if "mariadb" in server_info.lower():
            limit = f"max_statement_time = {deadline_ms / 1000:.3f}"
        else:
            limit = f"max_execution_time = {deadline_ms}"
        lock_wait = max(1, math.ceil(deadline_ms / 1000))
        return [
            f"SET SESSION {limit}, SESSION lock_wait_timeout = {lock_wait}",
            "SET SESSION TRANSACTION READ ONLY",
        ]

    async def connect_session(self) -> asyncmy.Connection:
        """A new connection with the session's limits set (asyncio-flavoured)."""
        connection = await asyncmy.connect(**self.connect)
        try:
            await self.prepare(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    async def prepare(self, connection: asyncmy.Connection) -> None:
        """Apply ``settings`` to a connection the pool made."""
        async with connection.cursor() as cursor:
            for statement in self.settings(connection.get_server_info()):
                await cursor.execute(statement)


class Prepared:
    """Remembers which pooled connections already have the session's settings.

    asyncmy's pool opens connections itself, with no hook; the settings are applied
    at a connection's first checkout instead (a set lookup on every later one).
    """

    def __init__(self, spec: SessionSpec) -> None:
        self._spec = spec
        self._done: weakref.WeakSet[Any] = weakref.WeakSet()

    async def ensure(self, connection: Any) -> None:
        """Set the session up unless this connection was set up before."""
        if connection not in self._done:
            await self._spec.prepare(connection)
            self._done.add(connection)


async def bounded(spec: SessionSpec, work: Awaitable[T]) -> T:
    """``work`` cut at the driver timeout: TimeoutError, which the core reports as ``timeout``.

    A timer on the running task (``asyncio.timeout``), not ``wait_for``'s extra task: on
    the drivers' trio-asyncio loop every task step costs a scheduler pass.
    """
    async with asyncio.timeout(spec.limits.timeout):
        return await work


def server_reported(exc: BaseException) -> bool:
    """Whether the server sent this error (the connection is still usable), else the client."""
    errno = exc.args[0] if isinstance(exc, asyncmy.errors.MySQLError) and exc.args else None
    return isinstance(errno, int) and 0 < errno < _FIRST_CLIENT_ERRNO


async def kill_query(spec: SessionSpec, thread_id: int) -> None:
    """Stop our abandoned query in the server, on a connection of its own.

    Any account may kill its own threads, so the read-only user suffices. Bounded
    by the driver timeout: against a dead server this gives up like everything else.
    """

    async def kill() -> None:
        connection = await asyncmy.connect(**spec.connect)
        try:
            async with connection.cursor() as cursor:
                await cursor.execute(f"KILL QUERY {int(thread_id)}")
        finally:
            connection.close()

    try:
        await bounded(spec, kill())
    except (OSError, TimeoutError, asyncmy.errors.MySQLError) as exc:
        # 1094 "unknown thread id": the query and its session had already ended.
        log.info("KILL QUERY %d not sent: %s: %s", thread_id, type(exc).__name__, exc)


def is_stale(exc: BaseException) -> bool:
    """Whether ``exc`` says a pooled connection died while the server itself may be fine.

    asyncmy raises the client error as is; the ORM wraps it (``orig``, the cause
    chain) and marks disconnects with ``connection_invalidated``.
    """
    current: BaseException | None = exc
    for _ in range(8):  # the chains are short; the bound guards against cycles
        if current is None:
            return False
        if getattr(current, "connection_invalidated", False):
            return True
        if (
            isinstance(current, OperationalError)
            and current.args[:1]
            and (current.args[0] in _STALE_ERRNOS)
        ):
            return True
        if isinstance(current, InterfaceError):
            return True
        current = getattr(current, "orig", None) or current.__cause__
    return False
