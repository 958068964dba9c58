"""Load benchmark: /collect-data against the framework and database ceilings.

Run from the repository root (not part of the test suite; needs Debian's ``wrk``):

    uv run python bench/load.py [--duration 8] [--rounds 3] [--workers 1] [--dsn ...]

On the local PostgreSQL it creates the reference sources (three databases) and, for
the database ceiling, one more database holding the three tables. For each scenario
it starts ``collector serve`` exactly as a user would, drives it with wrk on
127.0.0.1 for a bounded time, and prints one table:

- /collect-data at 1 and 32 connections, with and without request coalescing;
- the framework ceiling: /livez (no database) on the same server, same workers,
  alternating with /collect-data at 32 connections for ``--rounds`` rounds;
- the database ceiling: pgbench running the three queries (prepared) at 32 clients;
- one source black-holed, with its breaker closed (never opens) and open;
- the ratios of /collect-data to both ceilings, measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import httpx
import trio
import trio_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.measure import Connection, cpu_seconds, get_request
from service.config import Config
from service.core.breaker import BreakerSettings
from service.sources.postgres.raw import select_window_sql
from tests.e2e.conftest import running_server, write_config
from tests.support import pg
from tests.support.faultproxy import FaultProxy, Mode

LUA = Path(__file__).with_name("complete.lua")
REFERENCE = Path(__file__).with_name("reference_asyncio.py")
CEILINGS = {
    False: "/livez (framework ceiling), 32",
    True: "/livez (framework ceiling), 32, 2nd server",
}
REFERENCE_CEILING = "plain asyncio: /livez, 32"
REFERENCE_COLLECT = "plain asyncio: /collect-data, 32"


@dataclasses.dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    incomplete: int | None
    cpu_ms: float | None


def parse_wrk(text: str) -> tuple[float, float, float, int, int | None, int]:
    def latency(pct: str) -> float:
        match = re.search(rf"{pct}%\s+([\d.]+)(us|ms|s)\b", text)
        if not match:
            return float("nan")
        value, unit = float(match[1]), match[2]
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text)[1])  # type: ignore[index]
    requests = int(re.search(r"(\d+) requests in", text)[1])  # type: ignore[index]
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        errors += int(match[1])
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    ):
        errors += sum(int(g) for g in match.groups())
    incomplete = None
    if match := re.search(r"incomplete_responses (\d+)", text):
        incomplete = int(match[1])
    return rps, latency("50"), latency("99"), errors, incomplete, requests


async def wrk(
    name: str, url: str, connections: int, duration: int, pid: int, *, count_incomplete: bool = True
) -> Result:
    before = cpu_seconds(pid)
    # Every run uses the script that counts incomplete answers, /livez included: the
    # client shares the two cores with the server, and its per-response work must be
    # the same on both sides of a ratio (without it on /livez, the ceiling gained 3-6%).
    command = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "--latency"]
    command += ["-s", str(LUA), url]
    if connections == 1:
        command[1] = "-t1"
    done = await trio.run_process(command, capture_stdout=True, capture_stderr=True)
    text = done.stdout.decode()
    rps, p50, p99, errors, incomplete, requests = parse_wrk(text)
    if not (url.endswith("/collect-data") and count_incomplete):
        incomplete = None  # only our /collect-data says whether it is complete
    cpu = (cpu_seconds(pid) - before) / requests * 1000 if requests else None
    return Result(name, rps, p50, p99, errors, incomplete, cpu)


def combined(name: str, runs: list[Result]) -> Result:
    """Several runs of one scenario as one row: mean throughput and CPU, median latencies."""
    cpu = [r.cpu_ms for r in runs if r.cpu_ms is not None]
    incomplete = [r.incomplete for r in runs if r.incomplete is not None]
    return Result(
        name,
        statistics.fmean(r.rps for r in runs),
        statistics.median(r.p50_ms for r in runs),
        statistics.median(r.p99_ms for r in runs),
        sum(r.errors for r in runs),
        sum(incomplete) if incomplete else None,
        statistics.fmean(cpu) if cpu else None,
    )


def spread(values: list[float]) -> str:
    """Median and range: ``0.88 (0.79-0.90)``."""
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


async def added_latency(base_url: str, samples: int = 300) -> float:
    """Median of (response time - slowest source's Server-Timing dur), 1 connection."""
    connection = Connection.to(base_url)
    request = get_request("/collect-data")
    try:
        added = [(await connection.get(request))[1] for _ in range(samples)]
    finally:
        await connection.aclose()
    return statistics.median(added)


async def trip_breakers(url: str, workers: int) -> None:
    """Enough timed-out requests for every worker's breaker to open (each has its own).

    Each round sends several requests at once on fresh connections, which the kernel
    spreads over the workers; a breaker opens after 5 failures in a row.
    """
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=fresh) as client:
        for _ in range(7):
            async with trio.open_nursery() as nursery:
                for _ in range(4 * workers):
                    nursery.start_soon(client.get, "/collect-data")


async def scenarios(config: Config, args: argparse.Namespace, workdir: Path) -> list[Result]:
    results: list[Result] = []
    extra = ["--workers", str(args.workers)]
    for coalesce in (False, True):
        cfg = dataclasses.replace(config, coalesce=coalesce)
        path = write_config(workdir / "load.toml", cfg, coalesce=coalesce)
        async with running_server(["--config", str(path), *extra]) as server:
            pid = server.process.pid
            url = f"{server.url}/collect-data"
            label = "coalescing" if coalesce else "no coalescing"
            if not coalesce:
                results.append(await wrk("/collect-data, 1 conn", url, 1, args.duration, pid))
                args.added_ms = await added_latency(server.url)
            # The ceiling and /collect-data alternate on the same server, round after
            # round: the machine's speed drifts by tens of percent over minutes, and a
            # ratio is only fair if both its figures saw the same machine.
            ceilings: list[Result] = []
            collects: list[Result] = []
            for _ in range(args.rounds):
                ceilings.append(await wrk("", f"{server.url}/livez", 32, args.duration, pid))
                collects.append(await wrk("", url, 32, args.duration, pid))
            args.ratios[coalesce] = [c.rps / f.rps for f, c in zip(ceilings, collects, strict=True)]
            results.append(combined(CEILINGS[coalesce], ceilings))
            results.append(combined(f"/collect-data, 32, {label}", collects))
    async with trio.open_nursery() as nursery:
        first = config.sources[0]
        proxy = FaultProxy(pg.server_address(first.dsn))
        port = await nursery.start(proxy.run)
        await proxy.set_mode(Mode.BLACKHOLE)
        for label, settings in (
            ("closed", BreakerSettings(failures=0)),
            ("open", BreakerSettings()),
        ):
            hole = dataclasses.replace(
                first, dsn=pg.through_proxy(first.dsn, port), breaker=settings
            )
            cfg = Config(
                sources=(hole, *config.sources[1:]), timeout=config.timeout, coalesce=False
            )
            path = write_config(workdir / "hole.toml", cfg, coalesce=False)
            async with running_server(["--config", str(path), *extra]) as server:
                if label == "open":
                    await trip_breakers(server.url, args.workers)
                result = await wrk(
                    f"/collect-data, 32, 1 black-holed, breaker {label}",
                    f"{server.url}/collect-data",
                    32,
                    args.duration,
                    server.process.pid,
                )
                result.incomplete = None  # incomplete by construction
                results.append(result)
        nursery.cancel_scope.cancel()
    results += await reference(config, args, workdir)
    return results


async def reference(config: Config, args: argparse.Namespace, workdir: Path) -> list[Result]:
    """The plain-asyncio build of the same service (bench/reference_asyncio.py), one process."""
    path = write_config(workdir / "reference.toml", config, coalesce=False)
    with socket.socket() as probe:  # a free port for it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    process = await trio.lowlevel.open_process(
        [sys.executable, str(REFERENCE), str(path), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            with trio.fail_after(30):
                while True:
                    try:
                        if (await client.get("/collect-data")).status_code == 200:
                            break
                    except httpx.TransportError:
                        await trio.sleep(0.2)
        return [
            await wrk(REFERENCE_CEILING, f"{url}/livez", 32, args.duration, process.pid),
            await wrk(
                REFERENCE_COLLECT,
                f"{url}/collect-data",
                32,
                args.duration,
                process.pid,
                count_incomplete=False,
            ),
        ]
    finally:
        process.terminate()
        await process.wait()


async def drop_pgbench_database(server_dsn: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute('DROP DATABASE IF EXISTS "collector_bench_pgbench" WITH (FORCE)')
    finally:
        await admin.close()


async def create_pgbench_database(config: Config, server_dsn: str) -> str:
    dsn = pg.with_database(server_dsn, "collector_bench_pgbench")
    await drop_pgbench_database(server_dsn)
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute('CREATE DATABASE "collector_bench_pgbench"')
    finally:
        await admin.close()
    connection = await asyncpg.connect(dsn)
    try:
        for k, source in enumerate(config.sources):
            await connection.execute(
                f"CREATE TABLE {source.table} (id INT PRIMARY KEY, name VARCHAR(255));"
                f"INSERT INTO {source.table} SELECT g, 'Test ' || g FROM generate_series(1, 60) g "
                f"WHERE (g - 1) / 10 % 3 = {k}"
            )
    finally:
        await connection.close()
    return dsn


def pgbench(config: Config, dsn: str, duration: int, workdir: Path) -> float:
    script = workdir / "collect.sql"
    script.write_text(
        "".join(
            select_window_sql(s.table)
            .replace("$1::bigint", "-9223372036854775808")
            .replace("$2::bigint", "9223372036854775807")
            .replace("$3::bigint", "NULL")
            + ";\n"
            for s in config.sources
        )
    )
    done = subprocess.run(
        [
            "pgbench",
            "-n",
            "-M",
            "prepared",
            "-c",
            "32",
            "-j",
            "2",
            "-T",
            str(duration),
            "-f",
            str(script),
            dsn,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(re.search(r"tps = ([\d.]+)", done.stdout)[1])  # type: ignore[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="ceiling/collect pairs per server")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--dsn", default=pg.LOCAL_DSN)
    args = parser.parse_args()
    args.ratios = {}
    with pg.reference_databases(args.dsn) as config, tempfile.TemporaryDirectory() as workdir:
        results = trio.run(scenarios, config, args, Path(workdir))
        bench_dsn = trio_asyncio.run(
            trio_asyncio.aio_as_trio(create_pgbench_database), config, args.dsn
        )
        try:
            db_tps = pgbench(config, bench_dsn, args.duration, Path(workdir))
        finally:
            trio_asyncio.run(trio_asyncio.aio_as_trio(drop_pgbench_database), args.dsn)
    print(f"\nworkers={args.workers}, {args.duration} s per run, wrk -t2 on 127.0.0.1\n")
    columns = f"| {'scenario':<46} | {'req/s':>7} | {'p50 ms':>7} | {'p99 ms':>7} |"
    print(columns + " errors | incomplete | CPU ms/req |")
    print(f"|{'-' * 48}|{'-' * 9}|{'-' * 9}|{'-' * 9}|--------|------------|------------|")
    for r in results:
        inc = "-" if r.incomplete is None else str(r.incomplete)
        cpu = "-" if r.cpu_ms is None else f"{r.cpu_ms:.2f}"
        numbers = f"{r.rps:7.1f} | {r.p50_ms:7.1f} | {r.p99_ms:7.1f} | {r.errors:6d}"
        print(f"| {r.name:<46} | {numbers} | {inc:>10} | {cpu:>10} |")
    print(f"| {'pgbench, 3 prepared queries (database ceiling)':<46} | {db_tps:7.1f} |")
    by = {r.name: r for r in results}
    rounds = args.rounds
    print(f"\n/livez and /collect-data at 32 connections alternate, {rounds} rounds per server;")
    print("a ratio is the median of the rounds' own ratios (range in brackets)")
    for coalesce, label in ((False, "no coalescing"), (True, "coalescing")):
        rps = by[f"/collect-data, 32, {label}"].rps
        print(
            f"\n/collect-data at 32, {label}: {spread(args.ratios[coalesce])} of the framework "
            f"ceiling, {rps / db_tps:.2f} of the database ceiling"
        )
    healthy = by["/collect-data, 32, no coalescing"].rps
    opened = by["/collect-data, 32, 1 black-holed, breaker open"].rps
    print(f"black-holed source, breaker open: {opened / healthy:.2f} of the healthy figure")
    plain = by[REFERENCE_COLLECT].rps
    print(
        f"plain-asyncio build of the same service (bench/reference_asyncio.py): {plain:.0f} "
        f"req/s, {plain / by[REFERENCE_CEILING].rps:.2f} of its own framework ceiling; "
        f"collector: {healthy / plain:.2f}x that without coalescing, "
        f"{by['/collect-data, 32, coalescing'].rps / plain:.2f}x with"
    )
    print(f"median added latency over the slowest source, 1 connection: {args.added_ms:.2f} ms")


if __name__ == "__main__":
    main()
