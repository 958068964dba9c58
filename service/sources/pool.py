"""Connections to database servers under a budget per server (asyncio side).

A fan-out over many databases on one server must not open more connections than
that server can spare: past ``max_connections`` it refuses everyone, the service's
own fetches and every other client alike. So every database's pool on one server
(a host and port) draws from one :class:`ServerBudget`, and the budget counts the
connections that are open (idle or lent) or being opened: it is never exceeded.

Who gets a connection when the budget is spent, and why the rules are these::

    a fetch for database A asks:
      A has an idle connection ........................ lent at once
      A holds its cap (pool_size) ..................... waits for one of A's own
      the budget has room ............................. a new connection is opened
      another database has an idle connection ......... that one is closed, and a
                                                        new one opened for A
      otherwise ....................................... waits (FIFO, with a timeout)

    a connection of A comes back:
      the oldest waiter wants A, or nobody waits long . handed to A's oldest waiter
      the oldest waiter has waited, and its database .. closed; its slot goes to that
        holds no more connections than A                waiter, which opens its own
      nobody waits .................................... kept idle, closed after a while

Handing a connection to the next waiter of the *same* database is much cheaper
than moving it: opening a PostgreSQL connection costs about 70 times a small
fetch on a warm one (measured here: 7.6 ms against 0.11 ms). But always
preferring the same database would let one busy database keep every connection
while another waits for ever, so once the oldest waiter has waited
:data:`HANDOFF_PATIENCE` seconds, it is served next if its database holds no more
connections than A: a connection moves only to even the shares out, never to a
database that merely wants a second one while others wait for their first (with
as many databases as connections, that would reopen a session per fetch). Each
database's cap (the sources' ``pool_size``) bounds what one busy database can hold.

An idle connection evicted for another database comes from the database holding
the most, and among those is the most recently used one: a fan-out asks every
database once per request, and the database asked last is the one asked again
the latest (for a cyclic pattern, keeping the least recently used connections is
optimal, and evicting them is the worst choice).

Everything here runs on the asyncio loop, and no await happens between a
decision and the bookkeeping it implies, so the counts cannot drift.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

log = logging.getLogger("collector.sources")

#: Seconds the oldest waiter may wait while connections go to their own
#: database's waiters; after that it is served next, even if that means closing
#: a connection of another database to open one for it.
HANDOFF_PATIENCE = 0.02
#: Seconds after which an idle connection counts as spare: another database may
#: take its place even when that does not even their shares out.
SPARE_AFTER = 0.1
#: Seconds a background close of an evicted or idle connection may take.
CLOSE_TIMEOUT = 2.0


class Connection(Protocol):
    """What the pool needs of a driver connection."""

    def is_closed(self) -> bool:
        """Whether the connection is gone (closed by us, the server or the network)."""
        ...

    def is_reusable(self) -> bool:
        """Open, idle and outside any transaction: safe to lend to the next caller.

        A connection given back in the middle of a cancelled query or an open
        transaction is cut rather than lent in an unknown state.
        """
        ...

    def terminate(self) -> None:
        """Close at once, without a goodbye to the server."""
        ...

    async def close_for_good(self) -> None:
        """End the session politely (a pool's ``close`` may mean "give back")."""
        ...

    async def settle(self) -> None:
        """Wait for what the connection still does on its own (a cancel in flight)."""
        ...


C = TypeVar("C", bound=Connection)
#: Opens a new connection that will belong to the given pool.
Connect = Callable[["DatabasePool[C]"], Awaitable[C]]


class ConnectionWaitTimeout(TimeoutError):
    """No connection to the server came free within the fetch's own time."""


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    """One server's connections at one moment, for metrics."""

    server: str
    limit: int
    open: int
    in_use: int
    waiting: int


@dataclass(frozen=True, slots=True)
class _Slot:
    """Room to open a connection in, once the connection closing there has gone."""

    after: asyncio.Task[None] | None = None


@dataclass(slots=True, eq=False)
class _Waiter(Generic[C]):
    pool: DatabasePool[C]
    since: float
    future: asyncio.Future[C | _Slot]
    """Resolved with a connection handed over, or a slot to open one in."""
    gone: bool = False
    """Served, or given up: still in the queues, skipped (removal is lazy)."""


def evens_out(taker_holds: int, giver_keeps: int) -> bool:
    """Whether moving a connection between two databases is worth a new session.

    Only if it evens their shares out (the taker ends with no more than the
    giver), or the taker has none at all: a database that merely wants one more
    while another waits for its first must wait for its own to come back.
    """
    return taker_holds == 0 or taker_holds < giver_keeps


def _first(queue: deque[_Waiter[Any]]) -> _Waiter[Any] | None:
    """The oldest waiter still waiting in ``queue`` (dropping those gone before it)."""
    while queue and queue[0].gone:
        queue.popleft()
    return queue[0] if queue else None


class ServerBudget:
    """At most ``limit`` connections open to one server, shared by its databases."""

    def __init__(
        self,
        server: str,
        limit: int,
        *,
        idle_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server = server
        self.limit = limit
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._open = 0  # open or being opened, idle or lent
        self._waiters: deque[_Waiter[Any]] = deque()  # every database's, in arrival order
        self._waiting = 0
        self._pools: list[DatabasePool[Any]] = []
        self._reaper: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    def usage(self) -> BudgetUsage:
        """How many connections are open, lent and waited for right now."""
        in_use = sum(pool.in_use for pool in self._pools)
        return BudgetUsage(self.server, self.limit, self._open, in_use, self._waiting)

    def pool(self, name: str, cap: int, connect: Connect[C]) -> DatabasePool[C]:
        """A pool for one database on this server, holding at most ``cap`` connections."""
        pool = DatabasePool(self, name, cap, connect)
        self._pools.append(pool)
        return pool

    async def close(self) -> None:
        """Close every idle connection and wait for closes under way (shutdown).

        A connection given back from now on is closed rather than kept idle.
        """
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        while True:
            for pool in self._pools:
                while pool.idle:
                    self._open -= 1
                    self._discard(pool.idle.pop()[0], graceful=True)
            if not self._closing:
                return
            await asyncio.gather(*self._closing, return_exceptions=True)

    def terminate(self) -> None:
        """Cut every connection this budget knows of, idle or lent (shutdown overran)."""
        for pool in self._pools:
            for connection, _ in pool.idle:
                connection.terminate()
            pool.idle.clear()
            for connection in list(pool.lent):
                connection.terminate()
        for task in self._closing:
            task.cancel()

    # -- the decisions --------------------------------------------------------

    @property
    def share(self) -> int:
        """An equal share of the budget for each database on this server (at least 1)."""
        return max(1, self.limit // max(1, len(self._pools)))

    def _has_room(self) -> bool:
        return self._open < self.limit

    def _evict_idle_for(self, pool: DatabasePool[Any]) -> _Slot | None:
        """Close an idle connection of another database to make room: its slot.

        From the database holding the most connections (evicting evens them out,
        rather than taking the only one of a database that will want it back), and
        among those the most recently used; else one idle for :data:`SPARE_AFTER`.
        """
        candidates = [other for other in self._pools if other is not pool and other.idle]
        if not candidates:
            return None
        victim = max(candidates, key=lambda other: (other.held, other.idle[-1][1]))
        if evens_out(pool.held, victim.held - 1):
            connection, _ = victim.idle.pop()
        else:
            # Not worth it for fairness; but a connection nobody used for a while is
            # spare, and taking it beats waiting (the oldest such one).
            victim = min(candidates, key=lambda other: other.idle[0][1])
            if self._clock() - victim.idle[0][1] < SPARE_AFTER:
                return None
            connection, _ = victim.idle.pop(0)
        return _Slot(self._discard(connection, graceful=True))

    def _next_waiter(self, returning: DatabasePool[Any] | None) -> _Waiter[Any] | None:
        """Who gets what ``returning`` gives back (a connection, or a freed slot if None).

        None when nobody should: the connection is kept idle.

        The oldest waiter whose database may hold one more connection; but a
        connection stays with a waiter of its own database unless the oldest waiter
        has waited :data:`HANDOFF_PATIENCE` seconds and its database holds no more.
        """
        head = _first(self._waiters)
        if head is not None and not (head.pool is returning or head.pool.below_cap):
            # Rare: the oldest waits for its own database's cap; look further.
            head = next((w for w in self._waiters if not w.gone and w.pool.below_cap), None)
        if head is None or returning is None or head.pool is returning:
            return head
        own = _first(returning.waiters)
        # Moving a connection costs a new session, so it moves only to even things
        # out; a database that holds more is served by its own as they come back.
        patient = own is None or self._clock() - head.since >= HANDOFF_PATIENCE
        return head if patient and evens_out(head.pool.held, returning.held) else own

    def _give_back(self, pool: DatabasePool[Any], connection: Any, *, healthy: bool) -> None:
        """A lent connection returns: hand it on, move its slot, or keep it idle."""
        if not healthy:
            self._open -= 1
            self._discard(connection, graceful=False)
            self._grant_slots()
            return
        waiter = self._next_waiter(pool)
        if waiter is None and self._closed:
            self._open -= 1
            self._discard(connection, graceful=True)
        elif waiter is None:
            pool.idle.append((connection, self._clock()))
            self._schedule_reaper()
        elif waiter.pool is pool:
            self._hand(waiter, connection)
        else:
            # The slot moves to another database: this connection closes, and the
            # waiter opens its own in the freed place (the count stays the same).
            self._hand(waiter, _Slot(self._discard(connection, graceful=True)))

    def _grant_slots(self) -> None:
        """Give freed room to the oldest waiters that may open a connection."""
        while self._has_room():
            waiter = self._next_waiter(None)
            if waiter is None:
                return
            self._open += 1
            self._hand(waiter, _Slot())

    def _enqueue(self, waiter: _Waiter[Any]) -> None:
        self._waiters.append(waiter)
        waiter.pool.waiters.append(waiter)
        self._waiting += 1

    def _leave(self, waiter: _Waiter[Any]) -> None:
        waiter.gone = True
        self._waiting -= 1

    def _hand(self, waiter: _Waiter[Any], grant: Any) -> None:
        self._leave(waiter)
        waiter.pool.reserve()
        waiter.future.set_result(grant)

    # -- background closes ------------------------------------------------------

    def _discard(self, connection: Any, *, graceful: bool) -> asyncio.Task[None] | None:
        """Close a connection without waiting for it; the close under way, if any.

        Whoever opens a connection in its place waits for that close first, so the
        server never sees more than the budget, not even for a moment.
        """
        if not graceful or connection.is_closed():
            connection.terminate()
            return None
        return self._track(asyncio.ensure_future(_close_quietly(connection)))

    def _track(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        """Keep background work on connections until it ends (``close`` waits for it)."""
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return task

    def _schedule_reaper(self) -> None:
        if self._reaper is None:
            loop = asyncio.get_running_loop()
            self._reaper = loop.call_later(self.idle_timeout / 2, self._reap)

    def _reap(self) -> None:
        """Close connections idle for longer than ``idle_timeout``; run again while any idle."""
        self._reaper = None
        cutoff = self._clock() - self.idle_timeout
        anything_idle = False
        for pool in self._pools:
            kept = [(c, at) for c, at in pool.idle if at > cutoff]
            for connection, _ in pool.idle[: len(pool.idle) - len(kept)]:
                self._open -= 1
                self._discard(connection, graceful=True)
            pool.idle[:] = kept
            anything_idle = anything_idle or bool(kept)
        self._grant_slots()
        if anything_idle:
            self._schedule_reaper()


async def _close_quietly(connection: Any) -> None:
    """A graceful close that cuts the connection if the server does not answer."""
    try:
        await asyncio.wait_for(connection.close_for_good(), CLOSE_TIMEOUT)
    except (Exception, asyncio.CancelledError):
        connection.terminate()


class DatabasePool(Generic[C]):
    """The connections to one database (one DSN), lent under its server's budget.

    Its ``acquire`` and ``release`` have the shape of asyncpg's pool, so the raw
    source and its streams use it as they would use asyncpg's. Idle connections
    are kept last-in first-out: the warmest one is lent first.
    """

    def __init__(self, budget: ServerBudget, name: str, cap: int, connect: Connect[C]) -> None:
        self.budget = budget
        self.name = name
        self.cap = cap
        self._connect = connect
        self.idle: list[tuple[C, float]] = []
        self.lent: set[C] = set()
        self.waiters: deque[_Waiter[C]] = deque()  # this database's, in arrival order
        self._settling: set[C] = set()
        self._reserved = 0  # slots granted to callers still opening or receiving one

    @property
    def in_use(self) -> int:
        """Connections lent out (or being opened for a caller) right now."""
        return len(self.lent) + self._reserved

    @property
    def held(self) -> int:
        """Connections this database holds: lent, being opened, or idle."""
        return self.in_use + len(self.idle)

    @property
    def below_cap(self) -> bool:
        """Whether this database may hold one more connection.

        Its cap is its ``pool_size``, and at most an equal share of the budget
        among the server's databases (at least one): shares that start even need
        no connection moved later, and every move costs a new session.
        """
        return self.held < min(self.cap, self.budget.share)

    def reserve(self) -> None:
        """Count a connection granted to a caller before it has it in hand."""
        self._reserved += 1

    def acquire(self, *, timeout: float | None = None) -> _Acquiring[C]:
        """Borrow a connection: await it (then ``release``) or use ``async with``."""
        return _Acquiring(self, timeout)

    async def release(
        self,
        connection: C,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (asyncpg's pool signature)
    ) -> None:
        """Give back a borrowed connection (a closed one frees its slot)."""
        self.give_back(connection)

    def give_back(self, connection: C, *, healthy: bool = True) -> None:
        """Synchronous ``release``: for callers that cannot await (a terminate).

        A connection still busy on its own (the cancel of an abandoned query on
        its way to the server) settles in the background first, still counted:
        cutting it now would also cut the cancel, and the query would run on.
        """
        if connection not in self.lent or connection in self._settling:
            return  # already given back (a stale connection closed, then released)
        if healthy and not connection.is_closed() and not connection.is_reusable():
            self._settling.add(connection)
            self.budget._track(asyncio.ensure_future(self._settle(connection)))
            return
        self.lent.discard(connection)
        self.budget._give_back(self, connection, healthy=healthy and connection.is_reusable())

    async def _settle(self, connection: C) -> None:
        try:
            await asyncio.wait_for(connection.settle(), CLOSE_TIMEOUT)
        except (Exception, asyncio.CancelledError):
            pass  # cut below
        finally:
            self._settling.discard(connection)
            self.lent.discard(connection)
            self.budget._give_back(self, connection, healthy=connection.is_reusable())

    async def take(self, timeout: float | None) -> C:  # noqa: ASYNC109 (asyncpg's shape)
        """A connection for this database, waiting at most ``timeout`` seconds for one."""
        budget = self.budget
        while self.idle:
            connection, _ = self.idle.pop()
            if not connection.is_closed():
                self.lent.add(connection)
                return connection
            budget._open -= 1  # closed while idle (the server ended it): its slot is free
        if self.below_cap:
            if budget._has_room():
                budget._open += 1
                self.reserve()
                return await self._open_reserved(_Slot())
            if (slot := budget._evict_idle_for(self)) is not None:
                self.reserve()
                return await self._open_reserved(slot)
        started = budget._clock()
        grant = await self._wait(timeout)
        if isinstance(grant, _Slot):
            # The connect gets what is left of the caller's time, not a fresh timeout:
            # work the caller has given up on must not outlive it by much.
            left = None if timeout is None else max(0.0, timeout - (budget._clock() - started))
            return await self._open_reserved(grant, left)
        self._reserved -= 1
        self.lent.add(grant)
        return grant

    async def _wait(self, timeout: float | None) -> C | _Slot:  # noqa: ASYNC109 (as take)
        budget = self.budget
        future: asyncio.Future[C | _Slot] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(self, budget._clock(), future)
        budget._enqueue(waiter)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if not waiter.gone:
                budget._leave(waiter)
            elif waiter.future.done() and not waiter.future.cancelled():
                self._return_unused(waiter.future.result())
            if isinstance(exc, TimeoutError):
                usage = budget.usage()
                raise ConnectionWaitTimeout(
                    f"waited {timeout:g} s for a connection to {budget.server} "
                    f"({usage.in_use} of {usage.limit} in use, {usage.waiting} waiting)"
                ) from None
            raise

    def _return_unused(self, grant: C | _Slot) -> None:
        """A grant that arrived just as its caller gave up goes to the next waiter."""
        self._reserved -= 1
        if isinstance(grant, _Slot):
            self.budget._open -= 1
            self.budget._grant_slots()
        else:
            self.lent.add(grant)
            self.give_back(grant)

    async def _open_reserved(self, slot: _Slot, within: float | None = None) -> C:
        """Open a connection in a slot already counted; free the slot if that fails."""
        try:
            if slot.after is not None:
                await asyncio.shield(slot.after)
            connection = await asyncio.wait_for(self._connect(self), within)
        except BaseException:
            self._reserved -= 1
            self.budget._open -= 1
            self.budget._grant_slots()
            raise
        self._reserved -= 1
        self.lent.add(connection)
        return connection


class _Acquiring(Generic[C]):
    """A pending checkout, awaitable or used as ``async with`` (asyncpg's shape)."""

    def __init__(self, pool: DatabasePool[C], timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._connection: C | None = None

    def __await__(self) -> Generator[Any, None, C]:
        return self._pool.take(self._timeout).__await__()

    async def __aenter__(self) -> C:
        self._connection = await self._pool.take(self._timeout)
        return self._connection

    async def __aexit__(self, *exc: object) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                self._pool.give_back(connection)


class Budgets:
    """Every server's budget and every database's pool in one process, made on first use.

    ``limit`` is each server's budget. Sources that name the same database (the
    same ``key``) get the same pool; its cap is the largest of their ``pool_size``.
    """

    def __init__(self, limit: int, idle_timeout: float) -> None:
        self.limit = limit
        self.idle_timeout = idle_timeout
        self._budgets: dict[str, ServerBudget] = {}
        self._pools: dict[object, DatabasePool[Any]] = {}

    def pool(self, server: str, key: object, cap: int, connect: Connect[C]) -> DatabasePool[C]:
        """The pool for database ``key`` on ``server``, shared with earlier callers."""
        pool = self._pools.get(key)
        if pool is None:
            budget = self._budgets.get(server)
            if budget is None:
                budget = ServerBudget(server, self.limit, idle_timeout=self.idle_timeout)
                self._budgets[server] = budget
            pool = self._pools[key] = budget.pool(str(key), cap, connect)
        pool.cap = max(pool.cap, cap)
        return pool

    def usage(self) -> list[BudgetUsage]:
        """Each server's connections now, for metrics."""
        return [budget.usage() for budget in self._budgets.values()]

    async def close(self) -> None:
        """Close every idle connection, and wait for the closes (asyncio-flavoured)."""
        for budget in self._budgets.values():
            await budget.close()

    def terminate(self) -> None:
        """Cut every connection (shutdown overran its grace)."""
        for budget in self._budgets.values():
            budget.terminate()
