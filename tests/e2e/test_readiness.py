"""/readyz through the real ``collector serve`` with black-holed sources.

The probe deadline itself is checked on Trio's clock in the unit tests; here the
statuses and codes a readiness probe sees are checked against real faults.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import httpx
import pytest

from service.config import Config
from service.core.breaker import BreakerSettings
from tests.e2e.conftest import proxied_service as serve_proxied
from tests.support.faultproxy import Mode, ProxyFactory

pytestmark = pytest.mark.e2e

proxied_service = partial(serve_proxied, timeout=1.0)


def statuses(ready: httpx.Response) -> dict[str, str]:
    return {s["name"]: s["status"] for s in ready.json()["sources"]}


async def test_a_black_holed_source_is_a_timeout_and_the_others_keep_it_ready(
    reference_config: Config, fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    async with proxied_service(reference_config, fault_proxy, tmp_path) as service:
        await service.proxies["source_1"].set_mode(Mode.BLACKHOLE)
        ready = await service.client.get("/readyz")
        assert ready.status_code == 200
        assert statuses(ready) == {"source_1": "timeout", "source_2": "ok", "source_3": "ok"}
        (hole,) = [s for s in ready.json()["sources"] if s["name"] == "source_1"]
        assert hole["error"] == "no answer within 0.5 s"
        for proxy in service.proxies.values():
            await proxy.set_mode(Mode.BLACKHOLE)
        unready = await service.client.get("/readyz")
        assert unready.status_code == 503
        assert unready.json()["status"] == "unavailable"
        assert set(statuses(unready).values()) == {"timeout"}


async def test_open_breakers_are_skipped_and_make_the_service_unready(
    reference_config: Config, fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    breaker = {"breaker": BreakerSettings(failures=1, cooldown=60.0)}
    overrides = {name: breaker for name in ("source_1", "source_2", "source_3")}
    async with proxied_service(reference_config, fault_proxy, tmp_path, **overrides) as service:
        for proxy in service.proxies.values():
            await proxy.set_mode(Mode.REFUSE)
        answer = await service.client.get("/collect-data")
        assert answer.json() == []
        for proxy in service.proxies.values():
            await proxy.set_mode(Mode.PASS)  # pings would answer again; breakers stay open
        ready = await service.client.get("/readyz")
        assert ready.status_code == 503
        assert set(statuses(ready).values()) == {"skipped"}
        assert {s["breaker"] for s in ready.json()["sources"]} == {"open"}
