"""``Prefer: wait=0.5`` through the real ``collector serve``, one source black-holed.

The deadline is 2 s; a client that can wait half a second gets its answer within
0.55 s, with the black-holed source reported missing, whatever the answer's shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from service.config import Config
from tests.e2e.conftest import proxied_service
from tests.support.faultproxy import Mode, ProxyFactory

pytestmark = pytest.mark.e2e

DEADLINE = 2.0
WAIT = 0.5
#: The target: answered within the wait plus 50 ms.
WITHIN = 0.55
#: (path, Accept, expected status): a list, the envelope, a page, one id, a stream.
SHAPES = [
    ("/collect-data", "application/json", 200),
    ("/collect-data", "application/vnd.collector.envelope+json", 200),
    ("/collect-data?limit=5", "application/json", 200),
    ("/collect-data/5", "application/json", 503),  # only source_1 may hold id 5
    ("/collect-data", "application/x-ndjson", 200),
]


async def timed(
    client: httpx.AsyncClient, path: str, **headers: str
) -> tuple[httpx.Response, float]:
    start = trio.current_time()
    response = await client.get(path, headers=headers)
    return response, trio.current_time() - start


def missing(response: httpx.Response) -> list[str]:
    """The sources the answer says are missing, whatever its shape."""
    if response.headers["content-type"] == "application/x-ndjson":
        summary = json.loads(response.text.splitlines()[-1])
        return [s["name"] for s in summary["sources"] if s["status"] == "timeout"]
    if response.status_code == 503:
        return [s["name"] for s in response.json()["sources"] if s["status"] == "timeout"]
    header = response.headers["Collection-Missing"]
    return [item.split(";")[0].strip('"') for item in header.split(", ")]


@pytest.mark.parametrize("coalesce", [True, False], ids=["coalesced", "direct"])
async def test_wait_half_a_second_is_answered_within_550_ms_with_a_black_holed_source(
    reference_config: Config, fault_proxy: ProxyFactory, tmp_path: Path, coalesce: bool
) -> None:
    async with proxied_service(
        reference_config,
        fault_proxy,
        tmp_path,
        timeout=DEADLINE,
        proxied=("source_1",),
        coalesce=coalesce,
    ) as service:
        warm, _ = await timed(service.client, "/collect-data")
        assert warm.headers["Collection-Complete"] == "?1"
        await service.proxies["source_1"].set_mode(Mode.BLACKHOLE)
        for path, accept, status in SHAPES:
            response, elapsed = await timed(
                service.client, path, Prefer=f"wait={WAIT}", Accept=accept
            )
            assert elapsed <= WITHIN, (path, accept, elapsed)
            assert response.status_code == status, (path, accept)
            assert response.headers["Preference-Applied"] == f"wait={WAIT}"
            assert missing(response) == ["source_1"], (path, accept)
        strict, elapsed = await timed(
            service.client, "/collect-data", Prefer=f"handling=strict, wait={WAIT}"
        )
        assert elapsed <= WITHIN
        assert strict.status_code == 503
        assert strict.headers["Preference-Applied"] == f"handling=strict, wait={WAIT}"
