"""Measure ``collector serve`` under every kind of source fault, and its breakers.

Run from the repository root (not part of the test suite):

    uv run python bench/deadline.py [--requests N] [--dsn postgresql://...] [--mysql-dsn ...]

It creates the three reference databases on the server (default 127.0.0.1:5432),
starts the real ``collector serve`` (deadline 2 s, default breakers) for each
scenario with every source behind the test suite's TCP fault proxy, and sends
sequential requests over HTTP. The first request of a scenario runs before the
fault (so pools hold open connections, as in production); the timed ones after.
A scenario then measures how long a breaker takes to open and to recover, and one
how fast ``Prefer: wait=0.5`` is answered with one source black-holed (its breaker
never opening, so every request waits for it), for every answer shape. When MariaDB
answers (default 127.0.0.1:3306), the MariaDB rows follow: source_3 moves to
MariaDB, read raw or through the ORM beside the two PostgreSQL sources, and every
fault is injected on it (its table lock is ``LOCK TABLES ... WRITE``).
Everything runs on 127.0.0.1 and stops by itself; the databases are dropped after.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import trio
import trio_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.config import Access, Config
from service.core.breaker import BreakerSettings
from service.sources.bridge import AsyncioBridge
from tests.e2e.conftest import ProxiedService, fault_on, proxied_service
from tests.support import mysql, pg
from tests.support.faultproxy import Mode

#: Fault names as the test suite's ``fault_on`` knows them, and how they print.
FAULTS = {
    "blackhole": "blackhole",
    "delay": "delay 5 s/chunk",
    "reset": "reset",
    "refuse": "refuse",
    "lock": "table lock",
}
SCENARIOS = [
    *((fault, source) for fault in FAULTS for source in ("source_1", "source_2")),
    ("blackhole", "all"),
]
ACCESS = {"source_1": "raw", "source_2": "orm", "source_3": "raw"}
MARIADB_SCENARIOS = [(fault, access) for fault in FAULTS for access in ("raw", "orm")]


@asynccontextmanager
async def service(config: Config, workdir: Path) -> AsyncIterator[ProxiedService]:
    """``collector serve`` with every source behind a fault proxy."""
    async with trio.open_nursery() as nursery:
        factory = pg.proxy_factory(nursery)
        async with proxied_service(config, factory, workdir, timeout=config.timeout) as svc:
            yield svc
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def fault(
    kind: str, target: str, svc: ProxiedService, bridge: AsyncioBridge
) -> AsyncIterator[None]:
    names = list(svc.proxies) if target == "all" else [target]
    async with AsyncExitStack() as stack:
        for name in names:
            source = pg.source(svc.config, name)
            await stack.enter_async_context(
                fault_on(kind, svc.proxies[name], source, bridge, delay=5.0)
            )
        yield


def outcomes(response: httpx.Response) -> str:
    parts = [p.split(";") for p in response.headers["server-timing"].split(", ")]
    return ", ".join(p[2].removeprefix('desc="').removesuffix('"') for p in parts)


def header() -> None:
    columns = ("min ms", "median", "max ms")
    print(
        f"{'fault':<17} {'source':<22} " + " ".join(f"{c:>7}" for c in columns) + " rows  outcomes"
    )


async def timed(
    config: Config, kind: str, target: str, requests: int, workdir: Path, bridge: AsyncioBridge
) -> tuple[list[float], httpx.Response]:
    """Milliseconds of each timed request under the fault, and the last answer."""
    async with service(config, workdir) as svc:
        await svc.client.get("/collect-data")
        async with fault(kind, target, svc, bridge):
            times, last = [], None
            for _ in range(requests):
                start = trio.current_time()
                last = await svc.client.get("/collect-data")
                times.append((trio.current_time() - start) * 1000)
    assert last is not None
    return times, last


def report(kind: str, label: str, times: list[float], last: httpx.Response) -> None:
    print(
        f"{FAULTS[kind]:<17} {label:<22} {min(times):7.1f} {statistics.median(times):7.1f} "
        f"{max(times):7.1f} {len(last.json()):4d}  {outcomes(last)}"
    )


async def measure_faults(config: Config, requests: int, workdir: Path) -> None:
    header()
    async with trio_asyncio.open_loop() as loop:
        bridge = AsyncioBridge(loop)
        for kind, target in SCENARIOS:
            times, last = await timed(config, kind, target, requests, workdir, bridge)
            label = target if target == "all" else f"{target} ({ACCESS[target]})"
            report(kind, label, times, last)


async def measure_mariadb_faults(
    config: Config, maria: Config, requests: int, workdir: Path
) -> float:
    """The same faults on a MariaDB source_3 beside two PostgreSQL sources; the worst ms."""
    print("\nsource_3 on MariaDB, source_1 and source_2 on PostgreSQL\n")
    header()
    worst = 0.0
    async with trio_asyncio.open_loop() as loop:
        bridge = AsyncioBridge(loop)
        for kind, access in MARIADB_SCENARIOS:
            third = pg.source(maria, "source_3", access=Access(access))
            mixed = dataclasses.replace(config, sources=(*config.sources[:2], third))
            times, last = await timed(mixed, kind, "source_3", requests, workdir, bridge)
            report(kind, f"source_3 (MariaDB {access})", times, last)
            worst = max(worst, *times)
    return worst


async def measure_breaker(config: Config, workdir: Path) -> None:
    """Seconds until a black-holed source's breaker opens, and until it closes again."""
    envelope = {"Accept": "application/vnd.collector.envelope+json"}
    async with service(config, workdir) as svc:
        await svc.client.get("/collect-data")
        await svc.proxies["source_1"].set_mode(Mode.BLACKHOLE)
        start, failed = trio.current_time(), 0
        while True:
            body = (await svc.client.get("/collect-data", headers=envelope)).json()
            if body["sources"][0]["status"] == "skipped":
                break
            failed += 1
        opened = trio.current_time() - start
        await svc.proxies["source_1"].set_mode(Mode.PASS)
        cleared, polls = trio.current_time(), 0
        while True:
            polls += 1
            body = (await svc.client.get("/collect-data", headers=envelope)).json()
            if body["sources"][0]["status"] == "ok":
                break
            await trio.sleep(0.25)
        recovered = trio.current_time() - cleared
    print(
        f"\nbreaker (defaults): opened after {failed} timed-out requests, {opened:.1f} s after "
        f"the fault began;\n  closed {recovered:.1f} s after the fault cleared "
        f"(cool-down 10 s from opening; {polls} requests polled every 0.25 s)"
    )


#: (label, path, Accept) of the answer shapes ``Prefer: wait`` is measured for.
WAIT_SHAPES = [
    ("list", "/collect-data", "application/json"),
    ("envelope", "/collect-data", "application/vnd.collector.envelope+json"),
    ("page of 5", "/collect-data?limit=5", "application/json"),
    ("one id (503)", "/collect-data/5", "application/json"),
    ("stream", "/collect-data", "application/x-ndjson"),
]


async def measure_wait(config: Config, requests: int, workdir: Path, wait: float = 0.5) -> None:
    """Milliseconds to answer ``Prefer: wait`` with source_1 black-holed, per answer shape."""
    async with trio.open_nursery() as nursery:
        factory = pg.proxy_factory(nursery)
        async with proxied_service(
            config,
            factory,
            workdir,
            timeout=config.timeout,
            proxied=("source_1",),
            source_1={"breaker": BreakerSettings(failures=0)},
        ) as svc:
            await svc.client.get("/collect-data")
            await svc.proxies["source_1"].set_mode(Mode.BLACKHOLE)
            print(
                f"\nPrefer: wait={wait:g}, source_1 black-holed (breaker never opens), "
                f"{requests} requests per shape"
            )
            print(f"{'answer':<14} {'min ms':>7} {'median':>7} {'max ms':>7}  status applied")
            for label, path, accept in WAIT_SHAPES:
                times, last = [], None
                for _ in range(requests):
                    start = trio.current_time()
                    last = await svc.client.get(
                        path, headers={"Prefer": f"wait={wait:g}", "Accept": accept}
                    )
                    times.append((trio.current_time() - start) * 1000)
                assert last is not None
                print(
                    f"{label:<14} {min(times):7.1f} {statistics.median(times):7.1f} "
                    f"{max(times):7.1f}  {last.status_code}    "
                    f"{last.headers.get('preference-applied')}"
                )
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5, help="timed requests per scenario")
    parser.add_argument(
        "--only-wait", action="store_true", help="measure only Prefer: wait (the last table)"
    )
    parser.add_argument("--dsn", default=pg.LOCAL_DSN, help="server to create the sources on")
    parser.add_argument("--mysql-dsn", default=mysql.LOCAL_DSN, help="MariaDB for source_3")
    parser.add_argument("--only-mariadb", action="store_true", help="just the MariaDB rows")
    args = parser.parse_args()
    with pg.reference_databases(args.dsn) as config, tempfile.TemporaryDirectory() as workdir:
        print(f"deadline {config.timeout:g} s, {args.requests} sequential requests per scenario\n")
        if not (args.only_wait or args.only_mariadb):
            trio.run(measure_faults, config, args.requests, Path(workdir))
            trio.run(measure_breaker, config, Path(workdir))
        if not args.only_mariadb:
            trio.run(measure_wait, config, max(args.requests, 20), Path(workdir))
        if args.only_wait:
            return
        parts = urlsplit(args.mysql_dsn)
        if not pg.answers(parts.hostname or "127.0.0.1", parts.port or 3306):
            print("\nMariaDB does not answer: no MariaDB rows")
            return
        with mysql.reference_databases(args.mysql_dsn) as maria:
            worst = trio.run(measure_mariadb_faults, config, maria, args.requests, Path(workdir))
        print(f"\nworst case over every MariaDB fault: {worst:.1f} ms")


if __name__ == "__main__":
    main()
