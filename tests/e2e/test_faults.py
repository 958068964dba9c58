"""Fault injection through the real ``collector serve``: every fault, every promise.

Each source can sit behind a TCP fault proxy whose mode changes at any moment,
already-open pooled connections included. The promises checked for every fault:
the answer arrives within the deadline plus 100 ms, holds exactly the healthy
sources' rows, names what is missing and why, and leaves no query of ours running
in PostgreSQL 100 ms after the deadline.
"""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from service.config import Access, Config, SourceConfig
from service.core.breaker import BreakerSettings
from service.sources.bridge import AsyncioBridge
from tests.e2e.conftest import fault_on, running_server, write_config
from tests.e2e.conftest import proxied_service as serve_proxied
from tests.support import pg
from tests.support.faultproxy import Mode, ProxyFactory

pytestmark = pytest.mark.e2e

TIMEOUT = 1.0
#: What the deadline may be exceeded by, end to end, for a single request.
SLACK = 0.1
ENVELOPE = {"Accept": "application/vnd.collector.envelope+json"}
SOURCE_IDS = {
    "source_1": [*range(1, 11), *range(31, 41)],
    "source_2": [*range(11, 21), *range(41, 51)],
    "source_3": [*range(21, 31), *range(51, 61)],
}
#: Fault -> the status the faulty source must be reported with.
FAULTS = {
    "blackhole": "timeout",
    "delay": "timeout",
    "reset": "error",
    "refuse": "error",
    "lock": "timeout",
}
#: Every service here has a 1 s deadline unless a test says otherwise.
proxied_service = partial(serve_proxied, timeout=TIMEOUT)


async def timed_get(client: httpx.AsyncClient, **kwargs: object) -> tuple[httpx.Response, float]:
    start = trio.current_time()
    response = await client.get("/collect-data", **kwargs)  # type: ignore[arg-type]
    return response, trio.current_time() - start


def healthy_ids(*faulty: str) -> list[int]:
    return sorted(i for name, ids in SOURCE_IDS.items() if name not in faulty for i in ids)


@pytest.mark.parametrize("faulty", ["source_1", "source_2"], ids=["raw", "orm"])
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_single_source_fault_costs_at_most_the_deadline(
    reference_config: Config,
    fault_proxy: ProxyFactory,
    tmp_path: Path,
    asyncio_bridge: AsyncioBridge,
    fault: str,
    faulty: str,
) -> None:
    async with (
        proxied_service(reference_config, fault_proxy, tmp_path) as service,
        pg.admin(asyncio_bridge, pg.source(reference_config, faulty).dsn) as admin,
    ):
        warm, _ = await timed_get(service.client)  # pools now hold open connections
        assert warm.headers["Collection-Complete"] == "?1"
        source = pg.source(reference_config, faulty)
        proxy = service.proxies[faulty]
        async with fault_on(fault, proxy, source, asyncio_bridge, delay=3 * TIMEOUT):
            response, elapsed = await timed_get(service.client, headers=ENVELOPE)
            assert elapsed <= TIMEOUT + SLACK
            assert response.status_code == 200
            body = response.json()
            assert [row["id"] for row in body["data"]] == healthy_ids(faulty)
            assert response.headers["Collection-Complete"] == "?0"
            assert response.headers["Collection-Missing"] == f'"{faulty}";status={FAULTS[fault]}'
            report = {s["name"]: s for s in body["sources"]}
            assert report[faulty]["status"] == FAULTS[fault]
            assert report[faulty]["error"]
            assert report[faulty]["missing_ids"] == [list(r) for r in source.ids or ()]
            assert {s["status"] for n, s in report.items() if n != faulty} == {"ok"}

            assert await admin.queries_left(f"collector:{faulty}") == 0

            bare, elapsed = await timed_get(service.client)
            assert elapsed <= TIMEOUT + SLACK
            assert [row["id"] for row in bare.json()] == healthy_ids(faulty)


async def test_every_source_failing_at_once_is_an_empty_incomplete_answer(
    reference_config: Config, fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    async with proxied_service(reference_config, fault_proxy, tmp_path) as service:
        await timed_get(service.client)
        for proxy in service.proxies.values():
            await proxy.set_mode(Mode.BLACKHOLE)
        response, elapsed = await timed_get(service.client)
        assert elapsed <= TIMEOUT + SLACK
        assert response.status_code == 200
        assert response.json() == []
        assert response.headers["Collection-Complete"] == "?0"
        assert response.headers["Collection-Missing"] == (
            '"source_1";status=timeout, "source_2";status=timeout, "source_3";status=timeout'
        )
        strict, elapsed = await timed_get(service.client, headers={"Prefer": "handling=strict"})
        assert elapsed <= TIMEOUT + SLACK
        assert strict.status_code == 503
        assert strict.headers["content-type"] == "application/problem+json"
        assert [s["name"] for s in strict.json()["sources"]] == ["source_1", "source_2", "source_3"]


async def test_pool_survives_500_timeouts_and_the_breaker_recovers_on_its_own(
    reference_config: Config, fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    timeout, cooldown, storms = 0.2, 1.0, 500
    async with proxied_service(
        reference_config,
        fault_proxy,
        tmp_path,
        timeout=timeout,
        proxied=("source_1",),
        coalesce=False,  # every request must reach the source: 500 real timeouts
        source_1={"pool_size": 2, "breaker": BreakerSettings(storms, cooldown)},
        source_2={"breaker": BreakerSettings(failures=0)},
        source_3={"breaker": BreakerSettings(failures=0)},
    ) as service:
        await timed_get(service.client)
        await service.proxies["source_1"].set_mode(Mode.BLACKHOLE)
        statuses: list[str] = []

        async def one() -> None:
            response, _ = await timed_get(service.client, headers=ENVELOPE)
            statuses.append(response.json()["sources"][0]["status"])

        for _ in range(storms // 25):
            async with trio.open_nursery() as nursery:
                for _ in range(25):
                    nursery.start_soon(one)
        assert statuses == ["timeout"] * storms

        await service.proxies["source_1"].set_mode(Mode.PASS)
        response, elapsed = await timed_get(service.client, headers=ENVELOPE)
        first = response.json()["sources"][0]
        assert (first["status"], first["breaker"]) == ("skipped", "open")
        assert elapsed < timeout

        # A background probe (every probe_interval, 1 s) closes the breaker; no
        # request is the trial, so each one meanwhile is skipped at once.
        with trio.fail_after(cooldown + 2.0):
            while True:
                response, elapsed = await timed_get(service.client, headers=ENVELOPE)
                body = response.json()
                assert elapsed < timeout
                if body["sources"][0]["status"] != "skipped":
                    break
                await trio.sleep(0.05)
        assert (body["sources"][0]["status"], body["sources"][0]["breaker"]) == ("ok", "closed")
        assert [row["id"] for row in body["data"]] == healthy_ids()


@pytest.mark.parametrize("breaker", [True, False], ids=["breaker", "no-breaker"])
async def test_200_concurrent_requests_with_a_black_holed_source_all_meet_the_deadline(
    reference_config: Config, fault_proxy: ProxyFactory, tmp_path: Path, breaker: bool
) -> None:
    settings = BreakerSettings() if breaker else BreakerSettings(failures=0)
    async with proxied_service(
        reference_config,
        fault_proxy,
        tmp_path,
        proxied=("source_2",),
        source_2={"breaker": settings},
    ) as service:
        await timed_get(service.client)
        await service.proxies["source_2"].set_mode(Mode.BLACKHOLE)
        results: list[tuple[float, list[int], int]] = []
        limiter = trio.CapacityLimiter(50)

        async def one() -> None:
            async with limiter:
                response, elapsed = await timed_get(service.client)
                results.append((elapsed, [r["id"] for r in response.json()], response.status_code))

        async with trio.open_nursery() as nursery:
            for _ in range(200):
                nursery.start_soon(one)
        assert len(results) == 200
        assert max(elapsed for elapsed, _, _ in results) <= TIMEOUT + 0.25
        assert all(ids == healthy_ids("source_2") for _, ids, _ in results)
        assert {code for _, _, code in results} == {200}


DATA_FAULT_TABLES = {
    "nulls": "CREATE TABLE {t} (id INT PRIMARY KEY, name VARCHAR(255));"
    "INSERT INTO {t} VALUES (1, NULL), (2, 'Test 2')",
    "stray": "CREATE TABLE {t} (id INT PRIMARY KEY, name VARCHAR(255));"
    "INSERT INTO {t} VALUES (3, 'Test 3'), (999, 'stray')",
    "dup_a": "CREATE TABLE {t} (id INT PRIMARY KEY, name VARCHAR(255));"
    "INSERT INTO {t} VALUES (7, 'from dup_a')",
    "dup_b": "CREATE TABLE {t} (id INT PRIMARY KEY, name VARCHAR(255));"
    "INSERT INTO {t} VALUES (7, 'from dup_b')",
    "text_ids": "CREATE TABLE {t} (id TEXT PRIMARY KEY, name VARCHAR(255));"
    "INSERT INTO {t} VALUES ('8', 'Test 8')",
    "int_names": "CREATE TABLE {t} (id INT PRIMARY KEY, name INT); INSERT INTO {t} VALUES (9, 9)",
    "empty": "CREATE TABLE {t} (id INT PRIMARY KEY, name VARCHAR(255))",
}


async def test_data_faults_never_produce_a_500(
    reference_config: Config, tmp_path: Path, asyncio_bridge: AsyncioBridge
) -> None:
    base = reference_config.sources[0]
    prefix = f"faults_{tmp_path.name[-8:].replace('-', '_')}"
    sources: list[SourceConfig] = []
    async with pg.admin(asyncio_bridge, base.dsn) as admin:
        for index, (name, ddl) in enumerate(DATA_FAULT_TABLES.items()):
            table = f"{prefix}_{name}"
            await admin.execute(ddl.format(t=table))
            access = Access.ORM if index % 2 else Access.RAW
            ids = ((1, 10),) if name == "stray" else None
            sources.append(SourceConfig(name, base.dsn, table, access, ids=ids))
        # The same wrong-type tables read the other way, so both access modes meet them.
        for name in ("text_ids", "int_names"):
            other = next(s for s in sources if s.name == name)
            flipped = Access.RAW if other.access is Access.ORM else Access.ORM
            sources.append(dataclasses.replace(other, name=f"{name}_{flipped}", access=flipped))
        try:
            config_file = write_config(tmp_path / "c.toml", Config(tuple(sources), timeout=2.0))
            async with (
                running_server(["--config", str(config_file)]) as server,
                httpx.AsyncClient(base_url=server.url) as client,
            ):
                response = await client.get("/collect-data", headers=ENVELOPE)
                assert response.status_code == 200
                body = response.json()
                bare = await client.get("/collect-data")
                assert bare.status_code == 200
                assert bare.json() == body["data"]
        finally:
            for name in DATA_FAULT_TABLES:
                await admin.execute(f"DROP TABLE IF EXISTS {prefix}_{name}")
    assert body["data"] == [
        {"id": 1, "name": None},
        {"id": 2, "name": "Test 2"},
        {"id": 3, "name": "Test 3"},
        {"id": 7, "name": "from dup_a"},
        {"id": 7, "name": "from dup_b"},
        {"id": 999, "name": "stray"},
    ]
    report = {s["name"]: s for s in body["sources"]}
    assert report["stray"]["out_of_range"] == 1
    assert report["empty"]["status"] == "ok"
    assert report["empty"]["rows"] == 0
    wrong_type = [s for s in body["sources"] if s["name"].startswith(("text_ids", "int_names"))]
    assert {(s["name"].split("_")[0], s["status"]) for s in wrong_type} == {
        ("text", "error"),
        ("int", "error"),
    }
    assert len(wrong_type) == 4  # each table read both raw and through the ORM
    # A text id column is refused by the server once the window is compared with
    # it, or by our row check; either way the source is an error, never a 500.
    reasons = {s["name"]: s["error"] for s in wrong_type}
    assert all(
        r.startswith(("SourceDataError: ", "UndefinedFunctionError: ")) for r in reasons.values()
    ), reasons
    assert all(r.startswith("SourceDataError: ") for n, r in reasons.items() if "int_names" in n)
    assert response.headers["Collection-Complete"] == "?0"


async def test_logs_and_health_are_tied_to_the_request_and_never_hold_passwords(
    reference_config: Config, tmp_path: Path
) -> None:
    secret = "s3cret-pw-never-shown"
    refused = f"postgresql://collector:{secret}@127.0.0.1:{pg.unused_port()}/x"
    config = Config(
        sources=(reference_config.sources[0], pg.source(reference_config, "source_2", dsn=refused)),
        timeout=2.0,
    )
    config_file = write_config(tmp_path / "c.toml", config)
    async with (
        running_server(["--config", str(config_file)]) as server,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        response = await client.get("/collect-data", headers={**ENVELOPE, "X-Request-Id": "req-42"})
        assert response.status_code == 200
        assert secret not in response.text
        metrics = await client.get("/metrics")
        assert secret not in metrics.text
        ready = await client.get("/readyz")
        assert ready.status_code == 200  # one source down is not "unready"
        assert [(s["name"], s["reachable"]) for s in ready.json()["sources"]] == [
            ("source_1", True),
            ("source_2", False),
        ]
        assert secret not in ready.text
        assert (await client.get("/livez")).json() == {"status": "alive"}
        await trio.sleep(0.2)  # let the access line reach the pipe
    entries = [json.loads(line) for line in server.output if line.startswith("{")]
    access = [
        e for e in entries if e["logger"] == "collector.access" and e["path"] == "/collect-data"
    ]
    assert len(access) == 1
    assert access[0]["request_id"] == "req-42"
    assert access[0]["status_code"] == 200
    assert access[0]["missing"] == ["source_2"]
    failed = [e for e in entries if e.get("source") == "source_2"]
    assert len(failed) == 1
    assert failed[0]["request_id"] == "req-42"
    assert failed[0]["status"] == "error"
    assert "ConnectionRefusedError" in failed[0]["reason"]
    assert not any(secret in line for line in server.output)
