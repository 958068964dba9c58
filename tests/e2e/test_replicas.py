"""Replicas and active probes through the real ``collector serve``, behind fault proxies.

Two replicas of a source are two fault proxies in front of the same database: each
is opened as its own pool, so a fault on one proxy is a fault on one server.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from service.config import Config
from service.core.breaker import BreakerSettings
from tests.e2e.conftest import running_server, write_config
from tests.support.faultproxy import FaultProxy, Mode, ProxyFactory

pytestmark = pytest.mark.e2e

ENVELOPE = {"Accept": "application/vnd.collector.envelope+json"}
ALL_IDS = list(range(1, 61))


@asynccontextmanager
async def serve(config: Config, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    path = write_config(tmp_path / "collector.toml", config)
    async with (
        running_server(["--config", str(path)]) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
    ):
        yield client


def timing(response: httpx.Response) -> dict[str, str]:
    """Each source's Server-Timing entry, by name."""
    entries = [e.strip() for e in response.headers["server-timing"].split(",")]
    return {e.split(";")[0]: e for e in entries}


async def test_a_black_holed_replica_costs_no_answer_its_rows(
    reference_config: Config, fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    first = reference_config.sources[0]
    proxies: list[FaultProxy] = []
    dsns: list[str] = []
    for _ in range(2):
        proxy, dsn = await fault_proxy(first.dsn)
        proxies.append(proxy)
        dsns.append(dsn)
    replicated = dataclasses.replace(first, dsn=dsns[0], replicas=(dsns[1],), hedge_delay=0.05)
    config = Config(sources=(replicated, *reference_config.sources[1:]), timeout=2.0)
    async with serve(config, tmp_path) as client:
        for _ in range(3):
            assert (await client.get("/collect-data")).status_code == 200  # pools warm
        await proxies[0].set_mode(Mode.BLACKHOLE)
        # Longer than a replica's figure stays fresh (2 s): replica 0 is asked first
        # again at least once, and is hedged.
        began = trio.current_time()
        while trio.current_time() - began < 3.0:
            await trio.sleep(0.02)
            start = trio.current_time()
            response = await client.get("/collect-data", headers=ENVELOPE)
            elapsed = trio.current_time() - start
            body = response.json()
            assert body["complete"], body["sources"]
            assert [row["id"] for row in body["data"]] == ALL_IDS
            assert elapsed < 1.0  # far from the 2 s deadline: replica 1 answered
            assert body["sources"][0]["replica"] == "1"
            assert timing(response)["source_1"].endswith(";replica=1")
            assert ";replica=" not in timing(response)["source_2"]
        metrics = (await client.get("/metrics")).text
        assert 'collector_replica_fetches_total{replica="1",source="source_1"}' in metrics
        assert 'collector_replica_hedge_wins_total{replica="1",source="source_1"}' in metrics


async def test_a_recovered_source_is_closed_by_a_probe_and_no_request_is_the_trial(
    reference_config: Config, fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    first = reference_config.sources[0]
    proxy, dsn = await fault_proxy(first.dsn)
    # The cool-down alone would keep the breaker open for a minute.
    proxied = dataclasses.replace(first, dsn=dsn, breaker=BreakerSettings(2, cooldown=60.0))
    timeout = 0.5
    config = Config(
        sources=(proxied, *reference_config.sources[1:]), timeout=timeout, probe_interval=0.5
    )
    async with serve(config, tmp_path) as client:
        assert (await client.get("/collect-data")).status_code == 200
        await proxy.set_mode(Mode.BLACKHOLE)
        for _ in range(2):
            body = (await client.get("/collect-data", headers=ENVELOPE)).json()
            assert body["sources"][0]["status"] == "timeout"
        # Open: skipped at once, for as long as the server stays black-holed.
        for _ in range(10):
            start = trio.current_time()
            body = (await client.get("/collect-data", headers=ENVELOPE)).json()
            assert trio.current_time() - start < timeout
            assert body["sources"][0]["status"] == "skipped"
            await trio.sleep(0.1)
        await proxy.set_mode(Mode.PASS)
        recovered = trio.current_time()
        while True:
            start = trio.current_time()
            body = (await client.get("/collect-data", headers=ENVELOPE)).json()
            assert trio.current_time() - start < timeout  # no request was the trial
            if body["complete"]:
                break
            assert trio.current_time() - recovered < 1.5, "no probe closed the breaker"
            await trio.sleep(0.05)
        assert [row["id"] for row in body["data"]] == ALL_IDS
