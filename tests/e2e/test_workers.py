"""Several worker processes behind one socket serve one truthful ``/metrics``."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import trio

from service.config import DEFAULT_SERVER_CONNECTIONS, Config
from tests.e2e.conftest import running_server, write_config

REQUESTS = 40
SCRAPES = 8


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 if absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        metric, _, value = line.rpartition(" ")
        if metric == (f"{name}{{{wanted}}}" if labels else name):
            return float(value)
    return 0.0


async def fresh_connection_get(url: str, path: str) -> httpx.Response:
    """One request on a connection of its own, so the kernel may pick any worker."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await client.get(path, headers={"Connection": "close"})


async def test_every_scrape_counts_the_requests_of_every_worker(
    reference_config: Config, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "collector.toml", reference_config, coalesce=False)
    async with running_server(["--config", str(config), "--workers", "2"]) as server:
        # Requests arrive in concurrent bursts, so that both workers take some; on a
        # busy machine one worker may take a whole burst, so bursts go on (bounded)
        # until the access log shows both.
        async def one(index: int) -> None:
            response = await fresh_connection_get(server.url, f"/no-such-page-{index}")
            assert response.status_code == 404

        sent = 0
        while sent < REQUESTS or (len(served_by(server.output)) < 2 and sent < 10 * REQUESTS):
            async with trio.open_nursery() as nursery:
                for index in range(8):
                    nursery.start_soon(one, sent + index)
            sent += 8
        scrapes = []
        for _ in range(SCRAPES):
            response = await fresh_connection_get(server.url, "/metrics")
            assert response.status_code == 200
            scrapes.append(response.text)
        workers = served_by(server.output)
    for text in scrapes:
        assert sample(text, "collector_http_responses_total", code="404") == sent, text
        assert sample(text, "collector_requests_in_flight") >= 1  # the scrape itself
        assert sample(text, "collector_breaker_state", source="source_1") == 0
        # Each worker holds half of the server's budget; the scrape shows the whole.
        assert budget_limits(text) == [DEFAULT_SERVER_CONNECTIONS], text
    assert len(workers) == 2, "the requests did not reach both workers"


def budget_limits(text: str) -> list[float]:
    """The ``limit`` sample of each server in ``collector_server_connections``."""
    return [
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.startswith("collector_server_connections{") and 'state="limit"' in line
    ]


def served_by(output: list[str]) -> set[int]:
    """The pids of the workers whose access log shows a request for a missing page."""
    return {
        entry["pid"]
        for line in output
        if line.startswith("{")
        and (entry := json.loads(line))["logger"] == "collector.access"
        and entry["path"].startswith("/no-such-page")
    }
