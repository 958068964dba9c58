"""A source read with hand-written SQL over an asyncpg connection pool."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any, Protocol

import asyncpg

from service.core import Row, Window
from service.sources.base import IDLE_CONNECTION_LIFETIME, DriverLimits, checked_row, run_driver
from service.sources.bridge import AsyncioBridge


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


class RawPool(Protocol):
    """The part of an asyncpg pool this source uses (a seam for tests)."""

    def acquire(self, *, timeout: float | None = None) -> AbstractAsyncContextManager[Any]:
        """Borrow a connection; the context manager returns it to the pool."""
        ...


def quote_identifier(name: str) -> str:
    """Quote an SQL identifier (names are validated by the config as well)."""
    return '"' + name.replace('"', '""') + '"'


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


def window_args(window: Window) -> tuple[int, int, int | None]:
    """The statement's parameters for ``window``."""
    after = NO_LOWER_BOUND if window.after is None else window.after
    until = NO_UPPER_BOUND if window.until is None else window.until
    return after, until, window.limit


class RawSource:
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
        self._name = name
        self._query = select_window_sql(table)
        self._pool = pool
        self._bridge = bridge
        self._limits = limits
        self._secrets = secrets

    @property
    def name(self) -> str:
        """The configured source name."""
        return self._name

    async def fetch(self, window: Window) -> list[Row]:
        """The table's rows inside ``window``, ordered by id (Trio-flavoured)."""
        return await run_driver(
            self._bridge, self._secrets, partial(self._fetch_on_asyncio, window)
        )

    async def ping(self) -> None:
        """Check out a connection and run ``SELECT 1`` (Trio-flavoured)."""
        await run_driver(self._bridge, self._secrets, self._ping_on_asyncio)

    async def _fetch_on_asyncio(self, window: Window) -> list[Row]:
        timeout = self._limits.timeout
        async with self._pool.acquire(timeout=timeout) as connection:
            records = await connection.fetch(self._query, *window_args(window), timeout=timeout)
        return [checked_row(record["id"], record["name"]) for record in records]

    async def _ping_on_asyncio(self) -> None:
        timeout = self._limits.timeout
        async with self._pool.acquire(timeout=timeout) as connection:
            await connection.fetch("SELECT 1", timeout=timeout)


async def create_pool(dsn: str, size: int, limits: DriverLimits) -> asyncpg.Pool:
    """An asyncpg pool that opens no connection up front (asyncio-flavoured).

    With ``min_size=0`` a source that is down at start-up cannot delay or stop the
    service; its first request simply fails and is reported.
    """
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=0,
        max_size=size,
        timeout=limits.timeout,
        command_timeout=limits.timeout,
        max_inactive_connection_lifetime=IDLE_CONNECTION_LIFETIME,
        server_settings=limits.server_settings(),
    )
    return pool
