"""Scale benchmark: three sources of 1,000,000 rows each, streamed, paged and looked up.

Run from the repository root (not part of the test suite):

    uv run python bench/scale.py [--rows-per-source 1000000] [--dsn ...] [--keep]

It creates three databases on the local PostgreSQL (default 127.0.0.1:5432), each
with one table of N rows: the ids 1..3N in runs of 1000, dealt to the sources in
turn (source_1 holds 1-1000, 3001-4000, ...), each source declaring its ranges.
It starts the real ``collector serve`` (source_1 raw, source_2 orm, source_3 raw)
and measures, over HTTP on 127.0.0.1:

- streaming every row as NDJSON: wall time, rows/s, and the server's peak RSS;
- one 1,000-row page at the start, the middle and the end of the id space;
- a single-id lookup, routed to the one source that declares the id.

The databases are dropped afterwards unless --keep is given (a kept set is reused).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import asyncpg
import httpx
import trio
import trio_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.config import Access, Config, SourceConfig
from tests.e2e.conftest import running_server, write_config
from tests.support import pg

RUN = 1000
NAMES = ("source_1", "source_2", "source_3")
ACCESS = (Access.RAW, Access.ORM, Access.RAW)


def layout(dsn: str, per_source: int) -> Config:
    runs = per_source // RUN
    sources = []
    for k, (name, access) in enumerate(zip(NAMES, ACCESS, strict=True)):
        ids = tuple(((r * 3 + k) * RUN + 1, (r * 3 + k + 1) * RUN) for r in range(runs))
        database = pg.with_database(dsn, f"collector_bench_{name}")
        sources.append(SourceConfig(name, database, f"data_{k + 1}", access, ids=ids))
    return Config(sources=tuple(sources), timeout=2.0)


async def create(config: Config, server_dsn: str, per_source: int) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        for k, source in enumerate(config.sources):
            database = source.dsn.rsplit("/", 1)[1].split("?")[0]
            exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
            if exists:
                connection = await asyncpg.connect(source.dsn)
                try:
                    count = await connection.fetchval(f"SELECT count(*) FROM {source.table}")
                except asyncpg.UndefinedTableError:
                    count = -1  # left over from an interrupted run
                finally:
                    await connection.close()
                if count == per_source:
                    continue
                await admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{database}"')
            connection = await asyncpg.connect(source.dsn)
            try:
                await connection.execute(
                    f"CREATE TABLE {source.table} (id INT PRIMARY KEY, name VARCHAR(255));"
                    f"INSERT INTO {source.table} SELECT id, 'Test ' || id "
                    f"FROM generate_series(1, {3 * per_source}) AS id "
                    f"WHERE (id - 1) / {RUN} % 3 = {k};"
                )
                await connection.execute(f"VACUUM ANALYZE {source.table}")
            finally:
                await connection.close()
    finally:
        await admin.close()


async def drop(config: Config, server_dsn: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        for source in config.sources:
            database = source.dsn.rsplit("/", 1)[1].split("?")[0]
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await admin.close()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def timed(client: httpx.AsyncClient, url: str, repeat: int) -> tuple[float, httpx.Response]:
    times = []
    response = None
    for _ in range(repeat):
        start = trio.current_time()
        response = await client.get(url)
        times.append((trio.current_time() - start) * 1000)
        assert response.status_code == 200, response.text
    assert response is not None
    return statistics.median(times), response


async def measure(config: Config, per_source: int, workdir: Path) -> None:
    total = 3 * per_source
    config_file = write_config(workdir / "scale.toml", config)
    async with (
        running_server(["--config", str(config_file)]) as server,
        httpx.AsyncClient(base_url=server.url, timeout=600) as client,
    ):
        pid = server.process.pid
        await client.get("/collect-data?limit=1")  # open the pools
        idle_rss = peak_rss_mb(pid)
        # The client only counts lines, so that it takes as little as possible of
        # the CPU the server shares with it and with PostgreSQL.
        lines, tail = 0, b""
        start = trio.current_time()
        async with client.stream(
            "GET", "/collect-data", headers={"Accept": "application/x-ndjson"}
        ) as response:
            async for chunk in response.aiter_raw():
                lines += chunk.count(b"\n")
                tail = (tail + chunk)[-4096:]
        elapsed = trio.current_time() - start
        rows = lines - 1  # the summary line
        last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1].decode()
        assert '"complete":true' in last, last
        assert rows == total, rows
        print(f"stream all {rows:,} rows as NDJSON: {elapsed:.2f} s, {rows / elapsed:,.0f} rows/s")
        print(f"  server peak RSS: {peak_rss_mb(pid):.0f} MB (after start-up: {idle_rss:.0f} MB)")
        for label, after in (("start", 0), ("middle", total // 2), ("end", total - 1000)):
            median, page = await timed(client, f"/collect-data?limit=1000&after={after}", 9)
            ids = [row["id"] for row in page.json()]
            assert ids == list(range(after + 1, after + 1 + len(ids))), ids[:3]
            print(f"1,000-row page at the {label:<6} (after={after}): median {median:.1f} ms")
        target = total // 2 + 17
        median, found = await timed(client, f"/collect-data/{target}", 21)
        assert found.json()["id"] == target
        pruned = found.headers["server-timing"].count('desc="pruned"')
        print(f"single-id lookup (id={target}): median {median:.1f} ms, {pruned} sources pruned")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-source", type=int, default=1_000_000)
    parser.add_argument("--dsn", default=pg.LOCAL_DSN, help="server to create the sources on")
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the databases")
    args = parser.parse_args()
    per_source = args.rows_per_source // RUN * RUN
    config = layout(args.dsn, per_source)
    trio_asyncio.run(trio_asyncio.aio_as_trio(create), config, args.dsn, per_source)
    print(f"3 sources x {per_source:,} rows, runs of {RUN} ids, deadline {config.timeout:g} s")
    try:
        with tempfile.TemporaryDirectory() as workdir:
            trio.run(measure, config, per_source, Path(workdir))
    finally:
        if not args.keep:
            trio_asyncio.run(trio_asyncio.aio_as_trio(drop), config, args.dsn)


if __name__ == "__main__":
    main()
