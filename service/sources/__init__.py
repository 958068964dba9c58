"""Source implementations behind the core's ``Source`` protocol.

``raw``  hand-written SQL over an asyncpg pool
``orm``  SQLAlchemy AsyncSession with a mapped class

Both run their driver on the trio-asyncio loop through :mod:`service.sources.bridge`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from service.config import Access, Config
from service.core import Member, Source
from service.sources import orm, raw
from service.sources.base import DriverLimits
from service.sources.bridge import AsyncioBridge

log = logging.getLogger("collector.sources")

#: Seconds allowed at shutdown for abandoned driver tasks and pools to close cleanly
#: before the remaining connections are cut.
CLOSE_GRACE = 5.0


@asynccontextmanager
async def open_sources(config: Config, bridge: AsyncioBridge) -> AsyncIterator[list[Member]]:
    """Create every configured source, and close their pools on exit.

    No connection is opened here: a source that is down must not delay start-up.
    """
    members: list[Member] = []
    closers: list[Callable[[], Awaitable[None]]] = []
    terminators: list[Callable[[], None]] = []
    try:
        for source in config.sources:
            limits = DriverLimits.for_source(source.name, config.timeout)
            if source.access is Access.RAW:
                pool = await bridge.run(raw.create_pool, source.dsn, source.pool_size, limits)
                closers.append(pool.close)
                terminators.append(pool.terminate)
                opened: Source = raw.RawSource(
                    source.name, source.table, pool, bridge, limits, source.secrets
                )
            else:
                engine = orm.create_engine(source.dsn, source.pool_size, limits)
                closers.append(engine.dispose)
                sessions = orm.session_factory(engine)
                opened = orm.OrmSource(source.name, source.table, sessions, bridge, source.secrets)
            members.append(Member(opened, ids=source.ids, breaker=source.breaker))
        yield members
    finally:
        await _close(bridge, closers, terminators)


async def _close(
    bridge: AsyncioBridge,
    closers: list[Callable[[], Awaitable[None]]],
    terminators: list[Callable[[], None]],
) -> None:
    # Shielded: this runs while the server is being torn down, possibly because of
    # a cancellation, and pools left open would hold server connections.
    with trio.move_on_after(CLOSE_GRACE) as scope:
        scope.shield = True
        await bridge.drain()
        for close in closers:
            await bridge.run(close)
    if scope.cancelled_caught:
        log.warning("sources did not close within %.0f s; cutting connections", CLOSE_GRACE)
        for terminate in terminators:
            terminate()
