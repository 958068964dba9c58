"""Source implementations behind the core's ``Source`` protocol.

``pool``          connections under a budget per database server, one pool per database
``postgres/raw``  hand-written SQL over pooled asyncpg connections
``postgres/orm``  SQLAlchemy AsyncSession with a mapped class, on the same pools

Each engine's drivers run on the trio-asyncio loop through :mod:`service.sources.bridge`;
:mod:`service.sources.factory` picks the implementation for a source's config.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from service.config import Config
from service.core import Member, ReplicaSet, Source
from service.sources.bridge import AsyncioBridge
from service.sources.factory import open_servers
from service.sources.pool import Budgets

log = logging.getLogger("collector.sources")

#: Seconds allowed at shutdown for abandoned driver tasks and pools to close cleanly
#: before the remaining connections are cut.
CLOSE_GRACE = 5.0


@asynccontextmanager
async def open_sources(
    config: Config, bridge: AsyncioBridge, budgets: Budgets | None = None
) -> AsyncIterator[list[Member]]:
    """Create every configured source, and close their connections on exit.

    No connection is opened here: a source that is down must not delay start-up.
    Every source draws from ``budgets`` (by default, one made from ``config``).
    """
    budgets = budgets if budgets is not None else budgets_for(config)
    members: list[Member] = []
    closers: list[Callable[[], Awaitable[None]]] = [budgets.close]
    terminators: list[Callable[[], None]] = [budgets.terminate]
    try:
        for source in config.sources:
            servers = await open_servers(source, bridge, config.timeout, budgets)
            closers.extend(opened.close for opened in servers if opened.close is not None)
            terminators.extend(o.terminate for o in servers if o.terminate is not None)
            member: Source = servers[0].source
            if len(servers) > 1:  # replicas: index 0 is ``dsn``, then ``replicas`` in order
                labelled = [(str(i), opened.source) for i, opened in enumerate(servers)]
                member = ReplicaSet(
                    source.name, labelled, breaker=source.breaker, hedge=source.hedge
                )
            members.append(Member(member, ids=source.ids, breaker=source.breaker))
        yield members
    finally:
        await _close(bridge, closers, terminators)


def budgets_for(config: Config) -> Budgets:
    """The connection budgets that ``config`` asks for, in this process."""
    return Budgets(config.server_connections, config.idle_connection_timeout)


async def _close(
    bridge: AsyncioBridge,
    closers: list[Callable[[], Awaitable[None]]],
    terminators: list[Callable[[], None]],
) -> None:
    # Shielded: this runs while the server is being torn down, possibly because of
    # a cancellation, and connections left open would hold server connections.
    with trio.move_on_after(CLOSE_GRACE) as scope:
        scope.shield = True
        await bridge.drain()
        for close in closers:
            await bridge.run(close)
    if scope.cancelled_caught:
        log.warning("sources did not close within %.0f s; cutting connections", CLOSE_GRACE)
        for terminate in terminators:
            terminate()
