"""PostgreSQL and MariaDB sources in one config, through the real ``collector serve``.

source_1 (raw) and source_2 (ORM) live in PostgreSQL, source_3 in MariaDB, read raw
or through the ORM; the fault proxy sits in front of MariaDB. The promises are the
PostgreSQL suite's: every row sorted by id across engines, each fault costs at most
the deadline, the answer names what is missing and why, and nothing of ours still
runs in MariaDB a second after the deadline.
"""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path

import pytest
import trio

from service.config import Access, Config
from service.sources.bridge import AsyncioBridge
from tests.e2e.conftest import fault_on
from tests.e2e.conftest import proxied_service as serve_proxied
from tests.e2e.test_faults import ENVELOPE, FAULTS, SLACK, TIMEOUT, healthy_ids, timed_get
from tests.support import mysql, pg
from tests.support.faultproxy import Mode, ProxyFactory

pytestmark = pytest.mark.e2e

REFERENCE = [{"id": i, "name": f"Test {i}"} for i in range(1, 61)]
proxied_service = partial(serve_proxied, timeout=TIMEOUT, proxied=("source_3",))


def mixed(reference_config: Config, mariadb_config: Config, access: Access) -> Config:
    """Two PostgreSQL sources and MariaDB's source_3, read in ``access`` mode."""
    maria = pg.source(mariadb_config, "source_3", access=access)
    return dataclasses.replace(reference_config, sources=(*reference_config.sources[:2], maria))


@pytest.mark.parametrize("access", [Access.RAW, Access.ORM])
async def test_mixed_engines_serve_every_row_in_lists_pages_streams_and_lookups(
    reference_config: Config,
    mariadb_config: Config,
    fault_proxy: ProxyFactory,
    tmp_path: Path,
    access: Access,
) -> None:
    config = mixed(reference_config, mariadb_config, access)
    async with proxied_service(config, fault_proxy, tmp_path) as service:
        client = service.client
        everything = await client.get("/collect-data")
        assert everything.json() == REFERENCE
        assert everything.headers["Collection-Complete"] == "?1"
        seen: list[object] = []
        url: str | None = "/collect-data?limit=25"
        while url is not None:
            page = await client.get(url)
            seen.extend(page.json())
            url = page.links.get("next", {}).get("url")
        assert seen == REFERENCE
        stream = await client.get("/collect-data", headers={"Accept": "application/x-ndjson"})
        *rows, summary = [json.loads(line) for line in stream.text.splitlines()]
        assert rows == REFERENCE
        assert summary["complete"] is True
        one = await client.get("/collect-data/25")  # declared by MariaDB's source only
        assert one.json() == {"id": 25, "name": "Test 25"}
        assert one.headers["server-timing"].count('desc="pruned"') == 2
        assert (await client.get("/readyz")).status_code == 200


@pytest.mark.parametrize("access", [Access.RAW, Access.ORM])
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_mariadb_fault_costs_at_most_the_deadline_and_leaves_nothing_running(
    reference_config: Config,
    mariadb_config: Config,
    fault_proxy: ProxyFactory,
    tmp_path: Path,
    asyncio_bridge: AsyncioBridge,
    fault: str,
    access: Access,
) -> None:
    config = mixed(reference_config, mariadb_config, access)
    source = config.sources[2]
    async with (
        proxied_service(config, fault_proxy, tmp_path) as service,
        mysql.admin(asyncio_bridge, source.dsn) as admin,
    ):
        warm, _ = await timed_get(service.client)
        assert warm.headers["Collection-Complete"] == "?1"
        proxy = service.proxies["source_3"]
        async with fault_on(fault, proxy, source, asyncio_bridge, delay=3 * TIMEOUT):
            response, elapsed = await timed_get(service.client, headers=ENVELOPE)
            assert elapsed <= TIMEOUT + SLACK
            body = response.json()
            assert [row["id"] for row in body["data"]] == healthy_ids("source_3")
            assert response.headers["Collection-Missing"] == f'"source_3";status={FAULTS[fault]}'
            report = {s["name"]: s for s in body["sources"]}
            assert report["source_3"]["error"]
            assert report["source_3"]["missing_ids"] == [list(r) for r in source.ids or ()]
            assert {report[name]["status"] for name in ("source_1", "source_2")} == {"ok"}
            assert await admin.queries_left(within=1.0) == []
            bare, elapsed = await timed_get(service.client)
            assert elapsed <= TIMEOUT + SLACK
            assert [row["id"] for row in bare.json()] == healthy_ids("source_3")
        assert (await timed_get(service.client))[0].headers["Collection-Complete"] == "?1"


async def test_readyz_pings_mariadb_like_postgresql(
    reference_config: Config, mariadb_config: Config, fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    config = mixed(reference_config, mariadb_config, Access.RAW)
    async with proxied_service(config, fault_proxy, tmp_path) as service:
        ready = await service.client.get("/readyz")
        assert ready.status_code == 200
        await service.proxies["source_3"].set_mode(Mode.BLACKHOLE)
        start = trio.current_time()
        ready = await service.client.get("/readyz")
        assert trio.current_time() - start <= config.probe_timeout + SLACK
        assert ready.status_code == 200  # the PostgreSQL sources still answer
        report = {s["name"]: s["status"] for s in ready.json()["sources"]}
        assert report == {"source_1": "ok", "source_2": "ok", "source_3": "timeout"}
