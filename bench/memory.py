"""Memory benchmark: the server's RSS after repeated large plain answers.

Run from the repository root (not part of the test suite):

    uv run python bench/memory.py [--rows 1000000] [--requests 12] [--small 2000]
        [--dsn ...] [--keep] [--env PYTHONMALLOC=malloc]

It creates one source database with N rows on the local PostgreSQL (the first source
of ``bench/scale.py``'s layout), starts the real ``collector serve`` on it with a 30 s
deadline, asks ``GET /collect-data`` (the whole list as one JSON body) the given
number of times, and prints the server's resident memory when idle, after each answer
and a second after the last one, with the median time of an answer. Then it times
``--small`` sequential one-row pages (``?limit=1``), to show what the allocator costs
a busy service. The database is dropped afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio
import trio_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scale import RUN, create, drop, layout
from service.config import Config
from tests.e2e.conftest import running_server, write_config
from tests.support import pg


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def measure(
    config: Config, requests: int, small: int, workdir: Path, env: dict[str, str]
) -> None:
    config_file = write_config(workdir / "memory.toml", config)
    async with (
        running_server(["--config", str(config_file)], env=env) as server,
        httpx.AsyncClient(base_url=server.url, timeout=600) as client,
    ):
        pid = server.process.pid
        await client.get("/collect-data?limit=1")  # open the pool
        idle = rss_mb(pid)
        print(f"idle: {idle:.0f} MB")
        durations = []
        for index in range(requests):
            start = time.perf_counter()
            response = await client.get("/collect-data")
            durations.append(time.perf_counter() - start)
            assert response.status_code == 200, response.text[:200]
            assert response.headers["collection-complete"] == "?1"
            print(
                f"after answer {index + 1:2} ({len(response.content) / 1e6:.1f} MB): "
                f"{rss_mb(pid):.0f} MB"
            )
        await trio.sleep(1)
        final = rss_mb(pid)
        print(f"a second later: {final:.0f} MB ({final - idle:+.0f} MB over idle)")
        if durations:
            print(f"median large answer: {statistics.median(durations) * 1000:.0f} ms")
        if small:
            start = time.perf_counter()
            for _ in range(small):
                response = await client.get("/collect-data?limit=1")
                assert response.status_code == 200, response.text[:200]
            elapsed = time.perf_counter() - start
            print(f"{small} one-row pages: {small / elapsed:.0f} req/s (sequential)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--small", type=int, default=2000, help="one-row pages to time")
    parser.add_argument("--dsn", default=pg.LOCAL_DSN, help="server to create the source on")
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the database")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment for the server, e.g. MALLOC_ARENA_MAX=1 (repeatable)",
    )
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    rows = args.rows // RUN * RUN
    full = layout(args.dsn, rows)
    config = dataclasses.replace(full, sources=full.sources[:1], timeout=30.0, coalesce=False)
    trio_asyncio.run(trio_asyncio.aio_as_trio(create), config, args.dsn, rows)
    print(f"1 source x {rows:,} rows, {args.requests} plain requests, env {env or 'unchanged'}")
    try:
        with tempfile.TemporaryDirectory() as workdir:
            trio.run(measure, config, args.requests, args.small, Path(workdir), env)
    finally:
        if not args.keep:
            trio_asyncio.run(trio_asyncio.aio_as_trio(drop), config, args.dsn)


if __name__ == "__main__":
    main()
