"""Long NDJSON streams against the real ``collector serve``: slow, stalled and cut short.

The clients are raw sockets with a small receive buffer, so the server's writes are
really paced by how fast the test reads (TCP flow control), as with a slow client.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio_asyncio

from service.config import Access, Config, SourceConfig
from tests.e2e.conftest import Server, running_server, write_config
from tests.support import pg
from tests.support.slowreader import connect_small_window, dechunk, read_slowly

pytestmark = pytest.mark.e2e

#: Rows in the two big tables together (odd ids in one, even in the other).
ROWS = 200_000
NDJSON_HEAD = b"Accept: application/x-ndjson\r\nConnection: close\r\n"


def big_tables_script() -> str:
    """Two tables that interleave by id: odd ids in one, even ids in the other."""
    return "".join(
        f"CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(255));"
        f"INSERT INTO {table} SELECT i, 'Big row ' || i"
        f" FROM generate_series({first}, {ROWS}, 2) AS i;"
        for table, first in (("big_odd", 1), ("big_even", 2))
    )


@pytest.fixture(scope="module")
def big_config(postgres_dsn: str) -> Iterator[Config]:
    """Two sources of 100,000 rows each, interleaved by id, in a throwaway database."""
    database = f"collector_test_{uuid.uuid4().hex[:8]}_big"
    trio_asyncio.run(
        trio_asyncio.aio_as_trio(pg.create_database), postgres_dsn, database, big_tables_script()
    )
    dsn = pg.with_database(postgres_dsn, database)
    try:
        yield Config(
            sources=(
                SourceConfig("odd", dsn, "big_odd", Access.RAW),
                SourceConfig("even", dsn, "big_even", Access.ORM),
            ),
        )
    finally:
        trio_asyncio.run(trio_asyncio.aio_as_trio(pg.drop_database), postgres_dsn, database)


def config_file(path: Path, config: Config, **keys: float) -> Path:
    """The config as TOML, with extra top-level keys (``stream_idle_timeout``...)."""
    write_config(path, config)
    extra = "".join(f"{key} = {value}\n" for key, value in keys.items())
    path.write_text(extra + path.read_text(encoding="utf-8"), encoding="utf-8")
    return path


def body_lines(raw: bytes) -> tuple[list[bytes], bool]:
    """The NDJSON lines of a chunked HTTP answer, and whether its last chunk came."""
    head = raw.partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    assert b"transfer-encoding: chunked" in head.lower()
    body, terminated = dechunk(raw)
    return body.split(b"\n"), terminated


def access_lines(server: Server) -> list[dict[str, object]]:
    """The access log lines the server wrote so far."""
    entries = []
    for line in server.output:
        if '"collector.access"' in line:
            entries.append(json.loads(line))
    return entries


async def first_access_line(server: Server, within: float) -> dict[str, object]:
    """The first access line, once the server has written it."""
    with trio.fail_after(within):
        while True:
            if entries := access_lines(server):
                return entries[0]
            await trio.sleep(0.05)


async def request_stream(server: Server, target: bytes = b"/collect-data") -> trio.SocketStream:
    stream = await connect_small_window(server.url)
    await stream.send_all(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n" + NDJSON_HEAD + b"\r\n")
    return stream


@asynccontextmanager
async def streaming(
    config: Config, tmp_path: Path, **keys: float
) -> AsyncIterator[tuple[Server, trio.SocketStream]]:
    """A real server with ``keys`` set, and an NDJSON request sent to it."""
    path = config_file(tmp_path / "c.toml", config, **keys)
    async with running_server(["--config", str(path)]) as server:
        yield server, await request_stream(server)


async def test_slow_steady_reader_gets_every_row_past_the_response_timeout(
    big_config: Config, tmp_path: Path
) -> None:
    # Non-streamed answers may take 1 s; this stream takes several at the reading pace.
    async with streaming(big_config, tmp_path, response_timeout=1.0, stream_idle_timeout=1.0) as (
        server,
        stream,
    ):
        start = trio.current_time()
        raw = await read_slowly(stream, rate=1_500_000)
        elapsed = trio.current_time() - start
        await stream.aclose()
        lines, terminated = body_lines(raw)
        assert terminated, f"cut after {len(lines)} lines, {elapsed:.1f} s"
        assert lines[-1] == b""
        *rows, summary = [json.loads(line) for line in lines[:-1]]
        assert [row["id"] for row in rows] == list(range(1, ROWS + 1))
        assert summary["complete"] is True
        assert elapsed > 2.0  # the stream really outlasted the response timeout
        assert summary["interrupted"] is None
        entry = await first_access_line(server, within=5)
        assert entry["status_code"] == 200
        assert entry["outcome"] == "sent"


async def test_reader_that_stops_is_disconnected_after_the_idle_limit(
    big_config: Config, tmp_path: Path
) -> None:
    async with streaming(big_config, tmp_path, stream_idle_timeout=1.0) as (server, stream):
        first = await stream.receive_some(4096)
        assert first.startswith(b"HTTP/1.1 200")
        # Read nothing more: the buffers fill, then the server's writes stall.
        entry = await first_access_line(server, within=15)
        assert entry["status_code"] == 200
        assert entry["outcome"] == "stalled"
        assert "stalled" in str(entry["message"])
        # The server closed the connection: what was buffered, then the end, never all rows.
        with trio.fail_after(10):
            rest = await read_slowly(stream, rate=1e9)
        lines, terminated = body_lines(first + rest)
        assert not terminated
        assert len(lines) < ROWS
        await stream.aclose()


async def test_sigterm_ends_an_open_stream_at_a_row_with_a_resumable_summary(
    big_config: Config, tmp_path: Path
) -> None:
    async with streaming(big_config, tmp_path, stream_idle_timeout=5.0) as (server, stream):
        async with trio.open_nursery() as nursery:

            async def stop_soon() -> None:
                await trio.sleep(1.0)
                server.process.send_signal(signal.SIGTERM)

            nursery.start_soon(stop_soon)
            raw = await read_slowly(stream, rate=1_000_000)
        await stream.aclose()
        with trio.fail_after(10):
            await server.process.wait()
        assert server.process.returncode == 0, "".join(server.output)
    lines, terminated = body_lines(raw)
    assert terminated
    assert lines[-1] == b""
    *rows, summary = [json.loads(line) for line in lines[:-1]]  # every line is whole JSON
    ids = [row["id"] for row in rows]
    assert 0 < len(ids) < ROWS
    assert ids == list(range(1, len(ids) + 1))
    assert summary["complete"] is False
    assert summary["interrupted"] == "shutdown"
    assert [s["status"] for s in summary["sources"]] == ["ok", "ok"]
    href = summary["next"]["href"]
    assert href.startswith("/collect-data?")

    # A new server resumes exactly where the cut stream ended.
    path = config_file(tmp_path / "c.toml", big_config)
    async with running_server(["--config", str(path)]) as again:
        stream = await request_stream(again, href.encode())
        raw = await read_slowly(stream, rate=1e9)
        await stream.aclose()
    lines, terminated = body_lines(raw)
    assert terminated
    *rest, last = [json.loads(line) for line in lines[:-1]]
    assert ids + [row["id"] for row in rest] == list(range(1, ROWS + 1))
    assert last["complete"] is True


async def test_reader_that_stops_cannot_hold_a_stopping_server_past_its_grace(
    big_config: Config, tmp_path: Path
) -> None:
    # The idle limit is far away; the grace (deadline 2 s + 1 s) ends first.
    async with streaming(big_config, tmp_path, stream_idle_timeout=600.0) as (server, stream):
        assert (await stream.receive_some(4096)).startswith(b"HTTP/1.1 200")
        await trio.sleep(1.0)  # the buffers fill and the server's write blocks
        server.process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            await server.process.wait()
        assert server.process.returncode == 0, "".join(server.output)
        entry = await first_access_line(server, within=5)
        assert entry["outcome"] == "shutdown"
        await stream.aclose()
