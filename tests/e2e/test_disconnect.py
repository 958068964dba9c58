"""A client that goes away mid-request, through the real ``collector serve``.

Its source's table is locked, so the source's query sits in PostgreSQL; the client
closes its socket after 0.3 s. The query must be gone from ``pg_stat_activity`` long
before the 2 s deadline would have ended it (the deadline and the server-side
``statement_timeout`` both end it at 2 s, so a disconnect nobody noticed shows up as
a query that lives about 1.7 s after the close).
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
import trio

from service.config import Config
from service.sources.bridge import AsyncioBridge
from tests.e2e.conftest import running_server, write_config
from tests.support import pg

pytestmark = pytest.mark.e2e

DEADLINE = 2.0
#: When the client gives up, after sending its request.
CLIENT_GIVES_UP = 0.3
#: How long after the close the query may still be running: "well before the deadline".
GONE_WITHIN = 0.5
HEADS = {
    "plain": b"",
    "envelope": b"Accept: application/vnd.collector.envelope+json\r\n",
    "ndjson": b"Accept: application/x-ndjson\r\n",
}


def reset(stream: trio.SocketStream) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a client that crashes or is killed does."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


async def seconds_until_gone(admin: pg.Admin, application: str, limit: float) -> float:
    """Seconds until no query of ``application`` runs (``limit`` if it outlives it)."""
    start = trio.current_time()
    with trio.move_on_after(limit):
        while True:  # polling the server: nothing here could signal us
            if not await admin.active_queries(application):
                return trio.current_time() - start
            await trio.sleep(0.02)
    return limit


#: (media, locked source, coalescing, how the client closes, how long the query may
#: live after the close): both access modes, every answer shape, with and without
#: coalescing, a clean close and a reset.
CASES = [
    ("plain", "source_1", True, "fin", GONE_WITHIN),
    ("plain", "source_2", True, "reset", GONE_WITHIN),
    ("plain", "source_1", False, "reset", GONE_WITHIN),
    ("envelope", "source_2", False, "fin", GONE_WITHIN),
    ("ndjson", "source_1", False, "fin", GONE_WITHIN),
    ("ndjson", "source_1", False, "reset", GONE_WITHIN),
    ("ndjson", "source_2", False, "fin", GONE_WITHIN),
    ("ndjson", "source_2", False, "reset", GONE_WITHIN),
]


@pytest.mark.parametrize(("media", "locked", "coalesce", "close", "bound"), CASES)
async def test_client_gone_after_300_ms_cancels_its_queries(
    reference_config: Config,
    tmp_path: Path,
    asyncio_bridge: AsyncioBridge,
    media: str,
    locked: str,
    coalesce: bool,
    close: str,
    bound: float,
) -> None:
    config_file = write_config(
        tmp_path / "collector.toml", reference_config, timeout=DEADLINE, coalesce=coalesce
    )
    first = pg.source(reference_config, locked)
    application = f"collector:{locked}"
    async with (
        running_server(["--config", str(config_file)]) as server,
        pg.admin(asyncio_bridge, first.dsn) as admin,
    ):
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        async with pg.locked_table(asyncio_bridge, first.dsn, first.table):
            stream = await trio.open_tcp_stream(host, int(port))
            request = b"GET /collect-data HTTP/1.1\r\nHost: x\r\n" + HEADS[media] + b"\r\n"
            await stream.send_all(request)
            sent = trio.current_time()
            with trio.fail_after(CLIENT_GIVES_UP):  # the query reaches the lock first
                while True:
                    if await admin.active_queries(application):
                        break
                    await trio.sleep(0.02)
            await trio.sleep_until(sent + CLIENT_GIVES_UP)
            if close == "reset":
                reset(stream)
            else:
                await stream.aclose()
            lived = await seconds_until_gone(admin, application, DEADLINE)
        assert lived < bound, f"the query ran {lived:.2f} s after the client left"
        await trio.sleep(0.2)  # let the access line reach the pipe
    access = [line for line in server.output if '"collector.access"' in line]
    assert access
    assert '"outcome": "disconnected"' in access[-1], access
