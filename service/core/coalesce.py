"""Request coalescing: identical queries that arrive together share one fan-out.

The guarantee: a request only ever joins a fan-out that has **not started yet**, so
every answer comes from a read of the sources that began after its request
arrived. A row committed before a request is sent is therefore always in its
answer, exactly as without coalescing; what is saved is only the duplicate work
of requests that arrive in the same instant.

How: the first request for a query opens a group and schedules its fan-out in
the service's nursery. The group stays open, gathering every identical request
that arrives, until the fan-out starts: one scheduling pass later, or, while an
earlier fan-out for the same query is still reading, when that one ends plus a
short linger (so under load each fan-out serves everything that arrived during the
previous one and while it was being answered), but never later than ``MAX_WAIT``
after the group opened. A request that finds no earlier fan-out reading never
lingers: without concurrency, coalescing adds no latency. The fan-out's sources get
the deadline of the group's *first* request, less what it waited, so no joined
request is answered later than its own deadline.

A client's own deadline (``Prefer: wait=N``, given as ``seconds_left``) is part of
the group's key: requests join only a group asking the same N, whose first member
arrived first, so its deadline (N after that arrival) is the earliest of the
group's and every member is answered within its own N. Requests that share a query
but not a wait get separate fan-outs, which costs little: a group only gathers the
requests of the same few milliseconds, and a joiner cut off at its own deadline
would have to be told that sources still reading for the others were missing. The
fan-out runs in the
service's nursery, not in a request's task, so a client that disconnects cancels
only its own wait, never the answer of the others.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from service.core.model import Answer, Query

#: Longest a group waits for an earlier fan-out of the same query to end before it
#: starts its own anyway. A slow source must not stack one deadline on another.
MAX_WAIT = 0.02
#: Seconds a group that waited for an earlier fan-out keeps gathering after it ends.
#: The earlier group's members are being answered at that moment, and a busy client
#: sends its next request as soon as it has its answer. Measured at 32 connections on
#: 127.0.0.1 (``bench/README.md``): with no linger a fan-out served 16 requests; 1 ms
#: changed nothing, 3 ms gave 19-31 depending on how busy the machine was, 5 ms 31.7
#: every time (all the connections), 10 ms no more; 16-23% more requests served and a
#: lower median latency. The cost is at most this much latency, and only for requests
#: that arrive while an identical fan-out is reading.
DEFAULT_LINGER = 0.005


@dataclass(eq=False)
class _Group:
    """The requests waiting on one fan-out that has not started yet."""

    opened: float
    budget: float
    """Seconds its sources may take from ``opened``: the timeout, or a shorter wait."""
    done: trio.Event = field(default_factory=trio.Event)
    result: Answer | None = None
    members: int = 0
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    """Cancelled when every member has gone: nobody is left to answer."""


class Coalescer:
    """Shares each fan-out among the identical queries that arrive before it starts."""

    def __init__(
        self,
        collect: Callable[..., Awaitable[Answer]],
        nursery: trio.Nursery,
        timeout: float,
        *,
        linger: float = DEFAULT_LINGER,
    ) -> None:
        self._collect = collect
        self._nursery = nursery
        self._timeout = timeout
        self._linger = linger
        self._open: dict[tuple[Query, float | None], _Group] = {}
        self._reading: dict[tuple[Query, float | None], trio.Event] = {}
        self.fan_outs = 0
        """How many fan-outs ran: fewer than requests when requests were shared."""

    async def collect(self, query: Query, *, seconds_left: float | None = None) -> Answer:
        """The collection for ``query``, from a fan-out that starts after this call.

        ``seconds_left`` is the caller's own deadline (a ``Prefer: wait``), if shorter
        than the timeout: the answer comes within it.
        """
        key = (query, seconds_left)
        group = self._open.get(key)
        if group is None:
            budget = self._timeout if seconds_left is None else min(seconds_left, self._timeout)
            group = self._open[key] = _Group(opened=trio.current_time(), budget=budget)
            self._nursery.start_soon(self._fan_out, key, group)
        group.members += 1
        try:
            await group.done.wait()
        except BaseException:
            # This client went away. The others still want the answer; if it was
            # the last one, stop the fan-out so no query is left running for nobody.
            group.members -= 1
            if group.members == 0:
                self._close(key, group)
                group.scope.cancel()
            raise
        assert group.result is not None
        return group.result

    async def _fan_out(self, key: tuple[Query, float | None], group: _Group) -> None:
        query = key[0]
        reading: trio.Event | None = None
        try:
            with group.scope:
                # One pass of the scheduler: requests already runnable join this group.
                await trio.lowlevel.cancel_shielded_checkpoint()
                earlier = self._reading.get(key)
                if earlier is not None:
                    with trio.move_on_at(group.opened + MAX_WAIT):
                        await earlier.wait()
                        if self._linger:
                            await trio.sleep(self._linger)
                self._close(key, group)  # from here on, a new request opens a new group
                reading = self._reading[key] = trio.Event()
                self.fan_outs += 1
                seconds_left = group.budget - (trio.current_time() - group.opened)
                group.result = await self._collect(query, seconds_left=seconds_left)
        finally:
            self._close(key, group)
            if reading is not None:
                reading.set()
                if self._reading.get(key) is reading:
                    del self._reading[key]
        group.done.set()

    def _close(self, key: tuple[Query, float | None], group: _Group) -> None:
        if self._open.get(key) is group:
            del self._open[key]
