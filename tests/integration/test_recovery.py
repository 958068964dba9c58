"""Sources recover from connections the server cut and from stale statement caches.

A connection killed by ``pg_terminate_backend`` (a failover, an operator, a pooler)
or a prepared statement made stale by a schema change is retried once, on a fresh
connection or plan, within the deadline; a source that keeps failing is not
retried more than that.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio

from service.config import Config
from service.core import Answer, Status
from service.sources.bridge import AsyncioBridge
from tests.support import pg
from tests.support.collecting import collector_for
from tests.support.faultproxy import ProxyFactory

pytestmark = pytest.mark.integration

REFERENCE_IDS = list(range(1, 61))
RAW, ORM = "source_1", "source_2"

#: A view whose every read kills the session reading it.
DOOMED_VIEW = """
CREATE OR REPLACE FUNCTION die_reading() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  PERFORM pg_terminate_backend(pg_backend_pid());
  PERFORM pg_sleep(5);
  RETURN true;
END $$;
CREATE OR REPLACE VIEW doomed AS SELECT id, name FROM {table} WHERE die_reading();
"""


@pytest.fixture(scope="module")
def own_config(postgres_dsn: str) -> Iterator[Config]:
    """Reference databases of this module's own: its tests kill sessions and alter tables."""
    with pg.reference_databases(postgres_dsn) as config:
        yield config


def ids(collection: Answer) -> list[int]:
    return [row.id for row in collection.rows]


async def terminate_sessions(admin: pg.Admin, databases: list[str]) -> None:
    """Kill every other session on ``databases`` and wait until they are gone."""
    query = (
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = ANY($1::text[]) AND pid <> pg_backend_pid()"
    )
    killed = await admin.fetchval(query, databases)
    assert isinstance(killed, int)
    assert killed >= 2  # the raw and the ORM pools' sessions
    remaining = query.replace("count(pg_terminate_backend(pid))", "count(*)")
    for _ in range(500):  # the backends exit asynchronously
        if not await admin.fetchval(remaining, databases):
            return
        await trio.sleep(0.01)
    pytest.fail("terminated sessions did not go away")


def database(dsn: str) -> str:
    return dsn.rpartition("/")[2].partition("?")[0]


async def test_sessions_terminated_by_the_server_cost_no_rows(
    asyncio_bridge: AsyncioBridge, postgres_dsn: str, own_config: Config
) -> None:
    databases = [database(s.dsn) for s in own_config.sources]
    async with (
        collector_for(asyncio_bridge, own_config.sources) as collector,
        pg.admin(asyncio_bridge, postgres_dsn) as admin,
    ):
        assert ids(await collector.collect()) == REFERENCE_IDS  # pools warm
        for _ in range(2):
            await terminate_sessions(admin, databases)
            collection = await collector.collect()
            assert [o.status for o in collection.outcomes] == [Status.OK] * 3, collection.outcomes
            assert ids(collection) == REFERENCE_IDS


@pytest.mark.parametrize("name", [RAW, ORM], ids=["raw", "orm"])
async def test_column_type_changed_and_back_costs_no_rows(
    asyncio_bridge: AsyncioBridge, own_config: Config, name: str
) -> None:
    source = pg.source(own_config, name)
    async with (
        collector_for(asyncio_bridge, (source,)) as collector,
        pg.admin(asyncio_bridge, source.dsn) as admin,
    ):
        expected = ids(await collector.collect())  # statements prepared and cached
        assert len(expected) == 20
        for column_type in ("text", "varchar(255)"):
            await admin.execute(
                f'ALTER TABLE "{source.table}" ALTER COLUMN name TYPE {column_type}'
            )
            for _ in range(2):
                collection = await collector.collect()
                assert collection.outcomes[0].status is Status.OK, collection.outcomes
                assert ids(collection) == expected


@pytest.mark.parametrize("name", [RAW, ORM], ids=["raw", "orm"])
async def test_a_source_whose_sessions_are_killed_every_time_is_tried_twice_per_request(
    asyncio_bridge: AsyncioBridge, own_config: Config, fault_proxy: ProxyFactory, name: str
) -> None:
    original = pg.source(own_config, name)
    async with pg.admin(asyncio_bridge, original.dsn) as admin:
        await admin.execute(DOOMED_VIEW.format(table=original.table))
    # Every attempt dies with its session, so each one opens a connection: the
    # proxy in front of the server counts them.
    proxy, dsn = await fault_proxy(original.dsn)
    source = pg.source(own_config, name, table="doomed", dsn=dsn)
    async with collector_for(asyncio_bridge, (source,)) as collector:
        for request in (1, 2):
            collection = await collector.collect()
            assert collection.outcomes[0].status is Status.ERROR, collection.outcomes
            assert proxy.accepted == 2 * request
