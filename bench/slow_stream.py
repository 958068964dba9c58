"""Slow-stream benchmark: how much of a long NDJSON stream a slow reader receives.

Run from the repository root (not part of the test suite):

    uv run python bench/slow_stream.py [--rows 1000000] [--rate 400000] [--dsn ...]

It creates one source database with N rows on the local PostgreSQL (its own database,
dropped afterwards), starts the real ``collector serve`` on it with the default
settings, and reads ``GET /collect-data`` as NDJSON over a raw socket with a small
receive buffer at about ``--rate`` bytes per second, so the server's writes are paced
by the reader. It prints the rows received, the duration, whether the summary line
came and whether the chunked body was terminated, and the server's access line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import uuid
from pathlib import Path

import trio
import trio_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.config import Access, Config, SourceConfig
from tests.e2e.conftest import running_server, write_config
from tests.support import pg
from tests.support.slowreader import connect_small_window, dechunk, read_slowly


async def read_stream(url: str, rate: float) -> tuple[bytes, float]:
    """The raw answer to an NDJSON request read at ``rate`` bytes/s, and its duration."""
    stream = await connect_small_window(url)
    await stream.send_all(
        b"GET /collect-data HTTP/1.1\r\nHost: x\r\nAccept: application/x-ndjson\r\n"
        b"Connection: close\r\n\r\n"
    )
    start = trio.current_time()
    async with stream:
        received = await read_slowly(stream, rate)
    return received, trio.current_time() - start


async def measure(config: Config, rate: float, workdir: Path) -> None:
    config_file = write_config(workdir / "slow.toml", config)
    async with running_server(["--config", str(config_file)]) as server:
        raw, duration = await read_stream(server.url, rate)
        body, terminated = dechunk(raw)
        lines = body.split(b"\n")
        rows = sum(1 for line in lines if line.startswith(b'{"id":'))
        summary = any(line.startswith(b'{"complete"') for line in lines)
        print(
            f"rows received: {rows:,}  duration: {duration:.1f} s  "
            f"summary line: {'yes' if summary else 'no'}  "
            f"body terminated: {'yes' if terminated else 'no'}  "
            f"bytes: {len(body):,}"
        )
        await trio.sleep(0.5)
        for line in server.output:
            if '"collector.access"' in line:
                entry = json.loads(line)
                print(f"access line: {entry['message']} (outcome {entry.get('outcome', '-')})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=400_000, help="bytes per second")
    parser.add_argument("--dsn", default=pg.LOCAL_DSN, help="server to create the source on")
    args = parser.parse_args()
    database = f"collector_bench_slow_{uuid.uuid4().hex[:8]}"
    source = SourceConfig("big", pg.with_database(args.dsn, database), "big", Access.RAW)
    config = Config(sources=(source,))
    print(f"1 source x {args.rows:,} rows, read at {args.rate / 1000:.0f} KB/s")
    try:
        statements = (
            "CREATE TABLE big (id INT PRIMARY KEY, name VARCHAR(255));"
            f"INSERT INTO big SELECT i, 'Big row ' || i FROM generate_series(1, {args.rows}) AS i",
            "VACUUM ANALYZE big",
        )
        create = trio_asyncio.aio_as_trio(pg.create_database)
        trio_asyncio.run(create, args.dsn, database, *statements)
        with tempfile.TemporaryDirectory() as workdir:
            trio.run(measure, config, args.rate, Path(workdir))
    finally:
        trio_asyncio.run(trio_asyncio.aio_as_trio(pg.drop_database), args.dsn, database)


if __name__ == "__main__":
    main()
