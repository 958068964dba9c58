"""Pages, id routing and streams against a real PostgreSQL, both access modes."""

from __future__ import annotations

from contextlib import aclosing

import pytest

from service.config import Access, Config, SourceConfig
from service.core import Answer, Query, Row, Status
from service.sources.bridge import AsyncioBridge
from tests.support import pg
from tests.support.collecting import collector_for, read_stream
from tests.support.faultproxy import Mode, ProxyFactory

pytestmark = pytest.mark.integration

ALL_IDS = list(range(1, 61))


def all_orm(config: Config) -> tuple[SourceConfig, ...]:
    return tuple(pg.source(config, s.name, access=Access.ORM) for s in config.sources)


@pytest.mark.parametrize("mode", ["mixed", "orm"])
async def test_following_pages_returns_every_row_once_with_the_limit_pushed_down(
    asyncio_bridge: AsyncioBridge, reference_config: Config, mode: str
) -> None:
    sources = reference_config.sources if mode == "mixed" else all_orm(reference_config)
    async with collector_for(asyncio_bridge, sources) as collector:
        seen: list[int] = []
        query = Query(limit=7)
        for _ in range(20):
            page = await collector.collect(query)
            assert all(o.rows <= 7 for o in page.outcomes)  # LIMIT reached every source
            seen.extend(row.id for row in page.rows)
            if page.next is None:
                break
            query = Query(after=page.next.after, limit=7, behind=page.next.behind)
    assert seen == ALL_IDS


async def test_one_id_asks_only_the_source_that_declares_it(
    asyncio_bridge: AsyncioBridge, reference_config: Config
) -> None:
    async with collector_for(asyncio_bridge, reference_config.sources) as collector:
        collection = await collector.collect(Query(after=41, until=42))
    assert collection.rows == [Row(42, "Test 42")]
    assert [o.status for o in collection.outcomes] == [Status.PRUNED, Status.OK, Status.PRUNED]


async def test_source_failing_mid_pagination_is_caught_up_on_later_pages(
    asyncio_bridge: AsyncioBridge, reference_config: Config, fault_proxy: ProxyFactory
) -> None:
    proxy, dsn = await fault_proxy(reference_config.sources[1].dsn)
    sources = (
        reference_config.sources[0],
        pg.source(reference_config, "source_2", dsn=dsn),
        reference_config.sources[2],
    )
    async with collector_for(asyncio_bridge, sources, timeout=1.0) as collector:
        first = await collector.collect(Query(limit=15))
        assert [row.id for row in first.rows] == list(range(1, 16))
        await proxy.set_mode(Mode.BLACKHOLE)
        assert first.next is not None
        second = await collector.collect(
            Query(after=first.next.after, limit=15, behind=first.next.behind)
        )
        assert second.outcomes[1].status is Status.TIMEOUT
        assert second.next is not None
        assert dict(second.next.behind)["source_2"] == 15
        await proxy.set_mode(Mode.PASS)
        seen = [row.id for row in first.rows + second.rows]
        cursor = second.next
        while cursor is not None:
            page = await collector.collect(
                Query(after=cursor.after, limit=15, behind=cursor.behind)
            )
            seen.extend(row.id for row in page.rows)
            cursor = page.next
    assert sorted(seen) == ALL_IDS
    assert len(seen) == 60


@pytest.mark.parametrize("mode", ["mixed", "orm"])
async def test_stream_reads_every_row_through_server_side_cursors(
    asyncio_bridge: AsyncioBridge, reference_config: Config, mode: str
) -> None:
    sources = reference_config.sources if mode == "mixed" else all_orm(reference_config)
    async with collector_for(asyncio_bridge, sources) as collector:
        rows, summary = await read_stream(collector, Query(), batch=4)
        ids = [row.id for row in rows]
        assert ids == ALL_IDS
        assert summary.complete
        later, _ = await read_stream(collector, Query(after=50), batch=4)
        again = [row.id for row in later]
        assert again == list(range(51, 61))  # the pools are healthy after a stream


@pytest.mark.parametrize("access", [Access.RAW, Access.ORM])
async def test_source_failing_mid_stream_is_reported_in_the_summary(
    asyncio_bridge: AsyncioBridge,
    reference_config: Config,
    fault_proxy: ProxyFactory,
    access: Access,
) -> None:
    # A table big enough that the drivers' own read-ahead (SQLAlchemy buffers 50
    # rows of a server-side cursor) cannot hold it all before the fault.
    base = reference_config.sources[0]
    table = f"stream_big_{access}"
    async with pg.admin(asyncio_bridge, base.dsn) as admin:
        await admin.fill_table(table, range(1000, 2000))
        try:
            proxy, dsn = await fault_proxy(base.dsn)
            big = SourceConfig("big", dsn, table, access)
            sources = (big, reference_config.sources[1])
            async with collector_for(asyncio_bridge, sources, timeout=1.0) as collector:
                ids: list[int] = []
                summary = None
                async with aclosing(collector.stream(Query(), 10)) as items:
                    async for item in items:
                        if isinstance(item, Answer):
                            summary = item
                            break
                        ids.extend(row.id for row in item)
                        await proxy.set_mode(Mode.BLACKHOLE)  # after the first chunk
        finally:
            await admin.execute(f"DROP TABLE IF EXISTS {table}")
    assert summary is not None
    outcome = summary.outcomes[0]
    assert outcome.status is Status.TIMEOUT
    assert 0 < outcome.rows < 1000
    delivered = [i for i in ids if i >= 1000]
    assert delivered == list(range(1000, 1000 + outcome.rows))
    assert [i for i in ids if i < 1000] == [*range(11, 21), *range(41, 51)]
    assert ids == sorted(ids)
    assert summary.next is not None
    # big resumes after its last delivered row; source_2 is done, so it can start there too
    assert (summary.next.after, summary.next.behind) == (delivered[-1], ())
