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
import socket
import sys
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import trio
import trio_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.config import Access, Config, SourceConfig
from tests.e2e.conftest import running_server, write_config
from tests.support import pg


async def create(server_dsn: str, database: str, rows: int) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    connection = await asyncpg.connect(pg.with_database(server_dsn, database))
    try:
        await connection.execute(
            "CREATE TABLE big (id INT PRIMARY KEY, name VARCHAR(255));"
            f"INSERT INTO big SELECT i, 'Big row ' || i FROM generate_series(1, {rows}) AS i"
        )
        await connection.execute("VACUUM ANALYZE big")
    finally:
        await connection.close()


async def drop(server_dsn: str, database: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await admin.close()


async def read_stream(url: str, rate: float) -> tuple[bytes, float]:
    """The raw answer to an NDJSON request read at ``rate`` bytes/s, and its duration."""
    parts = urlsplit(url)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    await sock.connect((parts.hostname, parts.port))
    stream = trio.SocketStream(sock)
    await stream.send_all(
        b"GET /collect-data HTTP/1.1\r\nHost: x\r\nAccept: application/x-ndjson\r\n"
        b"Connection: close\r\n\r\n"
    )
    received = bytearray()
    start = trio.current_time()
    while True:
        try:
            chunk = await stream.receive_some(16 * 1024)
        except trio.BrokenResourceError:
            break
        if not chunk:
            break
        received += chunk
        await trio.sleep_until(start + len(received) / rate)
    await stream.aclose()
    return bytes(received), trio.current_time() - start


def dechunk(raw: bytes) -> tuple[bytes, bool]:
    """The body of a chunked answer so far, and whether the last chunk came."""
    rest = raw.partition(b"\r\n\r\n")[2]
    body = bytearray()
    while rest:
        size_line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line, 16)
        if size == 0:
            return bytes(body), True
        body += rest[:size]
        rest = rest[size + 2 :]
    return bytes(body), False


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
        trio_asyncio.run(trio_asyncio.aio_as_trio(create), args.dsn, database, args.rows)
        with tempfile.TemporaryDirectory() as workdir:
            trio.run(measure, config, args.rate, Path(workdir))
    finally:
        trio_asyncio.run(trio_asyncio.aio_as_trio(drop), args.dsn, database)


if __name__ == "__main__":
    main()
