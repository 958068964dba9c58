"""Measure two promises of ``collector serve``: stray rows are never pruned away, and
``/readyz`` answers within its probe deadline when a source is black-holed.

Run from the repository root (not part of the test suite):

    uv run python bench/readiness.py [--requests N] [--dsn postgresql://...]

It creates the three reference databases on the server (default 127.0.0.1:5432),
adds ``(1000, 'x')`` and ``(2147483647, 'y')`` to ``source_1`` (declared 1-10 and
31-40), starts the real ``collector serve`` (deadline 2 s) and walks
``/collect-data?limit=10`` by its next links, counting the distinct rows it yields
against the rows the tables hold. Then, with every source behind the test suite's
TCP fault proxy, it black-holes ``source_1`` and times ``N`` sequential ``/readyz``
requests. The databases are dropped after.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from pathlib import Path

import httpx
import trio
import trio_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.config import Config
from service.sources.bridge import AsyncioBridge
from tests.e2e.conftest import proxied_service, serving
from tests.support import pg
from tests.support.faultproxy import Mode

STRAY = [(1000, "x"), (2147483647, "y")]
_NEXT = re.compile(r"<(?P<href>[^>]+)>; rel=\"next\"")


async def walk(client: httpx.AsyncClient, limit: int) -> list[int]:
    """Every id a client gets by following next links from the first page."""
    seen: list[int] = []
    href: str | None = f"/collect-data?limit={limit}"
    while href is not None:
        response = await client.get(href)
        seen += [row["id"] for row in response.json()]
        found = _NEXT.search(response.headers.get("Link", ""))
        href = found["href"] if found else None
    return seen


async def stray_rows(config: Config, workdir: Path) -> None:
    source = pg.source(config, "source_1")
    async with trio_asyncio.open_loop() as loop:
        bridge = AsyncioBridge(loop)
        async with pg.admin(bridge, source.dsn) as admin:
            for row_id, name in STRAY:
                await admin.execute(f"INSERT INTO {source.table} VALUES ($1, $2)", row_id, name)
    async with serving(config, workdir) as (_, client):
        walked = await walk(client, 10)
        after = await client.get("/collect-data?after=60")
        one = await client.get("/collect-data/1000")
        every = await client.get("/collect-data")
    held = len(every.json())
    print(f"walk ?limit=10: {len(set(walked))} of {held} rows ({len(walked)} yielded)")
    print(f"?after=60: {len(after.json())} rows; /collect-data/1000: {one.status_code}")


async def readyz_latency(config: Config, workdir: Path, requests: int) -> None:
    async with trio.open_nursery() as nursery:
        factory = pg.proxy_factory(nursery)
        async with proxied_service(config, factory, workdir, timeout=2.0) as svc:
            await svc.client.get("/collect-data")  # pools hold open connections
            await svc.proxies["source_1"].set_mode(Mode.BLACKHOLE)
            timings: list[float] = []
            codes: set[int] = set()
            for _ in range(requests):
                start = trio.current_time()
                response = await svc.client.get("/readyz")
                timings.append((trio.current_time() - start) * 1000)
                codes.add(response.status_code)
            await svc.proxies["source_1"].set_mode(Mode.PASS)
        nursery.cancel_scope.cancel()
    print(
        f"/readyz, source_1 black-holed: median {statistics.median(timings):.0f} ms, "
        f"max {max(timings):.0f} ms over {requests} requests, status {sorted(codes)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--dsn", default=pg.LOCAL_DSN)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as workdir,
        pg.reference_databases(args.dsn) as config,
    ):
        trio.run(stray_rows, config, Path(workdir))
    with (
        tempfile.TemporaryDirectory() as workdir,
        pg.reference_databases(args.dsn) as config,
    ):
        trio.run(readyz_latency, config, Path(workdir), args.requests)


if __name__ == "__main__":
    main()
