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
and so inherits the variable) that its connection was closed for stalling.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

import hypercorn.trio.run
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Event, RawData
from hypercorn.trio.tcp_server import TCPServer

#: Bytes per guarded write: the least a reading client must accept per idle limit.
PIECE = 64 * 1024


@dataclass
class WriteState:
    """What the app may learn about its connection's writes."""

    stalled: bool = False


connection_writes: ContextVar[WriteState | None] = ContextVar("connection_writes", default=None)


class GuardedConfig(HypercornConfig):
    """Hypercorn's settings plus the write idle limit (None: no limit)."""

    write_idle_timeout: float | None = None


class GuardedTCPServer(TCPServer):
    """Hypercorn's connection, with writes that fail when the client accepts nothing."""

    async def run(self) -> None:
        """Serve the connection; its requests' tasks share this one WriteState."""
        self.writes = WriteState()
        connection_writes.set(self.writes)
        self.write_lock = trio.Lock()
        await super().run()

    async def protocol_send(self, event: Event) -> None:
        """Write ``event`` in guarded pieces; other events go to Hypercorn unchanged."""
        idle = getattr(self.config, "write_idle_timeout", None)
        if not isinstance(event, RawData) or idle is None:
            await super().protocol_send(event)
            return
        data = memoryview(event.data)
        # The pieces of one event must not interleave with another event's (HTTP/2).
        with trio.CancelScope(shield=True):
            async with self.write_lock:
                for start in range(0, max(len(data), 1), PIECE):
                    if self.writes.stalled:
                        return
                    piece = RawData(data=bytes(data[start : start + PIECE]))
                    await self._send_guarded(piece, idle)

    async def _send_guarded(self, piece: RawData, idle: float) -> None:
        """One piece through Hypercorn's shielded write, watched by a timer."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._cut_when_stalled, idle)
            await super().protocol_send(piece)
            nursery.cancel_scope.cancel()

    async def _cut_when_stalled(self, idle: float) -> None:
        """Close the socket if the write in progress outlasts the limit (or the grace)."""
        with trio.move_on_after(idle):
            await self.context.terminated.wait()
            await trio.sleep(self.config.graceful_timeout)
        self.writes.stalled = True
        # Closing wakes the blocked send_all with ClosedResourceError, which
        # Hypercorn reports to the app as a disconnect.
        await trio.aclose_forcefully(self.stream)


def install() -> None:
    """Make Hypercorn's Trio worker use the guarded connection (idempotent).

    The worker looks the class up by name when it starts serving; without a
    ``write_idle_timeout`` in its config the guarded class behaves as Hypercorn's.
    """
    hypercorn.trio.run.TCPServer = GuardedTCPServer  # type: ignore[attr-defined]
