"""Declared ids against real tables: the check finds stray rows, and pruning then stops.

Each test module gets its own reference databases, because these tests add rows
outside the declared ranges.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from service.config import Config
from service.core import Query, Status
from service.core.declared import IdsState, gaps
from service.sources.bridge import AsyncioBridge
from service.sources.postgres.raw import lowest_in_sql
from tests.support import pg
from tests.support.collecting import collector_for

pytestmark = pytest.mark.integration

STRAY = ((1000, "x"), (2147483647, "y"))


@pytest.fixture(scope="module")
def own_reference(postgres_dsn: str) -> Iterator[Config]:
    with pg.reference_databases(postgres_dsn) as config:
        yield config


async def add_rows(bridge: AsyncioBridge, dsn: str, table: str, rows: tuple[object, ...]) -> None:
    async with pg.admin(bridge, dsn) as admin:
        for row_id, name in rows:  # type: ignore[misc]
            await admin.execute(f'INSERT INTO "{table}" VALUES ($1, $2)', row_id, name)


async def remove_rows(bridge: AsyncioBridge, dsn: str, table: str, ids: list[int]) -> None:
    async with pg.admin(bridge, dsn) as admin:
        await admin.execute(f'DELETE FROM "{table}" WHERE id = ANY($1::int[])', ids)


@pytest.mark.parametrize("name", ["source_1", "source_2"], ids=["raw", "orm"])
async def test_lowest_outside_finds_the_lowest_stray_row(
    asyncio_bridge: AsyncioBridge, own_reference: Config, name: str
) -> None:
    config = pg.source(own_reference, name)
    assert config.ids is not None
    async with collector_for(asyncio_bridge, (config,)) as collector:
        (source,) = collector.sources
        assert await source.lowest_outside(config.ids) is None
        await add_rows(asyncio_bridge, config.dsn, config.table, STRAY)
        try:
            assert await source.lowest_outside(config.ids) == 1000
            assert await source.lowest_outside(((1, 1000),)) == 2147483647
            assert await source.lowest_outside(((-(2**63), 2**63 - 1),)) is None
            await add_rows(asyncio_bridge, config.dsn, config.table, ((-5, "low"),))
            assert await source.lowest_outside(config.ids) == -5
        finally:
            await remove_rows(asyncio_bridge, config.dsn, config.table, [-5, 1000, 2147483647])


@pytest.mark.parametrize("name", ["source_1", "source_2"], ids=["raw", "orm"])
async def test_a_violated_source_is_not_pruned_from_pages_or_lookups(
    asyncio_bridge: AsyncioBridge, own_reference: Config, name: str
) -> None:
    config = pg.source(own_reference, name)
    await add_rows(asyncio_bridge, config.dsn, config.table, STRAY)
    try:
        async with collector_for(asyncio_bridge, own_reference.sources) as collector:
            await collector.declared.check()
            states = collector.declared.states()
            assert states == {
                s.name: IdsState.VIOLATED if s.name == name else IdsState.VERIFIED
                for s in own_reference.sources
            }
            page = await collector.collect(Query(after=60))
            assert [row.id for row in page.rows] == [1000, 2147483647]
            one = await collector.collect(Query(after=999, until=1000))
            assert [row.id for row in one.rows] == [1000]
            pruned = {o.source for o in one.outcomes if o.status is Status.PRUNED}
            assert pruned == {s.name for s in own_reference.sources} - {name}
    finally:
        await remove_rows(asyncio_bridge, config.dsn, config.table, [1000, 2147483647])


async def test_the_raw_check_is_an_index_probe_per_gap(
    asyncio_bridge: AsyncioBridge, own_reference: Config
) -> None:
    """On a large table the check reads the primary key around the ranges, not the rows."""
    config = pg.source(own_reference, "source_1")
    table = "big_declared"
    async with pg.admin(asyncio_bridge, config.dsn) as admin:
        await admin.fill_table(table, range(1, 200_001))
        try:
            bounds = [list(pair) for pair in zip(*gaps(((1, 200000),)), strict=True)]
            plan = await admin.fetchval(f"EXPLAIN (FORMAT JSON) {lowest_in_sql(table)}", *bounds)
        finally:
            await admin.execute(f"DROP TABLE {table}")
    nodes = json.dumps(json.loads(str(plan)))
    assert '"Node Type": "Index Only Scan"' in nodes
    assert "Seq Scan" not in nodes
