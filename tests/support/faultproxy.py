"""A TCP proxy that breaks a connection to PostgreSQL on demand.

It sits between the service and the server, and its mode can change at any moment;
a change applies to connections that are already open (pooled ones included) as
well as to new ones:

    PASS       forward bytes both ways
    DELAY      forward, but hold every chunk for ``delay`` seconds first
    BLACKHOLE  accept, then never answer: bytes in either direction are dropped
    RESET      tear every connection down with a TCP reset
    REFUSE     stop listening, so connecting fails with ECONNREFUSED
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable
from enum import Enum

import trio

#: A fixture's factory: proxy this DSN, returning the proxy and the DSN through it.
ProxyFactory = Callable[[str], Awaitable[tuple["FaultProxy", str]]]


class Mode(Enum):
    PASS = "pass"
    DELAY = "delay"
    BLACKHOLE = "blackhole"
    RESET = "reset"
    REFUSE = "refuse"


class FaultProxy:
    """Proxies 127.0.0.1:<port> to an upstream server, with injectable faults.

    ``upstream`` is a TCP (host, port) or the path of a Unix socket.
    """

    def __init__(self, upstream: tuple[str, int] | str) -> None:
        self.upstream = upstream
        self.mode = Mode.PASS
        self.delay = 0.0
        self.port = 0
        self.accepted = 0
        self._connections: set[trio.SocketStream] = set()
        self._listener_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._listen)
            task_status.started(self.port)
            # Keep the nursery open while REFUSE has the listener closed.
            await trio.sleep_forever()

    async def set_mode(self, mode: Mode, delay: float = 0.0) -> None:
        """Switch mode; returns once new connections see it (listening again, say)."""
        previous, self.mode, self.delay = self.mode, mode, delay
        if mode in (Mode.RESET, Mode.REFUSE):
            for stream in list(self._connections):
                _reset(stream)
        if mode is Mode.REFUSE and self._listener_scope is not None:
            self._listener_scope.cancel()
            self._listener_scope = None
        if previous is Mode.REFUSE and mode is not Mode.REFUSE:
            assert self._nursery is not None
            await self._nursery.start(self._listen)

    async def _listen(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.CancelScope() as scope:
            self._listener_scope = scope
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            async with listeners[0]:
                task_status.started()
                async with trio.open_nursery() as nursery:
                    while True:
                        stream = await listeners[0].accept()
                        self.accepted += 1
                        nursery.start_soon(self._handle, stream)
        # Cancelled: the listening socket is closed now; connects are refused.

    async def _handle(self, client: trio.SocketStream) -> None:
        self._connections.add(client)
        try:
            if self.mode is Mode.BLACKHOLE:
                # Never connect upstream; swallow whatever the client sends.
                await self._drain(client)
                return
            if self.mode in (Mode.RESET, Mode.REFUSE):
                _reset(client)
                return
            try:
                server = await self._connect_upstream()
            except OSError:
                _reset(client)
                return
            self._connections.add(server)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
                    nursery.start_soon(self._pump, server, client, nursery.cancel_scope)
            finally:
                self._connections.discard(server)
                await trio.aclose_forcefully(server)
        finally:
            self._connections.discard(client)
            await trio.aclose_forcefully(client)

    async def _connect_upstream(self) -> trio.SocketStream:
        if isinstance(self.upstream, str):
            return await trio.open_unix_socket(self.upstream)
        return await trio.open_tcp_stream(*self.upstream)

    async def _drain(self, stream: trio.SocketStream) -> None:
        try:
            while await stream.receive_some(65536):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while True:
                chunk = await source.receive_some(65536)
                if not chunk:
                    break
                if self.mode is Mode.BLACKHOLE:
                    continue
                if self.mode in (Mode.RESET, Mode.REFUSE):
                    break
                if self.mode is Mode.DELAY:
                    await trio.sleep(self.delay)
                await sink.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            scope.cancel()


def _reset(stream: trio.SocketStream) -> None:
    """Close with RST instead of FIN (SO_LINGER with a zero timeout)."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()
    except OSError:
        pass
