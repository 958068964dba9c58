"""A client that reads an HTTP answer slowly over a raw socket, and decodes what it got.

A small receive buffer makes the server's writes wait for the reader, which is what
a slow client looks like to the server; the chunked body is decoded by hand so that
a cut answer (no last chunk) can be told from a complete one.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import trio

#: The reader's socket receive buffer: small, so the server feels every pause.
RECEIVE_BUFFER = 32 * 1024


async def connect_small_window(url: str) -> trio.SocketStream:
    """A TCP connection to ``url``'s server with a small receive buffer."""
    parts = urlsplit(url)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    await sock.connect((parts.hostname, parts.port))
    return trio.SocketStream(sock)


async def read_slowly(stream: trio.SocketStream, rate: float) -> bytes:
    """Everything until the server closes, at about ``rate`` bytes per second."""
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
    return bytes(received)


def dechunk(raw: bytes) -> tuple[bytes, bool]:
    """The body of a chunked answer (head included in ``raw``), and whether it ended."""
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
