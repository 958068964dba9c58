"""Rows outside a source's declared ids, through the real ``collector serve``.

The service checks each declaration against its table before serving and then
periodically; a source caught holding rows outside its ranges is never pruned,
and says so in /readyz, /metrics and the log.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from service.config import Config
from service.sources.bridge import AsyncioBridge
from tests.e2e.conftest import serving
from tests.support import pg

pytestmark = pytest.mark.e2e

STRAY = [(1000, "x"), (2147483647, "y")]
REFERENCE = list(range(1, 61))
_NEXT = re.compile(r"<(?P<href>[^>]+)>; rel=\"next\"")


@pytest.fixture(scope="module")
def own_reference(postgres_dsn: str) -> Iterator[Config]:
    """Reference databases for this module alone: its tests add rows to them."""
    with pg.reference_databases(postgres_dsn) as config:
        yield config


async def set_stray_rows(bridge: AsyncioBridge, config: Config, present: bool) -> None:
    """Add (or remove) the stray rows of source_1, which declares 1-10 and 31-40."""
    source = pg.source(config, "source_1")
    async with pg.admin(bridge, source.dsn) as admin:
        for row_id, name in STRAY:
            if present:
                await admin.execute(f"INSERT INTO {source.table} VALUES ($1, $2)", row_id, name)
            else:
                await admin.execute(f"DELETE FROM {source.table} WHERE id = $1", row_id)


async def walk(client: httpx.AsyncClient, limit: int) -> list[int]:
    """Every id a client gets by following next links from the first page."""
    seen: list[int] = []
    href: str | None = f"/collect-data?limit={limit}"
    while href is not None:
        response = await client.get(href)
        assert response.status_code == 200
        seen += [row["id"] for row in response.json()]
        found = _NEXT.search(response.headers.get("Link", ""))
        href = found["href"] if found else None
    return seen


def ids_states(ready: httpx.Response) -> dict[str, str | None]:
    return {s["name"]: s["ids"] for s in ready.json()["sources"]}


async def until_ids_state(client: httpx.AsyncClient, state: str) -> None:
    """Poll /readyz until source_1's ids state is ``state`` (within 10 s)."""
    for _ in range(100):
        if ids_states(await client.get("/readyz"))["source_1"] == state:
            return
        await trio.sleep(0.1)
    pytest.fail(f"source_1 never became {state}")


async def test_rows_outside_the_declared_ids_are_served_by_pages_and_lookups(
    own_reference: Config, tmp_path: Path, asyncio_bridge: AsyncioBridge
) -> None:
    await set_stray_rows(asyncio_bridge, own_reference, present=True)
    try:
        async with serving(own_reference, tmp_path) as (server, client):
            after = await client.get("/collect-data?after=60")
            assert after.json() == [{"id": 1000, "name": "x"}, {"id": 2147483647, "name": "y"}]
            assert after.headers["Collection-Complete"] == "?1"
            one = await client.get("/collect-data/1000")
            assert one.status_code == 200
            assert one.json() == {"id": 1000, "name": "x"}
            # The verified sources are still pruned; the violated one is asked.
            assert one.headers["Server-Timing"].count('desc="pruned"') == 2
            walked = await walk(client, 10)
            assert sorted(walked) == [*REFERENCE, 1000, 2147483647]
            assert len(walked) == len(set(walked)) == 62
            ready = await client.get("/readyz")
            assert ids_states(ready) == {
                "source_1": "violated",
                "source_2": "verified",
                "source_3": "verified",
            }
            metrics = (await client.get("/metrics")).text
            assert 'collector_source_ids_state{source="source_1"} 2.0' in metrics
            assert 'collector_source_ids_state{source="source_2"} 0.0' in metrics
            await trio.sleep(0.2)  # let the log lines reach the pipe
    finally:
        await set_stray_rows(asyncio_bridge, own_reference, present=False)
    entries = [json.loads(line) for line in server.output if line.startswith("{")]
    violations = [e for e in entries if e.get("ids_state") == "violated"]
    assert [(e["source"], e["lowest_outside"]) for e in violations] == [("source_1", 1000)]


async def test_the_periodic_check_notices_rows_added_and_removed_while_serving(
    own_reference: Config, tmp_path: Path, asyncio_bridge: AsyncioBridge
) -> None:
    config = dataclasses.replace(own_reference, ids_check_interval=0.2)
    async with serving(config, tmp_path) as (server, client):
        assert ids_states(await client.get("/readyz"))["source_1"] == "verified"
        assert (await client.get("/collect-data?after=60")).json() == []
        await set_stray_rows(asyncio_bridge, own_reference, present=True)
        try:
            await until_ids_state(client, "violated")
            assert len((await client.get("/collect-data?after=60")).json()) == 2
        finally:
            await set_stray_rows(asyncio_bridge, own_reference, present=False)
        await until_ids_state(client, "verified")
        one = await client.get("/collect-data/1000")
        assert one.status_code == 404
        assert one.headers["Server-Timing"].count('desc="pruned"') == 3
        await trio.sleep(0.2)
    entries = [json.loads(line) for line in server.output if line.startswith("{")]
    transitions = [
        e["ids_state"] for e in entries if e.get("source") == "source_1" and "ids_state" in e
    ]
    assert transitions == ["verified", "violated", "verified"]
