"""What the load scripts share: a bare keep-alive HTTP client, and a server's CPU time.

The client reads one response at a time over a plain socket, so that latency
figures are the server's own rather than an HTTP library's.
"""

from __future__ import annotations

import re

import psutil
import trio

_LENGTH = re.compile(rb"content-length: (\d+)", re.I)
_TIMING = re.compile(rb"server-timing: ([^\r]+)", re.I)
_DURATION = re.compile(rb"dur=([\d.]+)")


def cpu_seconds(pid: int) -> float:
    """User and system CPU of a process and all its children (workers, ``uv run``'s child)."""
    process = psutil.Process(pid)
    total = sum(process.cpu_times()[:2])
    for child in process.children(recursive=True):
        total += sum(child.cpu_times()[:2])
    return float(total)


class Connection:
    """One keep-alive connection to ``host:port``, reopened when the server ends it."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._stream: trio.SocketStream | None = None

    @classmethod
    def to(cls, base_url: str) -> Connection:
        """A connection to ``http://host:port``."""
        host, port = base_url.removeprefix("http://").rsplit(":", 1)
        return cls(host, int(port))

    async def get(self, request: bytes) -> tuple[float, float]:
        """Milliseconds for one response, and that minus the slowest source's duration.

        The second figure is the latency the server added over its slowest source
        (from ``Server-Timing``); without that header it equals the first.
        """
        if self._stream is None:
            self._stream = await trio.open_tcp_stream(self._host, self._port)
        start = trio.current_time()
        try:
            await self._stream.send_all(request)
            data = b""
            while b"\r\n\r\n" not in data:
                data += await self._receive()
        except (EOFError, trio.BrokenResourceError):
            # Hypercorn closes a keep-alive connection after 1000 requests.
            self._stream = None
            return await self.get(request)
        head, _, body = data.partition(b"\r\n\r\n")
        length = _LENGTH.search(head)
        while length is not None and len(body) < int(length[1]):
            body += await self._receive()
        total = (trio.current_time() - start) * 1000
        timing = _TIMING.search(head)
        slowest = max(float(d) for d in _DURATION.findall(timing[1])) if timing else 0.0
        return total, total - slowest

    async def aclose(self) -> None:
        """Close the connection if it is open."""
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None

    async def _receive(self) -> bytes:
        assert self._stream is not None
        chunk = await self._stream.receive_some(65536)
        if not chunk:
            raise EOFError
        return chunk


def get_request(path: str, host: str = "127.0.0.1") -> bytes:
    """The bytes of a minimal ``GET`` request."""
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
