"""Measure response times of ``collector serve`` under each kind of source fault.

Run from the repository root (not part of the test suite):

    uv run python bench/deadline.py [--requests N] [--dsn postgresql://...]

It creates three reference databases on the server (default: 127.0.0.1:5432),
starts the real ``collector serve`` for each scenario, sends N sequential requests
over HTTP and prints the wall-clock response times and the Server-Timing outcomes.
Everything runs on 127.0.0.1 and stops by itself; the databases are dropped after.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.config import Config
from tests.e2e.conftest import running_server, write_config
from tests.support import pg
from tests.support.faultproxy import FaultProxy, Mode


async def proxied(nursery: trio.Nursery, dsn: str, mode: Mode) -> str:
    proxy = FaultProxy(pg.server_address(dsn))
    port = await nursery.start(proxy.run)
    await proxy.set_mode(mode)
    return pg.through_proxy(dsn, port)


@asynccontextmanager
async def scenario(
    name: str, config: Config, stack: AsyncExitStack, nursery: trio.Nursery
) -> AsyncIterator[Config]:
    first, second, third = config.sources
    if name == "healthy":
        yield config
    elif name == "locked table (raw)":
        async with trio_asyncio_bridge() as bridge, pg.locked_table(bridge, first.dsn, first.table):
            yield config
    elif name == "locked table (orm)":
        async with (
            trio_asyncio_bridge() as bridge,
            pg.locked_table(bridge, second.dsn, second.table),
        ):
            yield config
    elif name == "black hole + refused":
        hole = pg.source(config, "source_1", dsn=await proxied(nursery, first.dsn, Mode.BLACKHOLE))
        refused = pg.source(
            config, "source_2", dsn=f"postgresql://postgres@127.0.0.1:{pg.unused_port()}/x"
        )
        yield Config(sources=(hole, refused, third), timeout=config.timeout)
    elif name == "unknown host":
        unknown = pg.source(config, "source_1", dsn="postgresql://postgres@no-such-host.invalid/x")
        yield Config(sources=(unknown, second, third), timeout=config.timeout)
    elif name == "every source black-holed":
        holes = [
            pg.source(config, s.name, dsn=await proxied(nursery, s.dsn, Mode.BLACKHOLE))
            for s in config.sources
        ]
        yield Config(sources=tuple(holes), timeout=config.timeout)
    else:
        raise ValueError(name)


@asynccontextmanager
async def trio_asyncio_bridge() -> AsyncIterator[object]:
    import trio_asyncio

    from service.sources.bridge import AsyncioBridge

    async with trio_asyncio.open_loop() as loop:
        yield AsyncioBridge(loop)


SCENARIOS = [
    "healthy",
    "locked table (raw)",
    "locked table (orm)",
    "black hole + refused",
    "unknown host",
    "every source black-holed",
]


async def measure(config: Config, requests: int, workdir: Path) -> None:
    print(f"{'scenario':<26} {'min ms':>8} {'median':>8} {'max ms':>8} {'rows':>5}  outcomes")
    for name in SCENARIOS:
        async with AsyncExitStack() as stack, trio.open_nursery() as nursery:
            faulty = await stack.enter_async_context(scenario(name, config, stack, nursery))
            config_file = write_config(workdir / "bench.toml", faulty)
            server = await stack.enter_async_context(running_server(["--config", str(config_file)]))
            client = await stack.enter_async_context(
                httpx.AsyncClient(base_url=server.url, timeout=30)
            )
            times, rows, outcomes = [], 0, ""
            for _ in range(requests):
                start = trio.current_time()
                response = await client.get("/collect-data")
                times.append((trio.current_time() - start) * 1000)
                rows = len(response.json())
                outcomes = ", ".join(
                    f"{p.split(';')[0]}={p.split('desc=')[1].strip(chr(34))}"
                    for p in response.headers["server-timing"].split(", ")
                )
            await stack.aclose()
            nursery.cancel_scope.cancel()
        print(
            f"{name:<26} {min(times):8.1f} {statistics.median(times):8.1f} "
            f"{max(times):8.1f} {rows:5d}  {outcomes}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5, help="requests per scenario")
    parser.add_argument("--dsn", default=pg.LOCAL_DSN, help="server to create the sources on")
    args = parser.parse_args()
    with pg.reference_databases(args.dsn) as config, tempfile.TemporaryDirectory() as workdir:
        print(f"deadline {config.timeout:g} s, {args.requests} sequential requests per scenario")
        trio.run(measure, config, args.requests, Path(workdir))


if __name__ == "__main__":
    main()
