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
request is answered later than its own deadline. The fan-out runs in the
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
        self._open: dict[Query, _Group] = {}
        self._reading: dict[Query, trio.Event] = {}
        self.fan_outs = 0
        """How many fan-outs ran: fewer than requests when requests were shared."""

    async def collect(self, query: Query) -> Answer:
        """The collection for ``query``, from a fan-out that starts after this call."""
        group = self._open.get(query)
        if group is None:
            group = self._open[query] = _Group(opened=trio.current_time())
            self._nursery.start_soon(self._fan_out, query, group)
        group.members += 1
        try:
            await group.done.wait()
        except BaseException:
            # This client went away. The others still want the answer; if it was
            # the last one, stop the fan-out so no query is left running for nobody.
            group.members -= 1
            if group.members == 0:
                self._close(query, group)
                group.scope.cancel()
            raise
        assert group.result is not None
        return group.result

    async def _fan_out(self, query: Query, group: _Group) -> None:
        reading: trio.Event | None = None
        try:
            with group.scope:
                # One pass of the scheduler: requests already runnable join this group.
                await trio.lowlevel.cancel_shielded_checkpoint()
                earlier = self._reading.get(query)
                if earlier is not None:
                    with trio.move_on_at(group.opened + MAX_WAIT):
                        await earlier.wait()
                        if self._linger:
                            await trio.sleep(self._linger)
                self._close(query, group)  # from here on, a new request opens a new group
                reading = self._reading[query] = trio.Event()
                self.fan_outs += 1
                seconds_left = self._timeout - (trio.current_time() - group.opened)
                group.result = await self._collect(query, seconds_left=seconds_left)
        finally:
            self._close(query, group)
            if reading is not None:
                reading.set()
                if self._reading.get(query) is reading:
                    del self._reading[query]
        group.done.set()

    def _close(self, query: Query, group: _Group) -> None:
        if self._open.get(query) is group:
            del self._open[query]
