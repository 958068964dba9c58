"""The collector with real sources against a real PostgreSQL, faults included.

Each test opens the sources the way the server does and measures wall-clock time
on Trio's real clock: these are the deadlines users see.
"""

from __future__ import annotations

import pytest
import trio

from service.config import Access, Config
from service.core import Answer, Collector, Status
from service.sources.bridge import AsyncioBridge
from tests.support import pg
from tests.support.collecting import collector_for
from tests.support.faultproxy import Mode, ProxyFactory

pytestmark = pytest.mark.integration

#: Slack allowed past the deadline for the response to be assembled.
DEADLINE_SLACK = 0.1
REFERENCE_IDS = list(range(1, 61))
SOURCE_IDS = {
    "source_1": {*range(1, 11), *range(31, 41)},
    "source_2": {*range(11, 21), *range(41, 51)},
    "source_3": {*range(21, 31), *range(51, 61)},
}


def without(*names: str) -> list[int]:
    """The reference ids, less those held by the named sources."""
    missing = set().union(*(SOURCE_IDS[name] for name in names))
    return [i for i in REFERENCE_IDS if i not in missing]


async def timed_collect(collector: Collector) -> tuple[Answer, float]:
    start = trio.current_time()
    collection = await collector.collect()
    return collection, trio.current_time() - start


def ids(collection: Answer) -> list[int]:
    return [row.id for row in collection.rows]


def statuses(collection: Answer) -> dict[str, Status]:
    return {o.source: o.status for o in collection.outcomes}


async def test_all_healthy_sources_return_every_reference_row(
    asyncio_bridge: AsyncioBridge, reference_config: Config
) -> None:
    async with collector_for(asyncio_bridge, reference_config.sources) as collector:
        collection = await collector.collect()
    assert ids(collection) == REFERENCE_IDS
    assert collection.rows[0].name == "Test 1"
    assert collection.complete
    assert [s.access for s in reference_config.sources] == [Access.RAW, Access.ORM, Access.RAW]


@pytest.mark.parametrize("locked", ["source_1", "source_2"], ids=["raw", "orm"])
async def test_locked_table_is_dropped_at_deadline_and_its_query_stops_in_the_server(
    asyncio_bridge: AsyncioBridge, reference_config: Config, locked: str
) -> None:
    source = pg.source(reference_config, locked)
    async with (
        collector_for(asyncio_bridge, reference_config.sources) as collector,
        pg.admin(asyncio_bridge, source.dsn) as admin,
    ):
        await collector.collect()  # warm the pools: the stuck query runs on a pooled connection
        async with pg.locked_table(asyncio_bridge, source.dsn, source.table):
            collection, elapsed = await timed_collect(collector)
            assert 2.0 - DEADLINE_SLACK <= elapsed <= 2.0 + DEADLINE_SLACK
            assert statuses(collection)[locked] is Status.TIMEOUT
            assert ids(collection) == without(locked)
            assert await admin.queries_left(f"collector:{locked}") == 0
        # Once the lock is gone the same pool answers again, on the first try.
        collection = await collector.collect()
        assert ids(collection) == REFERENCE_IDS


async def test_missing_table_is_reported_as_an_error(
    asyncio_bridge: AsyncioBridge, reference_config: Config
) -> None:
    missing = pg.source(reference_config, "source_3", table="no_such_table")
    sources = (reference_config.sources[0], missing)
    async with collector_for(asyncio_bridge, sources) as collector:
        collection, elapsed = await timed_collect(collector)
    assert statuses(collection) == {"source_1": Status.OK, "source_3": Status.ERROR}
    assert "UndefinedTableError" in (collection.outcomes[1].error or "")
    assert elapsed < 1.0
    assert len(collection.rows) == 20


async def test_refused_port_is_an_error_without_waiting_for_the_deadline(
    asyncio_bridge: AsyncioBridge, reference_config: Config
) -> None:
    refused = pg.source(
        reference_config,
        "source_2",
        dsn=f"postgresql://postgres@127.0.0.1:{pg.unused_port()}/source_2",
    )
    sources = (reference_config.sources[0], refused, reference_config.sources[2])
    async with collector_for(asyncio_bridge, sources) as collector:
        collection, elapsed = await timed_collect(collector)
    assert statuses(collection)["source_2"] is Status.ERROR
    assert "ConnectionRefusedError" in (collection.outcomes[1].error or "")
    assert elapsed < 1.0
    assert ids(collection) == without("source_2")


async def test_unknown_host_is_missing_data_within_the_deadline(
    asyncio_bridge: AsyncioBridge, reference_config: Config
) -> None:
    unknown = pg.source(
        reference_config, "source_1", dsn="postgresql://postgres@no-such-host.invalid/source_1"
    )
    sources = (unknown, reference_config.sources[1])
    async with collector_for(asyncio_bridge, sources) as collector:
        collection, elapsed = await timed_collect(collector)
    assert statuses(collection)["source_1"] in (Status.ERROR, Status.TIMEOUT)
    assert elapsed <= 2.0 + DEADLINE_SLACK
    assert len(collection.rows) == 20


@pytest.mark.parametrize("access", [Access.RAW, Access.ORM])
async def test_black_hole_at_connect_times_out_at_deadline(
    asyncio_bridge: AsyncioBridge,
    reference_config: Config,
    fault_proxy: ProxyFactory,
    access: Access,
) -> None:
    proxy, dsn = await fault_proxy(reference_config.sources[0].dsn)
    await proxy.set_mode(Mode.BLACKHOLE)
    dead = pg.source(reference_config, "source_1", dsn=dsn, access=access)
    sources = (dead, *reference_config.sources[1:])
    async with collector_for(asyncio_bridge, sources) as collector:
        collection, elapsed = await timed_collect(collector)
    assert 2.0 - DEADLINE_SLACK <= elapsed <= 2.0 + DEADLINE_SLACK
    assert statuses(collection)["source_1"] is Status.TIMEOUT
    assert ids(collection) == without("source_1")


@pytest.mark.parametrize("access", [Access.RAW, Access.ORM])
async def test_black_hole_mid_query_times_out_and_the_pool_recovers(
    asyncio_bridge: AsyncioBridge,
    reference_config: Config,
    fault_proxy: ProxyFactory,
    access: Access,
) -> None:
    proxy, dsn = await fault_proxy(reference_config.sources[0].dsn)
    flaky = pg.source(reference_config, "source_1", dsn=dsn, access=access, pool_size=2)
    async with collector_for(asyncio_bridge, (flaky,), timeout=1.0) as collector:
        assert ids(await collector.collect())[:3] == [1, 2, 3]  # a pooled connection is open
        await proxy.set_mode(Mode.BLACKHOLE)
        for _ in range(3):  # more stuck fetches than the pool has connections
            collection, elapsed = await timed_collect(collector)
            assert elapsed <= 1.0 + DEADLINE_SLACK
            assert statuses(collection)["source_1"] is Status.TIMEOUT
        await proxy.set_mode(Mode.PASS)
        # Abandoned connections are cut by the drivers' own timeouts; the source
        # is healthy again within a few deadlines at most.
        with trio.fail_after(5):
            for _ in range(50):
                collection = await collector.collect()
                if statuses(collection)["source_1"] is Status.OK:
                    break
                await trio.sleep(0.1)
        assert ids(collection) == sorted(SOURCE_IDS["source_1"])


async def test_source_down_at_start_up_does_not_stop_the_others(
    asyncio_bridge: AsyncioBridge, reference_config: Config, fault_proxy: ProxyFactory
) -> None:
    proxy, dsn = await fault_proxy(reference_config.sources[1].dsn)
    await proxy.set_mode(Mode.REFUSE)
    down = pg.source(reference_config, "source_2", dsn=dsn)
    sources = (reference_config.sources[0], down, reference_config.sources[2])
    async with collector_for(asyncio_bridge, sources) as collector:
        first = await collector.collect()
        assert statuses(first)["source_2"] is Status.ERROR
        await proxy.set_mode(Mode.PASS)
        second = await collector.collect()
    assert ids(second) == REFERENCE_IDS
