"""Sources behind a real PgBouncer in transaction mode (Debian's 1.18).

PgBouncer gives each transaction whichever server connection is free, so a
statement prepared on one may be executed on another; and it refuses startup
parameters it does not know. ``pgbouncer = true`` is what makes both modes work.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio

from service.config import Access, Config, SourceConfig
from service.core import Status
from service.sources.bridge import AsyncioBridge
from tests.support import pg
from tests.support.collecting import collector_for
from tests.support.pgbouncer import Bouncer, pgbouncer

pytestmark = pytest.mark.integration

#: Slack allowed past the deadline for the answer to be assembled.
DEADLINE_SLACK = 0.15


@pytest.fixture(scope="module")
def bouncer(postgres_dsn: str) -> Iterator[Bouncer]:
    with pgbouncer(postgres_dsn, pool_size=2) as running:
        yield running


def behind(bouncer: Bouncer, config: Config, *, mode: bool = True) -> tuple[SourceConfig, ...]:
    """The reference sources, raw and ORM, reached through PgBouncer."""
    return tuple(
        pg.source(config, s.name, dsn=bouncer.dsn(s.dsn), pgbouncer=mode) for s in config.sources
    )


async def test_raw_and_orm_sources_answer_under_concurrency_behind_pgbouncer(
    asyncio_bridge: AsyncioBridge, reference_config: Config, bouncer: Bouncer
) -> None:
    sources = behind(bouncer, reference_config)
    assert {s.access for s in sources} == {Access.RAW, Access.ORM}
    answers = []
    async with collector_for(asyncio_bridge, sources) as collector:

        async def one() -> None:
            for _ in range(5):
                answers.append(await collector.collect())

        # Far more client connections than PgBouncer's two server connections per
        # database: statements of different clients interleave on the same ones.
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(one)
    assert len(answers) == 50
    failures = {o.error for a in answers for o in a.outcomes if o.status is not Status.OK}
    assert failures == set()
    assert all([r.id for r in a.rows] == list(range(1, 61)) for a in answers)


async def test_without_pgbouncer_mode_a_source_behind_pgbouncer_fails(
    asyncio_bridge: AsyncioBridge, reference_config: Config, bouncer: Bouncer
) -> None:
    # Why the key exists: the session settings a direct connection sends are
    # refused by PgBouncer (and its prepared statements would not survive).
    sources = behind(bouncer, reference_config, mode=False)
    async with collector_for(asyncio_bridge, sources) as collector:
        answer = await collector.collect()
    assert {o.status for o in answer.outcomes} == {Status.ERROR}
    assert "unsupported startup parameter" in (answer.outcomes[0].error or "")


@pytest.mark.parametrize("locked", ["source_1", "source_2"], ids=["raw", "orm"])
async def test_a_locked_table_behind_pgbouncer_is_cut_at_the_deadline_and_stops_in_the_server(
    asyncio_bridge: AsyncioBridge, reference_config: Config, bouncer: Bouncer, locked: str
) -> None:
    direct = pg.source(reference_config, locked)
    sources = behind(bouncer, reference_config)
    async with (
        collector_for(asyncio_bridge, sources, timeout=1.0) as collector,
        pg.admin(asyncio_bridge, direct.dsn) as admin,
    ):
        assert (await collector.collect()).complete
        async with pg.locked_table(asyncio_bridge, direct.dsn, direct.table):
            start = trio.current_time()
            answer = await collector.collect()
            elapsed = trio.current_time() - start
            assert elapsed <= 1.0 + DEADLINE_SLACK
            statuses = {o.source: o.status for o in answer.outcomes}
            assert statuses[locked] is Status.TIMEOUT
            assert {s for s, status in statuses.items() if status is Status.OK} == {
                s.name for s in sources if s.name != locked
            }
            # The cancel request went through PgBouncer to the server's backend.
            assert await admin.queries_left(f"collector:{locked}") == 0
        assert (await collector.collect()).complete
