"""MariaDB and MySQL sources: ``raw`` (asyncmy + SQL) and ``orm`` (SQLAlchemy), one opener each.

A source whose DSN starts with ``mysql://`` or ``mariadb://`` is opened here
(:mod:`service.sources.factory` picks the engine by the DSN's scheme).
"""

from __future__ import annotations

from collections.abc import Mapping

from service.config import Access, SourceConfig
from service.sources.base import DriverLimits, Opened
from service.sources.bridge import AsyncioBridge
from service.sources.mysql import orm, raw
from service.sources.mysql.session import SessionSpec
from service.sources.pool import Budgets
from service.sources.postgres import Opener


async def open_raw(
    source: SourceConfig, bridge: AsyncioBridge, limits: DriverLimits, budgets: Budgets
) -> Opened:
    """A raw source on its own asyncmy pool (no connection opened yet).

    MySQL sources keep asyncmy's pool and SQLAlchemy's, one per source, bounded by
    ``pool_size``: the server budgets (``budgets``) hold PostgreSQL connections.
    """
    pool, spec = await bridge.run(raw.create_pool, source.dsn, source.pool_size, limits)
    opened = raw.MySqlRawSource(source.name, source.table, pool, spec, bridge, source.secrets)
    return Opened(opened, close=lambda: raw.close_pool(pool), terminate=pool.terminate)


async def open_orm(
    source: SourceConfig, bridge: AsyncioBridge, limits: DriverLimits, budgets: Budgets
) -> Opened:
    """An ORM source on its own engine (no connection opened yet; see ``open_raw``)."""
    spec = SessionSpec.for_dsn(source.dsn, limits)
    engine = orm.create_engine(spec, source.pool_size)
    sessions = orm.session_factory(engine)
    opened = orm.MySqlOrmSource(source.name, source.table, sessions, spec, bridge, source.secrets)
    return Opened(opened, close=engine.dispose)


OPENERS: Mapping[Access, Opener] = {Access.RAW: open_raw, Access.ORM: open_orm}
