"""Fan-out benchmark: N source databases on one PostgreSQL server, N = 1 ... 256.

Run from the repository root (not part of the test suite; needs Debian's ``wrk``):

    uv run python bench/fanout.py [--sizes 1,3,16,64,256] [--duration 6] [--dsn ...] [--keep]

It creates up to max(N) databases on the local PostgreSQL (``collector_fanout_k``,
a table of 20 rows each, reused by later runs with ``--keep``), and for each N
serves the first N of them (half raw, half ORM, coalescing off) with the real
``collector serve`` and drives ``/collect-data`` with wrk on 127.0.0.1, at 1 and at
16 connections. For each run it prints requests/s, p50, p99, the share of complete
answers, the service's CPU per request and per source, the peak number of
connections the service held on the server (sampled from ``pg_stat_activity``),
and how many "too many clients" refusals the server logged meanwhile; then, at 1
connection, the median latency ``/collect-data`` adds over its slowest source
(``Server-Timing``) against the median of ``/livez``, alternating.

In the same run, a child process on stock asyncio (no Trio, no HTTP, none of our
code) makes the same fetches with the drivers alone: an asyncpg pool per raw
source and a SQLAlchemy engine per ORM source, N fetches at once as a fan-out
would. Its CPU per fetch is the floor the service's CPU per source is compared to.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import trio
import trio_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import Result, wrk
from bench.measure import Connection, get_request
from service.config import Access, Config, SourceConfig
from tests.e2e.conftest import running_server, write_config
from tests.support import pg

ROWS = 20
PREFIX = "collector_fanout"
#: Requests of each kind for the added-latency medians.
LATENCY_SAMPLES = 200
#: The drivers' floor, run in a child process on stock asyncio.
FLOOR = Path(__file__).with_name("driver_floor.py")
PG_LOG = Path("/var/log/postgresql")
REFUSAL = "too many clients"
#: Our connections on the server: only to this benchmark's databases.
OURS = "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE $1"


def sources_for(server_dsn: str, count: int) -> tuple[SourceConfig, ...]:
    return tuple(
        SourceConfig(
            f"fan_{k}",
            pg.with_database(server_dsn, f"{PREFIX}_{k}"),
            f"rows_{k}",
            Access.RAW if k % 2 == 0 else Access.ORM,
        )
        for k in range(count)
    )


async def create_databases(server_dsn: str, count: int) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        existing = {
            r["datname"]
            for r in await admin.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE $1", PREFIX + "_%"
            )
        }
        for k in range(count):
            name = f"{PREFIX}_{k}"
            if name in existing:
                continue
            await admin.execute(f'CREATE DATABASE "{name}"')
            connection = await asyncpg.connect(pg.with_database(server_dsn, name))
            try:
                await connection.execute(
                    f"CREATE TABLE rows_{k} (id INT PRIMARY KEY, name VARCHAR(255));"
                    f"INSERT INTO rows_{k} SELECT g, 'Row ' || g"
                    f" FROM generate_series({k * ROWS + 1}, {(k + 1) * ROWS}) AS g;"
                    f"ANALYZE rows_{k}"
                )
            finally:
                await connection.close()
    finally:
        await admin.close()


async def drop_databases(server_dsn: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        for record in await admin.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE $1", PREFIX + "_%"
        ):
            await admin.execute(f'DROP DATABASE "{record["datname"]}" WITH (FORCE)')
    finally:
        await admin.close()


def refusals() -> int:
    """ "Too many clients" lines in the server's logs so far (0 if unreadable)."""
    total = 0
    for log in PG_LOG.glob("*.log"):
        with contextlib.suppress(OSError):
            total += log.read_text(errors="replace").count(REFUSAL)
    return total


class Peak:
    """The most connections of ours the server showed while sampling."""

    def __init__(self, server_dsn: str) -> None:
        self.server_dsn = server_dsn
        self.highest = 0

    async def watch(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            connection = await trio_asyncio.aio_as_trio(asyncpg.connect)(self.server_dsn)
        except asyncpg.TooManyConnectionsError:
            self.highest = -1  # the server is full: shown as "full" in the table
            task_status.started()
            return
        task_status.started()
        try:
            while True:
                count = await trio_asyncio.aio_as_trio(connection.fetchval)(OURS, PREFIX + "_%")
                self.highest = max(self.highest, int(count))
                await trio.sleep(0.01)
        finally:
            with trio.CancelScope(shield=True):
                await trio_asyncio.aio_as_trio(connection.close)()


async def serve_and_load(
    server_dsn: str, count: int, duration: int, workdir: Path
) -> list[tuple[Result, int, int]]:
    config = Config(sources=sources_for(server_dsn, count), coalesce=False)
    path = write_config(workdir / f"fan{count}.toml", config, coalesce=False)
    rows: list[tuple[Result, int, int]] = []
    started = time.perf_counter()
    async with running_server(["--config", str(path)]) as server:
        print(f"  N={count}: serving after {time.perf_counter() - started:.1f} s", flush=True)
        pid = server.process.pid
        url = f"{server.url}/collect-data"
        await wrk("warm-up", url, 16, 2, pid)
        for connections in (1, 16):
            before = refusals()
            peak = Peak(server_dsn)
            async with trio.open_nursery() as nursery:
                await nursery.start(peak.watch)
                result = await wrk(
                    f"N={count}, {connections} conn", url, connections, duration, pid
                )
                nursery.cancel_scope.cancel()
            rows.append((result, peak.highest, refusals() - before))
        added, livez = await added_over_livez(server.url)
        print(
            f"  N={count}, 1 conn: added latency over the slowest source {added:.2f} ms,"
            f" /livez {livez:.2f} ms: {added / livez:.2f}x (median of {LATENCY_SAMPLES})",
            flush=True,
        )
    return rows


async def added_over_livez(base_url: str) -> tuple[float, float]:
    """Medians at 1 connection: what /collect-data adds over its slowest source, and /livez."""
    connection = Connection.to(base_url)
    collect, livez = get_request("/collect-data"), get_request("/livez")
    added: list[float] = []
    bare: list[float] = []
    try:
        for _ in range(LATENCY_SAMPLES):  # alternating, so both see the same machine
            added.append((await connection.get(collect))[1])
            bare.append((await connection.get(livez))[0])
    finally:
        await connection.aclose()
    return statistics.median(added), statistics.median(bare)


def drivers_floor(server_dsn: str, count: int) -> dict[str, float]:
    """CPU per fetch of the drivers alone, in a child process on stock asyncio."""
    done = subprocess.run(
        [sys.executable, str(FLOOR), str(count), server_dsn],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def table(rows: list[tuple[int, Result, int, int, float]], duration: int) -> str:
    lines = [
        "| N | conns | req/s | p50 ms | p99 ms | complete | CPU/req ms | CPU/source ms"
        " | drivers' CPU/fetch ms | ratio | peak server conns | refusals |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for count, r, peak, refused, floor in rows:
        answers = max(1, round(r.rps * duration))  # wrk: requests/s is requests over the run
        complete = 1 - ((r.incomplete or 0) + r.errors) / answers
        per_source = (r.cpu_ms or 0.0) / count
        conns = r.name.split(", ")[1].split()[0]
        lines.append(
            f"| {count} | {conns} | {r.rps:.1f} | {r.p50_ms:.1f} | {r.p99_ms:.1f}"
            f" | {complete:.1%} | {r.cpu_ms or 0.0:.2f} | {per_source:.3f} | {floor:.3f}"
            f" | {per_source / floor:.2f} | {peak if peak >= 0 else 'server full'} | {refused} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    await trio_asyncio.aio_as_trio(create_databases)(args.dsn, max(sizes))
    rows: list[tuple[int, Result, int, int, float]] = []
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for count in sizes:
                floor = drivers_floor(args.dsn, count)["per_fetch_ms"]
                for result, peak, refused in await serve_and_load(
                    args.dsn, count, args.duration, Path(scratch)
                ):
                    rows.append((count, result, peak, refused, floor))
                    print(
                        f"  {result.name}: {result.rps:.1f} req/s, p50 {result.p50_ms:.1f} ms,"
                        f" p99 {result.p99_ms:.1f} ms, {result.incomplete} incomplete,"
                        f" {result.errors} errors, peak {peak} conns, {refused} refusals",
                        flush=True,
                    )
    finally:
        if not args.keep:
            await trio_asyncio.aio_as_trio(drop_databases)(args.dsn)
    print(table(rows, args.duration))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,3,16,64,256")
    parser.add_argument("--duration", type=int, default=6, help="seconds per wrk run")
    parser.add_argument("--dsn", default=pg.LOCAL_DSN, help="a database on the server")
    parser.add_argument("--keep", action="store_true", help="keep the databases for next time")
    args = parser.parse_args()
    trio_asyncio.run(run, args)


if __name__ == "__main__":
    main()
