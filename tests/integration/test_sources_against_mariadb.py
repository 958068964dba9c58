"""MariaDB sources, raw and ORM, against the real server: reads, faults, the server's side.

As for PostgreSQL, the sources are opened the way the server opens them and
wall-clock time is Trio's real clock; the fault proxy sits in front of MariaDB.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager

import asyncmy
import pytest
import trio

from service.config import Access, Config, SourceConfig
from service.core import Answer, Collector, Query, Source, Status, Window
from service.sources import mysql as mysql_sources
from service.sources import open_sources
from service.sources.base import DriverLimits
from service.sources.bridge import AsyncioBridge
from service.sources.mysql.session import SessionSpec, kill_query
from service.sources.pool import Budgets
from tests.support import mysql, pg
from tests.support.collecting import collector_for, read_stream
from tests.support.faultproxy import Mode, ProxyFactory

pytestmark = pytest.mark.integration

DEADLINE_SLACK = 0.1
ALL_IDS = list(range(1, 61))
SOURCE_1_IDS = [*range(1, 11), *range(31, 41)]
ACCESS = [Access.RAW, Access.ORM]


def statuses(collection: Answer) -> dict[str, Status]:
    return {o.source: o.status for o in collection.outcomes}


def ids(collection: Answer) -> list[int]:
    return [row.id for row in collection.rows]


def first(config: Config, access: Access, **changes: object) -> SourceConfig:
    """source_1 of the MariaDB reference, read in ``access`` mode."""
    return pg.source(config, "source_1", access=access, **changes)


@asynccontextmanager
async def opened(
    bridge: AsyncioBridge, sources: tuple[SourceConfig, ...]
) -> AsyncIterator[tuple[Collector, list[Source]]]:
    """A collector over ``sources``, and the sources themselves, opened as the server does."""
    async with open_sources(Config(sources=sources), bridge) as members:
        yield Collector(members, 2.0), [member.source for member in members]


async def timed_collect(collector: Collector, query: Query | None = None) -> tuple[Answer, float]:
    start = trio.current_time()
    collection = await collector.collect(query or Query())
    return collection, trio.current_time() - start


async def test_every_reference_row_from_mariadb_raw_and_orm(
    asyncio_bridge: AsyncioBridge, mariadb_config: Config
) -> None:
    async with collector_for(asyncio_bridge, mariadb_config.sources) as collector:
        collection = await collector.collect()
    assert ids(collection) == ALL_IDS
    assert collection.rows[0].name == "Test 1"
    assert collection.complete
    assert [s.access for s in mariadb_config.sources] == [Access.RAW, Access.ORM, Access.RAW]


@pytest.mark.parametrize("access", ACCESS)
async def test_windows_pages_and_ping(
    asyncio_bridge: AsyncioBridge, mariadb_config: Config, access: Access
) -> None:
    sources = tuple(
        pg.source(mariadb_config, s.name, access=access) for s in mariadb_config.sources
    )
    async with opened(asyncio_bridge, sources) as (collector, (source, *_)):
        assert [r.id for r in await source.fetch(Window(after=5, until=33, limit=8))] == [
            6, 7, 8, 9, 10, 31, 32, 33
        ]  # fmt: skip
        assert [r.id for r in await source.fetch(Window(after=2**40))] == []
        await source.ping()
        seen: list[int] = []
        query = Query(limit=7)
        for _ in range(20):
            page = await collector.collect(query)
            assert all(o.rows <= 7 for o in page.outcomes)
            seen.extend(ids(page))
            if page.next is None:
                break
            query = Query(after=page.next.after, limit=7, behind=page.next.behind)
    assert seen == ALL_IDS


@pytest.mark.parametrize("access", ACCESS)
async def test_lowest_outside_the_declared_ids(
    asyncio_bridge: AsyncioBridge, mariadb_config: Config, access: Access
) -> None:
    async with opened(asyncio_bridge, (first(mariadb_config, access),)) as (_, (source,)):
        assert await source.lowest_outside(((1, 10), (31, 40))) is None
        assert await source.lowest_outside(((1, 5), (31, 40))) == 6
        assert await source.lowest_outside(((1, 10), (12, 20), (35, 40))) == 31


@pytest.mark.parametrize("access", ACCESS)
async def test_streams_read_every_row_and_an_early_close_leaves_nothing_running(
    asyncio_bridge: AsyncioBridge, mariadb_config: Config, access: Access
) -> None:
    sources = tuple(
        pg.source(mariadb_config, s.name, access=access) for s in mariadb_config.sources
    )
    async with (
        collector_for(asyncio_bridge, sources) as collector,
        mysql.admin(asyncio_bridge, sources[0].dsn) as admin,
    ):
        rows, summary = await read_stream(collector, Query(), batch=7)
        assert [r.id for r in rows] == ALL_IDS
        assert summary.complete
        async with aclosing(collector.stream(Query(), 3)) as items:
            async for _ in items:
                break  # the client left after the first chunk
        assert await admin.queries_left() == []
        rows, _ = await read_stream(collector, Query(), batch=100)
        assert [r.id for r in rows] == ALL_IDS  # the pools still serve


@pytest.mark.parametrize("access", ACCESS)
async def test_locked_table_is_dropped_at_the_deadline_and_stops_in_the_server(
    asyncio_bridge: AsyncioBridge, mariadb_config: Config, access: Access
) -> None:
    source = first(mariadb_config, access)
    async with (
        collector_for(asyncio_bridge, (source,)) as collector,
        mysql.admin(asyncio_bridge, source.dsn) as admin,
    ):
        await collector.collect()  # the stuck query then runs on a pooled connection
        async with mysql.locked_table(asyncio_bridge, source.dsn, source.table):
            collection, elapsed = await timed_collect(collector)
            assert 2.0 - DEADLINE_SLACK <= elapsed <= 2.0 + DEADLINE_SLACK
            assert statuses(collection)["source_1"] is Status.TIMEOUT
            assert await admin.queries_left(within=1.0) == []
        assert ids(await collector.collect()) == SOURCE_1_IDS


@pytest.mark.parametrize("access", ACCESS)
async def test_an_abandoned_query_is_killed_in_the_server_before_its_time_limit(
    asyncio_bridge: AsyncioBridge, mariadb_config: Config, access: Access
) -> None:
    """Cancelled from outside, the query is killed at once, not at ``max_statement_time``."""
    source = first(mariadb_config, access)
    limits = DriverLimits.for_source(source.name, 30.0)  # the server's own limit: 30 s
    budgets = Budgets(limit=4, idle_timeout=60.0)
    opened = await mysql_sources.OPENERS[access](source, asyncio_bridge, limits, budgets)
    try:
        async with (
            mysql.admin(asyncio_bridge, source.dsn) as admin,
            mysql.locked_table(asyncio_bridge, source.dsn, source.table),
        ):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(opened.source.fetch, Window())
                with trio.fail_after(5):  # it waits on the lock...
                    while not await admin.running_queries():  # noqa: ASYNC110 (polling)
                        await trio.sleep(0.05)
                nursery.cancel_scope.cancel()  # ...is abandoned...
            assert await admin.queries_left(within=1.0) == []  # ...and stops in the server
    finally:
        await asyncio_bridge.run(opened.close)


async def test_kill_query_stops_a_query_whose_client_is_still_connected(
    asyncio_bridge: AsyncioBridge, mariadb_config: Config
) -> None:
    """The server notices a closed socket; for one that stays open, KILL QUERY stops it."""
    source = mariadb_config.sources[0]
    spec = SessionSpec.for_dsn(source.dsn, DriverLimits.for_source(source.name, 30.0))
    waiting = await asyncio_bridge.run(spec.connect_session)

    async def blocked_read() -> object:
        async with waiting.cursor() as cursor:
            await cursor.execute(f"SELECT * FROM {source.table}")
            return await cursor.fetchall()

    try:
        async with (
            mysql.admin(asyncio_bridge, source.dsn) as admin,
            mysql.locked_table(asyncio_bridge, source.dsn, source.table),
            trio.open_nursery() as nursery,
        ):
            outcome: list[BaseException] = []

            async def read() -> None:
                try:
                    await asyncio_bridge.run(blocked_read)
                except asyncmy.errors.MySQLError as exc:
                    outcome.append(exc)

            nursery.start_soon(read)
            with trio.fail_after(2):
                while not await admin.running_queries():  # noqa: ASYNC110 (polling the server)
                    await trio.sleep(0.05)
            await asyncio_bridge.run(kill_query, spec, waiting.thread_id())
            assert await admin.queries_left(within=1.0) == []
        assert [exc.args[0] for exc in outcome] == [1317]  # "Query execution was interrupted"
    finally:
        waiting.close()


async def test_missing_table_is_an_error_at_once(
    asyncio_bridge: AsyncioBridge, mariadb_config: Config
) -> None:
    missing = pg.source(mariadb_config, "source_3", table="no_such_table")
    async with collector_for(asyncio_bridge, (mariadb_config.sources[0], missing)) as collector:
        collection, elapsed = await timed_collect(collector)
    assert statuses(collection) == {"source_1": Status.OK, "source_3": Status.ERROR}
    assert "1146" in (collection.outcomes[1].error or "")
    assert elapsed < 1.0


@pytest.mark.parametrize("access", ACCESS)
async def test_refused_port_and_bad_password_are_errors_without_the_password(
    asyncio_bridge: AsyncioBridge, mariadb_config: Config, access: Access
) -> None:
    refused = first(
        mariadb_config, access, dsn=f"mysql://root:hunter2@127.0.0.1:{pg.unused_port()}/x"
    )
    wrong = pg.source(
        mariadb_config,
        "source_2",
        access=access,
        dsn=mysql.as_user(mariadb_config.sources[1].dsn, "nobody:hunter2"),
    )
    async with collector_for(asyncio_bridge, (refused, wrong)) as collector:
        collection, elapsed = await timed_collect(collector)
    assert statuses(collection) == {"source_1": Status.ERROR, "source_2": Status.ERROR}
    assert "2003" in (collection.outcomes[0].error or "")
    assert "1045" in (collection.outcomes[1].error or "")
    assert all("hunter2" not in (o.error or "") for o in collection.outcomes)
    assert elapsed < 1.0


@pytest.mark.parametrize("access", ACCESS)
@pytest.mark.parametrize("when", ["connect", "mid-query"])
async def test_black_hole_times_out_at_the_deadline_and_the_pool_recovers(
    asyncio_bridge: AsyncioBridge,
    mariadb_config: Config,
    fault_proxy: ProxyFactory,
    access: Access,
    when: str,
) -> None:
    proxy, dsn = await fault_proxy(mariadb_config.sources[0].dsn)
    flaky = first(mariadb_config, access, dsn=dsn, pool_size=2)
    async with collector_for(asyncio_bridge, (flaky,), timeout=1.0) as collector:
        if when == "mid-query":
            assert ids(await collector.collect()) == SOURCE_1_IDS  # a pooled connection
        await proxy.set_mode(Mode.BLACKHOLE)
        for _ in range(3):  # more stuck fetches than the pool has connections
            collection, elapsed = await timed_collect(collector)
            assert 1.0 - DEADLINE_SLACK <= elapsed <= 1.0 + DEADLINE_SLACK
            assert statuses(collection)["source_1"] is Status.TIMEOUT
        await proxy.set_mode(Mode.PASS)
        with trio.fail_after(5):
            while statuses(collection)["source_1"] is not Status.OK:
                await trio.sleep(0.1)
                collection = await collector.collect()
        assert ids(collection) == SOURCE_1_IDS


@pytest.mark.parametrize("access", ACCESS)
async def test_resetting_peer_is_an_error_at_once_and_the_pool_recovers(
    asyncio_bridge: AsyncioBridge, mariadb_config: Config, fault_proxy: ProxyFactory, access: Access
) -> None:
    proxy, dsn = await fault_proxy(mariadb_config.sources[0].dsn)
    async with collector_for(
        asyncio_bridge, (first(mariadb_config, access, dsn=dsn),)
    ) as collector:
        assert ids(await collector.collect()) == SOURCE_1_IDS
        await proxy.set_mode(Mode.RESET)
        collection, elapsed = await timed_collect(collector)
        assert statuses(collection)["source_1"] is Status.ERROR
        assert elapsed < 1.0
        await proxy.set_mode(Mode.PASS)
        assert ids(await collector.collect()) == SOURCE_1_IDS  # on the first try


@pytest.mark.parametrize("access", ACCESS)
async def test_killed_session_is_stale_and_retried_on_a_fresh_connection(
    asyncio_bridge: AsyncioBridge, mariadb_config: Config, access: Access
) -> None:
    source = first(mariadb_config, access, pool_size=1)
    async with (
        collector_for(asyncio_bridge, (source,)) as collector,
        mysql.admin(asyncio_bridge, source.dsn) as admin,
    ):
        assert ids(await collector.collect()) == SOURCE_1_IDS
        sessions = await admin.fetchall(
            "SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()",
            admin.database,
        )
        for (session,) in sessions:
            await admin.execute(f"KILL CONNECTION {int(session)}")
        collection = await collector.collect()
    assert statuses(collection)["source_1"] is Status.OK
    assert ids(collection) == SOURCE_1_IDS


async def test_sessions_are_read_only_and_time_limited_in_the_server(
    asyncio_bridge: AsyncioBridge, mariadb_config: Config
) -> None:
    source = mariadb_config.sources[0]  # connects as root, on purpose
    spec = SessionSpec.for_dsn(source.dsn, DriverLimits.for_source(source.name, 2.0))
    connection = await asyncio_bridge.run(spec.connect_session)

    async def query(sql: str) -> object:
        async with connection.cursor() as cursor:
            await cursor.execute(sql)
            return (await cursor.fetchone())[0]

    try:
        assert float(await asyncio_bridge.run(query, "SELECT @@max_statement_time")) == 2.0
        assert await asyncio_bridge.run(query, "SELECT @@lock_wait_timeout") == 2
        with pytest.raises(asyncmy.errors.MySQLError) as caught:
            await asyncio_bridge.run(query, f"INSERT INTO {source.table} VALUES (9999, 'no')")
        assert caught.value.args[0] == 1792  # "cannot execute ... in a READ ONLY transaction"
    finally:
        connection.close()


async def test_reader_account_may_read_and_may_not_write(
    asyncio_bridge: AsyncioBridge, mariadb_config: Config
) -> None:
    readers = tuple(
        pg.source(mariadb_config, s.name, dsn=mysql.as_user(s.dsn, mysql.READER))
        for s in mariadb_config.sources
    )
    async with collector_for(asyncio_bridge, readers) as collector:
        collection = await collector.collect()
    assert [o.status for o in collection.outcomes] == [Status.OK] * 3
    assert ids(collection) == ALL_IDS
    source = readers[0]
    async with mysql.admin(asyncio_bridge, source.dsn) as reader:
        for statement in (
            f"INSERT INTO {source.table} VALUES (9999, 'no')",
            "CREATE TABLE intruder (id INT)",
            f"SELECT * FROM {mariadb_config.sources[1].table}",  # another source's table
        ):
            with pytest.raises(asyncmy.errors.MySQLError) as caught:
                await reader.execute(statement)
            assert caught.value.args[0] in (1142, 1044)  # command denied / access denied
