"""Coalescing never serves a read that began before the request arrived."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel

from service.config import Config
from service.core import Collector, Query
from service.core.coalesce import Coalescer
from service.sources import open_sources
from service.sources.bridge import AsyncioBridge
from tests.support import pg

pytestmark = pytest.mark.integration


async def test_a_row_committed_before_a_request_is_always_in_its_answer(
    asyncio_bridge: AsyncioBridge, reference_config: Config, nursery: trio.Nursery
) -> None:
    target = reference_config.sources[0]
    async with (
        open_sources(reference_config, asyncio_bridge) as members,
        pg.admin(asyncio_bridge, target.dsn) as admin,
    ):
        coalescer = Coalescer(Collector(members, 2.0).collect, nursery, 2.0)
        stop = trio.Event()

        async def background_load() -> None:  # keeps fan-outs in flight all the time
            while not stop.is_set():
                await coalescer.collect(Query())

        async with trio.open_nursery() as load:
            for _ in range(8):
                load.start_soon(background_load)
            try:
                for new_id in range(1000, 1030):
                    await admin.execute(
                        f"INSERT INTO {target.table} VALUES ($1, 'fresh')", new_id
                    )  # committed (autocommit) before the request below is made
                    answer = await coalescer.collect(Query())
                    assert new_id in {row.id for row in answer.rows}, new_id
                    await trio.lowlevel.checkpoint()
            finally:
                stop.set()
                await admin.execute(f"DELETE FROM {target.table} WHERE id >= 1000")
        assert coalescer.fan_outs < 30 + 8 * 30  # requests really were shared
