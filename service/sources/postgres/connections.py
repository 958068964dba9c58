"""PostgreSQL connections as the pools lend them: how they are opened, and given back.

Both access modes draw from one :class:`~service.sources.pool.DatabasePool` per
database, so sources on one database (tenants as tables) share its connections,
raw and ORM alike, and every database on a server shares that server's budget.

Behind PgBouncer in transaction mode (``pgbouncer = true``) two things a direct
connection relies on are unavailable: consecutive statements may run on different
server connections, so no prepared statement may be cached; and PgBouncer refuses
(or, if told to ignore them, drops) startup parameters other than a few, so the
session settings cannot be sent. ``application_name`` is one PgBouncer passes on.
The statement time limit and read-only sessions then come from the role on the
server (``ALTER ROLE ... SET statement_timeout``, see roles.sql), and an abandoned
query is still cancelled: asyncpg's cancel request goes through PgBouncer, which
forwards it to the server connection that runs the query.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

from service.sources.base import DriverLimits
from service.sources.pool import DatabasePool

#: The port a PostgreSQL DSN means when it names none.
DEFAULT_PORT = 5432


class LentConnection(asyncpg.Connection):
    """An asyncpg connection that belongs to a :class:`DatabasePool`.

    ``close`` gives it back to its pool rather than closing it: SQLAlchemy closes
    every connection it is done with (the ORM engines pool nothing themselves),
    and that must return the connection, warm, to the pool it came from. A close
    with a ``timeout`` is SQLAlchemy's clean-up of a connection it invalidated;
    that one, and ``terminate``, really end the connection and free its place.
    """

    home: DatabasePool[LentConnection] | None = None
    #: Set once SQLAlchemy's per-connection set-up ran on this connection.
    orm_ready: bool = False
    #: Whether statements may be cached on this connection (not behind PgBouncer).
    caches_statements: bool = True
    #: SQLAlchemy's prepared statements for this connection, made on first use.
    orm_statements: Any = None

    def is_reusable(self) -> bool:
        """Open, with no query being cancelled and no transaction left open.

        A fetch abandoned at the deadline leaves its connection cancelling the
        query; the pool lets it ``settle`` before lending it again (as asyncpg's
        own pool does), and cuts a connection left inside a transaction.
        """
        if self.is_closed() or self.is_in_transaction():
            return False
        return not self._protocol._is_cancelling()  # type: ignore[attr-defined]

    async def settle(self) -> None:
        """Wait until the cancel request of an abandoned query has been answered."""
        if self._protocol._is_cancelling():  # type: ignore[attr-defined]
            await self._protocol._wait_for_cancellation()  # type: ignore[attr-defined]

    async def close(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109 (asyncpg's)
        """Give the connection back to its pool (with a ``timeout``: close it for good)."""
        home = self.home
        if home is not None and timeout is None:
            home.give_back(self)  # cut there if it is not fit to lend again
            return
        await self.close_for_good(timeout)

    async def close_for_good(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """End the session with the server, then let the pool forget the connection."""
        try:
            await asyncpg.Connection.close(self, timeout=timeout)
        finally:
            if self.home is not None:
                self.home.give_back(self, healthy=False)

    def terminate(self) -> None:
        """Cut the connection at once and free its place in the pool."""
        asyncpg.Connection.terminate(self)
        if self.home is not None:
            self.home.give_back(self, healthy=False)


def server_of(dsn: str) -> str:
    """The server a DSN points at, as ``host:port``: what a connection budget is for.

    A host given as a query parameter (a Unix socket directory) counts as well;
    several hosts (a failover list) are one server for the budget's purpose.
    """
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    netloc = parts.netloc.rpartition("@")[2]
    host = netloc or (query.get("host") or ["localhost"])[0]
    if ":" in host.rpartition("]")[2] or "," in host:
        return host  # the port is spelled in the DSN already
    port = (query.get("port") or [str(DEFAULT_PORT)])[0]
    return f"{host}:{port}"


def connect_arguments(limits: DriverLimits, *, pgbouncer: bool) -> dict[str, Any]:
    """asyncpg.connect's keywords for a pooled connection under ``limits``."""
    settings = limits.server_settings()
    arguments: dict[str, Any] = {
        "timeout": limits.timeout,
        "command_timeout": limits.timeout,
        "connection_class": LentConnection,
    }
    if pgbouncer:
        arguments["statement_cache_size"] = 0
        arguments["server_settings"] = {"application_name": settings["application_name"]}
    else:
        arguments["server_settings"] = settings
    return arguments


class Connector:
    """Opens the connections of one database's pool (asyncio-flavoured)."""

    def __init__(self, dsn: str, limits: DriverLimits, *, pgbouncer: bool) -> None:
        self._dsn = dsn
        self._arguments = connect_arguments(limits, pgbouncer=pgbouncer)
        self.pgbouncer = pgbouncer

    async def __call__(self, pool: DatabasePool[LentConnection]) -> LentConnection:
        """A new connection that belongs to ``pool``."""
        connection: LentConnection = await asyncpg.connect(self._dsn, **self._arguments)
        connection.home = pool
        connection.caches_statements = not self.pgbouncer
        return connection
