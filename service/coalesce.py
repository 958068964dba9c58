"""Request coalescing: identical queries that arrive together share one fan-out.

The guarantee: a request only ever joins a fan-out that has **not started yet**, so
every answer comes from a read of the sources that began after its request
arrived. A row committed before a request is sent is therefore always in its
answer, exactly as without coalescing; what is saved is only the duplicate work
of requests that arrive in the same instant.

How: the first request for a query opens a group and schedules the fan-out in
the service's nursery. The fan-out task yields once to the scheduler before it
closes the group and starts reading, so every request already on its way in that
same scheduling pass joins; anything arriving after the group closed opens the
next group. The fan-out runs in the service's nursery, not in the first
request's task, so a client that disconnects cancels only its own wait, never
the answer of the others. Its deadline starts when it starts, a scheduling pass
after the earliest joined request arrived.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from service.core import Collection, Query


@dataclass(eq=False)
class _Group:
    """The requests waiting on one fan-out that has not started yet."""

    done: trio.Event = field(default_factory=trio.Event)
    result: Collection | None = None
    members: int = 0


class Coalescer:
    """Shares each fan-out among the identical queries that arrive before it starts."""

    def __init__(
        self, collect: Callable[[Query], Awaitable[Collection]], nursery: trio.Nursery
    ) -> None:
        self._collect = collect
        self._nursery = nursery
        self._open: dict[Query, _Group] = {}
        self.fan_outs = 0
        """How many fan-outs ran: fewer than requests when requests were shared."""

    async def collect(self, query: Query) -> Collection:
        """The collection for ``query``, from a fan-out that starts after this call."""
        group = self._open.get(query)
        if group is None:
            group = self._open[query] = _Group()
            self._nursery.start_soon(self._fan_out, query, group)
        group.members += 1
        await group.done.wait()
        assert group.result is not None
        return group.result

    async def _fan_out(self, query: Query, group: _Group) -> None:
        # One pass of the scheduler: requests already runnable join this group.
        await trio.lowlevel.cancel_shielded_checkpoint()
        del self._open[query]  # closed: from here on, a new request opens a new group
        self.fan_outs += 1
        group.result = await self._collect(query)
        group.done.set()
