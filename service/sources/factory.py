"""From a source's config to an open source: a registry of engines and their access modes.

Why a table and not a chain of ifs: a new engine or access mode is one entry. Every
opener draws its connections from the process's :class:`~service.sources.pool.Budgets`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from service.config import Access, SourceConfig
from service.config.secrets import is_mysql
from service.sources import mysql, postgres
from service.sources.base import DriverLimits, Opened
from service.sources.bridge import AsyncioBridge
from service.sources.pool import Budgets
from service.sources.postgres import Opener

#: Engine name -> its openers by access mode.
ENGINES: Mapping[str, Mapping[Access, Opener]] = {
    "postgres": postgres.OPENERS,
    "mysql": mysql.OPENERS,
}


def engine_of(source: SourceConfig) -> str:
    """The engine a source runs on, by its DSN's scheme (the config accepts no others)."""
    return "mysql" if is_mysql(source.dsn) else "postgres"


async def open_source(
    source: SourceConfig, bridge: AsyncioBridge, deadline: float, budgets: Budgets
) -> Opened:
    """Open one configured source under the collection deadline (no connection yet)."""
    opener = ENGINES[engine_of(source)][source.access]
    return await opener(source, bridge, DriverLimits.for_source(source.name, deadline), budgets)


async def open_servers(
    source: SourceConfig, bridge: AsyncioBridge, deadline: float, budgets: Budgets
) -> list[Opened]:
    """One opened driver source per server: ``dsn`` first, then each of ``replicas``."""
    opened: list[Opened] = []
    for dsn in (source.dsn, *source.replicas):
        replica = dataclasses.replace(source, dsn=dsn, replicas=())
        opened.append(await open_source(replica, bridge, deadline, budgets))
    return opened
