"""A write deadline for Hypercorn's Trio worker: clients that stop reading are cut off.

Hypercorn writes every response in a shielded ``send_all`` and has no write timeout,
so a client that stops reading (its receive window closes) blocks that write for as
long as the kernel keeps the connection, holding the request, its stream and its
database cursors, and keeping the worker from shutting down. The connection class
below writes in pieces of ``PIECE`` bytes, each of which must be accepted by the
kernel within ``write_idle_timeout`` seconds: a client that takes in less than that
in the limit has stalled and its socket is closed, which Hypercorn turns into a
disconnect for the app. After shutdown begins a write also ends when the graceful
timeout has passed, so a stalled client cannot hold the worker past its grace.

``connection_writes`` tells the app (which runs in a task the connection spawned,
and so inherits the variable) that its connection was closed mid-write, and why.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

import hypercorn.trio.run
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio.tcp_server import TCPServer

#: Bytes per guarded write: the least a reading client must accept per idle limit.
PIECE = 64 * 1024


@dataclass
class WriteState:
    """What the app may learn about its connection's writes."""

    cut: str | None = None
    """Why the connection was closed mid-write: ``"stalled"`` or ``"shutdown"``."""


connection_writes: ContextVar[WriteState | None] = ContextVar("connection_writes", default=None)


class GuardedConfig(HypercornConfig):
    """Hypercorn's settings plus the write idle limit (None: no limit)."""

    write_idle_timeout: float | None = None


class GuardedTCPServer(TCPServer):
    """Hypercorn's connection, with writes that fail when the client accepts nothing.

    Each piece is written under its own cancel scope with a deadline, inside the
    shield Hypercorn's writes need (a request's cancellation must not cut a write
    half-way); a scope costs far less than a watchdog task per write.
    """

    async def run(self) -> None:
        """Serve the connection; its requests' tasks share this one WriteState."""
        self.writes = WriteState()
        connection_writes.set(self.writes)
        self.write_scope: trio.CancelScope | None = None
        self.grace_over = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._end_writes_after_grace)
            await super().run()
            nursery.cancel_scope.cancel()

    async def protocol_send(self, event: Event) -> None:
        """Write ``event`` in guarded pieces; other events go to Hypercorn unchanged."""
        idle = getattr(self.config, "write_idle_timeout", None)
        if not isinstance(event, RawData) or idle is None:
            await super().protocol_send(event)
            return
        data = memoryview(event.data)
        async with self.send_lock:
            with trio.CancelScope(shield=True):
                try:
                    for start in range(0, max(len(data), 1), PIECE):
                        await self._send_piece(data[start : start + PIECE], idle)
                        if self.writes.cut is not None:
                            break
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                else:
                    if self.writes.cut is None:
                        return
                await self.protocol.handle(Closed())

    async def _send_piece(self, piece: memoryview, idle: float) -> None:
        """One piece, which must be accepted within ``idle`` seconds (or the grace)."""
        with trio.CancelScope(deadline=trio.current_time() + idle) as scope:
            self.write_scope = scope
            if self.grace_over:
                scope.cancel()
            try:
                await self.stream.send_all(piece)
            finally:
                self.write_scope = None
        if scope.cancelled_caught:
            self.writes.cut = "shutdown" if self.grace_over else "stalled"
            # The write was abandoned half-way: the connection cannot go on.
            await trio.aclose_forcefully(self.stream)

    async def _end_writes_after_grace(self) -> None:
        """Once shutdown began and its grace passed, abandon a blocked write.

        Hypercorn cancels the connection when the grace ends, perhaps before this
        sleep is over; being cancelled then abandons the write just the same.
        """
        try:
            await self.context.terminated.wait()
            await trio.sleep(self.config.graceful_timeout)
        finally:
            self.grace_over = True
            if self.write_scope is not None:
                self.write_scope.cancel()


def install() -> None:
    """Make Hypercorn's Trio worker use the guarded connection (idempotent).

    The worker looks the class up by name when it starts serving; without a
    ``write_idle_timeout`` in its config the guarded class behaves as Hypercorn's.
    """
    hypercorn.trio.run.TCPServer = GuardedTCPServer  # type: ignore[attr-defined]
