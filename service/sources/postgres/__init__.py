"""PostgreSQL sources: ``raw`` (asyncpg + SQL) and ``orm`` (SQLAlchemy), one opener each.

Both draw their connections from one pool per database (see ``connections``), under
the budget of the server that database lives on. A second engine is a sibling
package of this one with an ``OPENERS`` table of its own, listed in
:mod:`service.sources.factory`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from service.config import Access, SourceConfig
from service.sources.base import DriverLimits, Opened
from service.sources.bridge import AsyncioBridge
from service.sources.pool import Budgets, DatabasePool
from service.sources.postgres import orm, raw
from service.sources.postgres.connections import Connector, LentConnection, server_of

Opener = Callable[[SourceConfig, AsyncioBridge, DriverLimits, Budgets], Awaitable[Opened]]


def database_pool(
    source: SourceConfig, limits: DriverLimits, budgets: Budgets
) -> DatabasePool[LentConnection]:
    """The pool of the source's database, shared by every source with the same DSN."""
    connector = Connector(source.dsn, limits, pgbouncer=source.pgbouncer)
    key = ("postgres", source.dsn, source.pgbouncer)
    return budgets.pool(server_of(source.dsn), key, source.pool_size, connector)


async def open_raw(
    source: SourceConfig, bridge: AsyncioBridge, limits: DriverLimits, budgets: Budgets
) -> Opened:
    """A raw source on its database's pool (no connection opened yet)."""
    pool = database_pool(source, limits, budgets)
    opened = raw.RawSource(source.name, source.table, pool, bridge, limits, source.secrets)
    return Opened(opened)


async def open_orm(
    source: SourceConfig, bridge: AsyncioBridge, limits: DriverLimits, budgets: Budgets
) -> Opened:
    """An ORM source whose engine borrows from its database's pool (no connection yet)."""
    pool = database_pool(source, limits, budgets)
    engine = orm.create_engine(pool, limits, pgbouncer=source.pgbouncer)
    sessions = orm.session_factory(engine)
    opened = orm.OrmSource(source.name, source.table, sessions, bridge, source.secrets)
    return Opened(opened, close=engine.dispose)


OPENERS: Mapping[Access, Opener] = {Access.RAW: open_raw, Access.ORM: open_orm}
