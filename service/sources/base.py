"""What every source implementation shares: driver time limits and row checking."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from operator import itemgetter
from typing import Any, TypeVar

import asyncpg

from service.core import IdRanges, Row, Source, SourceError, Window, describe_error
from service.core.declared import gaps
from service.sources.bridge import AsyncioBridge

T = TypeVar("T")
log = logging.getLogger("collector.sources")

#: The drivers' own timeouts fire this many seconds before the deadline (at most a
#: tenth of it), so the asyncio side gives up and cleans up its connection just
#: before Trio stops waiting. Trio's cancel scope remains the authority on the
#: deadline; this only keeps the abandoned side short-lived.
DRIVER_TIMEOUT_MARGIN = 0.05
#: PostgreSQL's ``client_connection_check_interval`` (14+, Linux) for our sessions: a
#: running query checks this often that its client is still connected.
CONNECTION_CHECK_MS = 100


@dataclass(frozen=True, slots=True)
class Opened:
    """A source made by an engine's opener, and how to let go of its connections."""

    source: Source
    close: Callable[[], Awaitable[None]] | None = None
    """Asyncio-flavoured: let go of what the source holds beyond the budgets' pools
    (at shutdown; those belong to :class:`~service.sources.pool.Budgets`)."""
    terminate: Callable[[], None] | None = None
    """Cut connections of its own (outside the budgets) when ``close`` overran its grace."""


class SourceDataError(Exception):
    """A source returned rows that do not have the product's table shape."""


@dataclass(frozen=True, slots=True)
class DriverLimits:
    """Time limits handed to the drivers, derived from the collection deadline."""

    timeout: float
    """Seconds for connect, pool acquire and each statement on the client side."""
    statement_timeout_ms: int
    """PostgreSQL ``statement_timeout``: the server stops the query itself even if
    the client's cancel request never arrives."""
    application_name: str
    """Shown in ``pg_stat_activity``, so an operator can find our queries."""

    @classmethod
    def for_source(cls, name: str, deadline: float) -> DriverLimits:
        """Limits for one source under a per-source deadline in seconds."""
        return cls(
            timeout=deadline - min(DRIVER_TIMEOUT_MARGIN, deadline / 10),
            statement_timeout_ms=max(1, math.ceil(deadline * 1000)),
            application_name=f"collector:{name}"[:63],
        )

    def server_settings(self) -> dict[str, str]:
        """Session settings sent with every new connection."""
        return {
            "application_name": self.application_name,
            "statement_timeout": str(self.statement_timeout_ms),
            # Least privilege in the session too: even a role that may write
            # cannot, through the collector.
            "default_transaction_read_only": "on",
            # A connection cut while its query waits (a client that left mid-stream:
            # the stream's connection is terminated, and the cancel request with it)
            # is noticed by the server within this many ms, which then ends the query.
            "client_connection_check_interval": str(CONNECTION_CHECK_MS),
        }


# tuple.__new__ bound to Row: builds a Row from a 2-item record at C speed, where
# Row._make is a Python function call per row (measured: 13% of a page's CPU).
_new_row = partial(tuple.__new__, Row)
_ID_TYPES = frozenset({int})
_NAME_TYPES = frozenset({str, type(None)})


def checked_rows(records: Iterable[Iterable[Any]]) -> list[Row]:
    """Rows from ``(id, name)`` records, refusing values that break the contract.

    The types are checked for the whole batch at once (sets of types, built in C)
    rather than row by row: this runs for every row of every stream.
    """
    rows = list(map(_new_row, records))
    id_types = set(map(type, map(itemgetter(0), rows)))
    name_types = set(map(type, map(itemgetter(1), rows)))
    if not id_types <= _ID_TYPES:
        wrong = next(iter(id_types - _ID_TYPES))
        raise SourceDataError(f"id must be an integer, got {wrong.__name__}")
    if not name_types <= _NAME_TYPES:
        wrong = next(iter(name_types - _NAME_TYPES))
        raise SourceDataError(f"name must be text or NULL, got {wrong.__name__}")
    return rows


async def run_driver(
    bridge: AsyncioBridge, secrets: Iterable[str], fn: Callable[[], Awaitable[T]]
) -> T:
    """Run driver code on the asyncio loop; report failures without secrets.

    A driver's message can quote its connection parameters, so every failure other
    than a timeout becomes a SourceError whose text has the DSN's password masked.
    Timeouts pass through unchanged: the core reports them as ``timeout``.
    """
    try:
        return await bridge.run(fn)
    except TimeoutError:
        raise
    except Exception as exc:
        text = describe_error(exc)
        for secret in secrets:
            if secret:
                text = text.replace(secret, "***")
        raise SourceError(text) from exc


#: asyncpg's errors for a connection or a cached statement that went stale while the
#: source itself is fine: the server ended the session (``pg_terminate_backend``, a
#: restart, a pooler), or a schema change invalidated a prepared statement. The
#: next attempt runs on a fresh connection, or with a fresh plan, and can succeed.
#: asyncpg's internal client errors (its protocol in a state it did not expect) are
#: stale too: a connection whose end the server announced, before the socket's
#: close reaches the client, refuses new queries with one.
_STALE_ERRORS = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InvalidCachedStatementError,
    asyncpg.exceptions.InternalClientError,
)


def is_stale(exc: BaseException) -> bool:
    """Whether ``exc`` says a pooled connection or cached statement went stale.

    The ORM wraps asyncpg's error (in ``orig`` and the cause chain) and marks
    disconnects with ``connection_invalidated``; a raw source raises it as is, or
    asyncpg's "connection is closed" when the pool handed out a connection the
    server had already ended. One rule serves both access modes.
    """
    current: BaseException | None = exc
    for _ in range(8):  # the chains are short; the bound guards against cycles
        if current is None:
            return False
        if isinstance(current, _STALE_ERRORS) or getattr(current, "connection_invalidated", False):
            return True
        if isinstance(current, asyncpg.InterfaceError) and "connection is closed" in str(current):
            return True
        current = getattr(current, "orig", None) or current.__cause__
    return False


async def once_more_if_stale(
    attempt: Callable[[], Awaitable[T]],
    source: str,
    stale: Callable[[BaseException], bool] = is_stale,
) -> T:
    """Run ``attempt``; if it failed on a stale connection or statement, run it once more.

    Both attempts run inside the one call the core bounds by the deadline, so the
    retry never extends it, and a source that fails again is reported: never more
    than two attempts per request. ``attempt`` must discard the connection it
    failed on, when ``stale`` (the engine's rule), so that the retry runs on a fresh one.
    """
    try:
        return await attempt()
    except Exception as exc:
        if not stale(exc):
            raise
        log.info("source %s: stale connection or statement, retrying once", source)
    return await attempt()


class ReadAhead:
    """Keeps one batch in flight while the previous one is merged (asyncio side).

    Streaming is CPU-bound on our side, so letting PostgreSQL produce the next
    batch while Python merges and encodes this one overlaps the two processes.
    Memory grows by one batch per source. The batch in flight is awaited by the
    next call, and so falls under that call's deadline.
    """

    def __init__(self, fetch: Callable[[], Awaitable[list[Row]]], batch_size: int) -> None:
        self._fetch = fetch
        self._batch_size = batch_size
        self._ahead: asyncio.Future[list[Row]] | None = None

    async def next(self) -> list[Row]:
        """The next batch: the one fetched ahead if any, else fetched now."""
        ahead, self._ahead = self._ahead, None
        rows = await (ahead if ahead is not None else self._fetch())
        if len(rows) == self._batch_size:  # a full batch: there may be more
            self._ahead = asyncio.ensure_future(self._fetch())
        return rows

    def cancel(self) -> bool:
        """Abandon the batch in flight; True if there was one (the cursor is busy)."""
        ahead, self._ahead = self._ahead, None
        if ahead is None or ahead.done():
            if ahead is not None:
                _retrieve(ahead)
            return False
        ahead.cancel()
        ahead.add_done_callback(_retrieve)
        return True


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class DriverSource:
    """What the raw and ORM sources share: a name, and driver calls over the bridge.

    Subclasses implement the asyncio-flavoured ``_fetch_on_asyncio`` and
    ``_ping_on_asyncio``; the Trio-flavoured ``fetch`` and ``ping`` of the core's
    Source protocol run them on the asyncio loop and report failures without secrets.
    ``stale`` is the engine's rule for a connection worth one retry (PostgreSQL's by default).
    """

    def __init__(
        self,
        name: str,
        bridge: AsyncioBridge,
        secrets: tuple[str, ...],
        stale: Callable[[BaseException], bool] = is_stale,
    ) -> None:
        self._name = name
        self._bridge = bridge
        self._secrets = secrets
        self._stale = stale

    @property
    def name(self) -> str:
        """The configured source name."""
        return self._name

    async def fetch(self, window: Window) -> list[Row]:
        """The table's rows inside ``window``, ordered by id (Trio-flavoured)."""
        attempt = partial(self._fetch_on_asyncio, window)
        return await self.run(partial(once_more_if_stale, attempt, self._name, self._stale))

    async def ping(self) -> None:
        """Run ``SELECT 1`` on a pooled connection (Trio-flavoured)."""
        await self.run(partial(once_more_if_stale, self._ping_on_asyncio, self._name, self._stale))

    async def lowest_outside(self, ranges: IdRanges) -> int | None:
        """The lowest id outside ``ranges``: a bounded index probe per gap between them."""
        between = gaps(ranges)
        if not between:
            return None  # the ranges cover every id: nothing can be outside them
        return await self.run(partial(self._lowest_in_on_asyncio, between))

    async def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run asyncio-flavoured driver code for this source (see ``run_driver``)."""
        return await run_driver(self._bridge, self._secrets, fn)

    def spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Start asyncio-flavoured clean-up (a stream's close) without waiting for it."""
        self._bridge.spawn(fn, *args)

    async def _fetch_on_asyncio(self, window: Window) -> list[Row]:
        raise NotImplementedError

    async def _ping_on_asyncio(self) -> None:
        raise NotImplementedError

    async def _lowest_in_on_asyncio(self, ranges: IdRanges) -> int | None:
        raise NotImplementedError
