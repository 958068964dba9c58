"""Hedged reads against real PostgreSQL: the losing query is cancelled in the server too."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import trio

from service.config import Access, SourceConfig
from service.core import Answer, Collector, ReplicaSet
from service.sources.bridge import AsyncioBridge
from tests.support import pg
from tests.support.collecting import collector_for

pytestmark = pytest.mark.integration

TABLE = "data_r"
ROWS = range(1, 51)


@pytest.fixture
async def two_copies(asyncio_bridge: AsyncioBridge, postgres_dsn: str) -> AsyncIterator[list[str]]:
    """Two databases holding the same rows: two replicas of one source."""
    prefix = f"collector_replicas_{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}_a", f"{prefix}_b"]
    for name in names:
        await asyncio_bridge.run(
            pg.create_database,
            postgres_dsn,
            name,
            f"CREATE TABLE {TABLE} (id INT PRIMARY KEY, name VARCHAR(255))",
            f"INSERT INTO {TABLE} SELECT g, 'Row ' || g FROM generate_series(1, 50) AS g",
        )
    try:
        yield [pg.with_database(postgres_dsn, name) for name in names]
    finally:
        for name in names:
            await asyncio_bridge.run(pg.drop_database, postgres_dsn, name)


async def collect_into(collector: Collector, answers: list[Answer]) -> None:
    answers.append(await collector.collect())


@pytest.mark.parametrize("access", [Access.RAW, Access.ORM])
async def test_the_losing_replica_query_is_cancelled_in_the_server(
    asyncio_bridge: AsyncioBridge, two_copies: list[str], access: Access
) -> None:
    locked, free = two_copies
    source = SourceConfig(
        "source_r", locked, TABLE, access, replicas=(free,), hedge_delay=0.05, hedge_budget=1.0
    )
    async with (
        collector_for(asyncio_bridge, (source,), timeout=2.0) as collector,
        pg.admin(asyncio_bridge, locked) as admin,
    ):
        replicas = collector.sources[0]
        assert isinstance(replicas, ReplicaSet)
        for _ in range(3):
            assert (await collector.collect()).complete  # pools warm
        async with pg.locked_table(asyncio_bridge, locked, TABLE):
            # Replica 1 looks slow, so replica 0 is asked first; its query waits on
            # the lock, is hedged after 50 ms, and loses.
            replicas.replicas[1].measure(1.0, trio.current_time())
            answers: list[Answer] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: collect_into(collector, answers))
                await trio.sleep(0.03)  # before the hedge: the query is in the server
                assert await admin.active_queries(f"collector:{source.name}") == 1
            (answer,) = answers
            assert replicas.hedges == 1
            assert answer.complete
            assert [row.id for row in answer.rows] == list(ROWS)
            assert answer.outcomes[0].replica == "1"
            assert answer.outcomes[0].duration < 1.0
            assert await admin.queries_left(f"collector:{source.name}") == 0
