"""PostgreSQL sources: ``raw`` (asyncpg + SQL) and ``orm`` (SQLAlchemy), one opener each.

A second engine is a sibling package of this one with an ``OPENERS`` table of its own,
listed in :mod:`service.sources.factory`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from service.config import Access, SourceConfig
from service.sources.base import DriverLimits, Opened
from service.sources.bridge import AsyncioBridge
from service.sources.postgres import orm, raw

Opener = Callable[[SourceConfig, AsyncioBridge, DriverLimits], Awaitable[Opened]]


async def open_raw(source: SourceConfig, bridge: AsyncioBridge, limits: DriverLimits) -> Opened:
    """A raw source on its own asyncpg pool (no connection opened yet)."""
    pool = await bridge.run(raw.create_pool, source.dsn, source.pool_size, limits)
    opened = raw.RawSource(source.name, source.table, pool, bridge, limits, source.secrets)
    return Opened(opened, close=pool.close, terminate=pool.terminate)


async def open_orm(source: SourceConfig, bridge: AsyncioBridge, limits: DriverLimits) -> Opened:
    """An ORM source on its own engine (no connection opened yet)."""
    engine = orm.create_engine(source.dsn, source.pool_size, limits)
    sessions = orm.session_factory(engine)
    opened = orm.OrmSource(source.name, source.table, sessions, bridge, source.secrets)
    return Opened(opened, close=engine.dispose)


OPENERS: Mapping[Access, Opener] = {Access.RAW: open_raw, Access.ORM: open_orm}
