"""The drivers' asyncio loop: trio-asyncio's, with a batching callback dispatcher.

trio-asyncio runs every asyncio callback (a task step, a future's done callback,
a protocol's ``data_received``) from one Trio task that takes them off a memory
channel *one at a time*: each callback costs an ``await receive()``, that is a
full pass through Trio's scheduler, inside a fresh cancel scope carrying the
next timer's deadline. Its ``call_soon`` also inspects every callback to refuse
coroutine functions, a check stock asyncio makes only in debug mode. One
collection runs a few hundred callbacks, so under load that machinery was the
largest single cost in the profile: the loop's scheduling and the per-callback
cancel scopes came to about a fifth of the service's CPU (py-spy, 32
connections; see ``bench/README.md``).

:func:`tune` replaces, on one loop instance, the turn, ``call_soon`` and the
timer-cancel hook with versions that work the way asyncio's own loop does. Each
turn runs the timers that are due and then
every callback that was already queued when the turn began, in order, and then
checkpoints once so Trio's tasks (the HTTP side) get their turn. Only when
nothing is ready does it block in ``receive()``. Callbacks queued while a turn
runs wait for the next turn, so a callback that keeps rescheduling itself
cannot starve Trio. ``call_soon`` skips the debug-mode inspection. Cancelled
timers are purged from the heap as asyncio purges them, rather than kept until
their time comes.

What does not change: the order in which callbacks run, timers never firing
early, exceptions in callbacks going to the loop's exception handler, and the
shutdown sequence (``open_loop``'s exit drains the queue through the same method,
asking it not to wait). The replacement relies on internals of trio-asyncio
0.16 (its queue, timer heap and handle types). If they are not found, the loop
is left as it is and a warning is logged: slower, never wrong.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import Context
from typing import Any

import sniffio
import trio
import trio_asyncio
from trio_asyncio._handles import AsyncHandle

log = logging.getLogger("collector.drivers")

#: Cancelled timers are purged from the heap once there are more than this many
#: and they are over half of it (asyncio's own rule and threshold).
PURGE_MIN_CANCELLED = 100

#: What the replacement needs to find on a trio-asyncio loop.
_INTERNALS = ("_q_send", "_q_recv", "_timers", "_nursery", "_main_loop_one", "_check_closed")


@asynccontextmanager
async def open_loop() -> AsyncIterator[asyncio.AbstractEventLoop]:
    """Open a trio-asyncio loop for the drivers, tuned (see the module docstring)."""
    async with trio_asyncio.open_loop() as loop:
        tune(loop)
        yield loop


def tune(loop: asyncio.AbstractEventLoop) -> bool:
    """Install the batching dispatcher on ``loop``; False if it is not a known loop.

    ``_main_loop`` looks ``_main_loop_one`` up on every turn, so the replacement
    takes over from the next turn, also on a loop that is already running.
    """
    if not all(hasattr(loop, name) for name in _INTERNALS):
        log.warning("driver loop left untuned: unknown trio-asyncio internals")
        return False
    dispatcher = _Dispatcher(loop)
    target: Any = loop
    target._main_loop_one = dispatcher.run_one_turn
    target.call_soon = dispatcher.call_soon
    target._timer_handle_cancelled = dispatcher.timer_cancelled
    return True


class _Dispatcher:
    """The replacement turn and ``call_soon`` for one trio-asyncio loop."""

    def __init__(self, loop: Any) -> None:
        self._loop = loop
        self._queue: trio.MemoryReceiveChannel[asyncio.Handle] = loop._q_recv
        self._timers: list[asyncio.TimerHandle] = loop._timers
        # Callbacks taken off the queue and not yet run. A turn cut short (the
        # loop's own stop callback raises to end it) leaves the rest here for the
        # next one, so nothing taken off the queue is ever dropped.
        self._ready: deque[asyncio.Handle] = deque()
        self._cancelled_timers = 0

    def call_soon(
        self, callback: Callable[..., object], *args: object, context: Context | None = None
    ) -> asyncio.Handle:
        """Queue ``callback(*args)``, as asyncio's ``call_soon`` outside debug mode."""
        loop = self._loop
        loop._check_closed()
        handle = asyncio.Handle(callback, args, loop, context)
        loop._q_send.send_nowait(handle)
        return handle

    async def run_one_turn(self, no_wait: bool = False) -> None:
        """Run what is ready (due timers, then queued callbacks), or wait for something.

        ``no_wait`` is the shutdown drain: raise ``trio.WouldBlock`` when nothing is
        ready instead of waiting.
        """
        timers = self._timers
        cancelled = self._cancelled_timers
        if cancelled > PURGE_MIN_CANCELLED and cancelled * 2 > len(timers):
            self._purge_cancelled_timers()
        now = self._loop.time()
        while timers and timers[0].when() <= now:
            timer = heapq.heappop(timers)
            timer._scheduled = False  # type: ignore[attr-defined]
            if timer.cancelled():
                self._cancelled_timers -= 1
            else:
                self._ready.append(timer)
        # Only what is queued now: callbacks added during this turn wait for the next.
        queued = self._queue.statistics().current_buffer_used
        for _ in range(queued):
            self._take(self._queue.receive_nowait())
        if self._ready or queued:
            await self._run_ready()
            await trio.lowlevel.checkpoint()
            return
        if no_wait:
            raise trio.WouldBlock
        # Nothing ready: sleep until a callback is queued or the next timer is due.
        with trio.move_on_after(max(0.0, timers[0].when() - now) if timers else math.inf):
            self._take(await self._queue.receive())
        await self._run_ready()

    def timer_cancelled(self, timer: asyncio.TimerHandle) -> None:
        """Count a cancelled timer if it is in the heap (asyncio's hook, on every cancel).

        One cancelled while still queued is dropped when it is taken off the queue.
        """
        if timer._scheduled:  # type: ignore[attr-defined]
            self._cancelled_timers += 1

    def _take(self, handle: asyncio.Handle) -> None:
        if isinstance(handle, asyncio.TimerHandle):
            if not handle.cancelled():
                # Marked as scheduled, its cancel() now calls timer_cancelled.
                handle._scheduled = True  # type: ignore[attr-defined]
                heapq.heappush(self._timers, handle)
        else:
            self._ready.append(handle)

    def _purge_cancelled_timers(self) -> None:
        """Drop cancelled timers from the heap, as asyncio's own loop does.

        Without this a cancelled timer stays until its time comes, and with it
        the context it was created in. asyncpg arms a timer for every statement and
        another (of minutes, for idle connections) for every release, so under load
        the heap held tens of thousands of dead timers whose contexts kept thousands
        of finished HTTP requests alive; the garbage collector's full passes over
        them took up to 270 ms each.
        """
        kept = []
        for timer in self._timers:
            if timer.cancelled():
                timer._scheduled = False  # type: ignore[attr-defined]
            else:
                kept.append(timer)
        self._timers[:] = kept
        heapq.heapify(self._timers)
        self._cancelled_timers = 0

    async def _run_ready(self) -> None:
        """Run the ready callbacks in order, as "asyncio" for sniffio."""
        ready = self._ready
        previous, sniffio.thread_local.name = sniffio.thread_local.name, "asyncio"
        try:
            while ready:
                handle = ready.popleft()
                if isinstance(handle, AsyncHandle):
                    # A Trio-flavoured job (trio_as_aio), started as trio-asyncio does.
                    handle._context.run(
                        self._loop._nursery.start_soon, handle._run, name=handle._callback
                    )
                    await handle._started.wait()
                elif not handle.cancelled():
                    handle._run()
        finally:
            sniffio.thread_local.name = previous
