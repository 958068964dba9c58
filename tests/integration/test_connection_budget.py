"""The connection budget against a real PostgreSQL: what the server sees of us.

Every check here reads ``pg_stat_activity`` on the server itself, so "never more
than the budget" is measured where it matters, not in our own bookkeeping.
"""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
import pytest
import trio

from service.config import Access, Config, SourceConfig
from service.core import Collector, Status
from service.sources import open_sources
from service.sources.bridge import AsyncioBridge
from tests.support import pg
from tests.support.collecting import collector_for

pytestmark = pytest.mark.integration

FLEET = 6
ROWS = 20


@pytest.fixture(scope="module")
def fleet(postgres_dsn: str) -> Iterator[list[str]]:
    with pg.fleet_databases(postgres_dsn, FLEET, ROWS) as dsns:
        yield dsns


def fleet_sources(dsns: list[str], **changes: object) -> tuple[SourceConfig, ...]:
    """One source per database, raw and ORM in turn."""
    return tuple(
        SourceConfig(
            f"fleet_{k}",
            dsn,
            f"rows_{k}",
            Access.RAW if k % 2 == 0 else Access.ORM,
            **changes,  # type: ignore[arg-type]
        )
        for k, dsn in enumerate(dsns)
    )


async def our_connections(admin: pg.Admin, prefix: str = "collector:fleet_") -> int:
    """Connections on the whole server whose application name is one of ours."""
    count = await admin.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1 || '%'", prefix
    )
    assert isinstance(count, int)
    return count


class Peak:
    """Samples our connections on the server while a load runs."""

    def __init__(self, admin: pg.Admin) -> None:
        self.admin = admin
        self.highest = 0

    async def watch(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            self.highest = max(self.highest, await our_connections(self.admin))
            await trio.sleep(0.002)


async def many_collects(collector: Collector, requests: int) -> list[bool]:
    complete: list[bool] = []

    async def one() -> None:
        complete.append((await collector.collect()).complete)

    async with trio.open_nursery() as nursery:
        for _ in range(requests):
            nursery.start_soon(one)
    return complete


async def peak_during_collects(
    admin: pg.Admin, collector: Collector, requests: int
) -> tuple[list[bool], int]:
    """Whether each of ``requests`` concurrent collections was complete, and the
    most connections of ours the server showed meanwhile."""
    peak = Peak(admin)
    async with trio.open_nursery() as nursery:
        await nursery.start(peak.watch)
        complete = await many_collects(collector, requests)
        nursery.cancel_scope.cancel()
    return complete, peak.highest


async def test_a_burst_over_many_databases_never_holds_more_than_the_budget(
    asyncio_bridge: AsyncioBridge, postgres_dsn: str, fleet: list[str]
) -> None:
    sources = fleet_sources(fleet)
    async with (
        pg.admin(asyncio_bridge, postgres_dsn) as admin,
        collector_for(asyncio_bridge, sources, timeout=10.0, server_connections=3) as collector,
    ):
        complete, peak = await peak_during_collects(admin, collector, 12)
    assert complete == [True] * 12
    assert 1 <= peak <= 3


async def test_a_fetch_that_gets_no_connection_in_time_says_it_waited_for_one(
    asyncio_bridge: AsyncioBridge, fleet: list[str]
) -> None:
    # Both tables are locked: whichever source gets the only connection hangs on
    # its lock, and the other one waits for that connection until its deadline.
    sources = fleet_sources(fleet[:2])
    async with (
        pg.locked_table(asyncio_bridge, fleet[0], "rows_0"),
        pg.locked_table(asyncio_bridge, fleet[1], "rows_1"),
        collector_for(asyncio_bridge, sources, timeout=1.0, server_connections=1) as collector,
    ):
        answer = await collector.collect()
    assert [o.status for o in answer.outcomes] == [Status.TIMEOUT, Status.TIMEOUT]
    waited = [o.error for o in answer.outcomes if "for a connection" in (o.error or "")]
    assert len(waited) == 1
    assert "ConnectionWaitTimeout: waited 0.9" in waited[0]
    assert "1 of 1 in use" in waited[0]


async def test_sources_on_one_database_share_its_connections(
    asyncio_bridge: AsyncioBridge, postgres_dsn: str, fleet: list[str]
) -> None:
    # Tenants as tables: three sources, raw and ORM, one database, one connection.
    tenants = tuple(
        SourceConfig(f"fleet_tenant_{k}", fleet[0], "rows_0", access, pool_size=1)
        for k, access in enumerate((Access.RAW, Access.ORM, Access.RAW))
    )
    async with (
        pg.admin(asyncio_bridge, postgres_dsn) as admin,
        collector_for(asyncio_bridge, tenants, timeout=10.0) as collector,
    ):
        complete, peak = await peak_during_collects(admin, collector, 6)
    assert complete == [True] * 6
    assert peak == 1


async def test_idle_connections_are_closed_after_the_idle_timeout(
    asyncio_bridge: AsyncioBridge, postgres_dsn: str, fleet: list[str]
) -> None:
    sources = fleet_sources(fleet[:3])
    async with (
        pg.admin(asyncio_bridge, postgres_dsn) as admin,
        collector_for(asyncio_bridge, sources, idle_connection_timeout=0.2) as collector,
    ):
        assert (await collector.collect()).complete
        assert await our_connections(admin) == 3
        with trio.move_on_after(3.0):
            while await our_connections(admin):  # noqa: ASYNC110 (polling the server)
                await trio.sleep(0.05)
        assert await our_connections(admin) == 0
        assert (await collector.collect()).complete  # and reopened when needed


async def test_256_configured_sources_open_no_connection_at_start(
    asyncio_bridge: AsyncioBridge, postgres_dsn: str
) -> None:
    # Databases that do not even exist: opening a source must not connect at all.
    sources = tuple(
        SourceConfig(
            f"fleet_many_{k}",
            pg.with_database(postgres_dsn, f"collector_absent_{k}"),
            "rows",
            Access.RAW if k % 2 == 0 else Access.ORM,
        )
        for k in range(256)
    )
    async with (
        pg.admin(asyncio_bridge, postgres_dsn) as admin,
        open_sources(Config(sources=sources), asyncio_bridge) as members,
    ):
        assert len(members) == 256
        assert await our_connections(admin, "collector:fleet_many_") == 0


async def test_a_refused_connection_is_an_error_not_a_wait(
    asyncio_bridge: AsyncioBridge, postgres_dsn: str
) -> None:
    # The server answers, but the database does not exist: the budget slot taken
    # for the attempt is given back, and the source reports the server's error.
    missing = SourceConfig(
        "fleet_missing", pg.with_database(postgres_dsn, "collector_absent_db"), "rows", Access.RAW
    )
    async with collector_for(asyncio_bridge, (missing,), server_connections=1) as collector:
        for _ in range(3):
            answer = await collector.collect()
            assert answer.outcomes[0].status is Status.ERROR
            assert "does not exist" in (answer.outcomes[0].error or "")
    with pytest.raises(asyncpg.InvalidCatalogNameError):
        await asyncio_bridge.run(asyncpg.connect, missing.dsn)
