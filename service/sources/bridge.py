"""Run asyncio driver code (asyncpg, SQLAlchemy) from Trio without giving up the deadline.

The drivers are asyncio libraries; they run on a trio-asyncio loop that lives inside
the Trio run. trio-asyncio's own adapter (``aio_as_trio``) has the semantics of
asyncio itself: when the Trio side is cancelled it cancels the asyncio task once
and then *waits for it to finish*. asyncpg reacts to that cancel by asking the
server to cancel the query and waiting for the connection to settle; against a
server that has stopped answering (a black-holed TCP peer) that wait can last
minutes, and the request's deadline would last just as long.

So :meth:`AsyncioBridge.run` waits on the asyncio task through a plain Trio event.
When the Trio side is cancelled it cancels the asyncio task and returns at once;
the task finishes its clean-up in the background (bounded by the drivers' own
timeouts, see :mod:`service.sources`). The deadline is then Trio's alone to keep.

The bridge also replaces trio-asyncio's default exception handler. That handler
re-raises every *unhandled* asyncio error (a future whose exception nobody
retrieved, say) inside the loop's nursery, which tears down the whole service.
asyncpg leaves exactly such futures behind when a connection is lost while a
cancelled query is being cleaned up, which is routine for us. Such errors are
logged instead: they belong to work the service has already abandoned.

Only the modules that run drivers import this one; ``trio_asyncio`` itself, which
patches asyncio for the whole process, is imported only where the loop is opened.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any, ParamSpec, TypeVar

import trio

T = TypeVar("T")
P = ParamSpec("P")

log = logging.getLogger("collector.drivers")


class DriverCancelledError(Exception):
    """The asyncio side was cancelled by something other than our deadline.

    ``asyncio.CancelledError`` is a BaseException; turning it into an ordinary
    exception lets the core's per-source guard record it like any other failure.
    """


class LoopClosedError(Exception):
    """The asyncio loop is shut down; no driver call can start."""


class AsyncioBridge:
    """Runs asyncio coroutines on one trio-asyncio loop, abandoning them on cancel."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: set[asyncio.Future[Any]] = set()
        loop.set_exception_handler(log_unhandled_error)

    @property
    def pending(self) -> int:
        """How many asyncio tasks are still running, abandoned ones included."""
        return len(self._pending)

    async def run(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` as an asyncio task and return its result.

        A Trio cancellation cancels the task and propagates at once, without
        waiting for the task to acknowledge it.
        """
        if self._loop.is_closed():
            raise LoopClosedError("the asyncio loop is closed")
        future = self._start(_call(fn, *args, **kwargs), log_failure=False)
        done = trio.Event()
        # The callback runs inside the trio-asyncio loop's runner, which is a Trio
        # task of the same run, so setting a Trio event from it is safe.
        future.add_done_callback(partial(_set_event, done))
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            raise
        try:
            return future.result()
        except asyncio.CancelledError as exc:
            raise DriverCancelledError("the driver task was cancelled") from exc

    def spawn(
        self, fn: Callable[P, Awaitable[object]], /, *args: P.args, **kwargs: P.kwargs
    ) -> None:
        """Start ``fn`` as an asyncio task and do not wait for it (clean-up work).

        Its failure is logged, never raised; ``drain`` waits for it at shutdown.
        """
        if not self._loop.is_closed():
            self._start(_call(fn, *args, **kwargs), log_failure=True)

    async def drain(self) -> None:
        """Wait until every task started here, abandoned ones included, has ended.

        Callers bound this with a cancel scope; on cancel the stragglers are
        cancelled (once more) so the loop can shut down.
        """
        try:
            while self._pending:
                done = trio.Event()
                next(iter(self._pending)).add_done_callback(partial(_set_event, done))
                await done.wait()
        except BaseException:
            for future in list(self._pending):
                future.cancel()
            raise

    def _start(self, coro: Coroutine[Any, Any, T], *, log_failure: bool) -> asyncio.Future[T]:
        future = asyncio.ensure_future(coro, loop=self._loop)
        self._pending.add(future)
        future.add_done_callback(partial(self._forget, log_failure=log_failure))
        return future

    def _forget(self, future: asyncio.Future[Any], *, log_failure: bool) -> None:
        self._pending.discard(future)
        # Retrieving the outcome marks it as seen: an abandoned task's error was
        # already reported as a timeout, and asyncio would otherwise log it again.
        error = None if future.cancelled() else future.exception()
        if error is not None and log_failure:
            log.warning("driver clean-up failed: %s: %s", type(error).__name__, error)


async def _call(fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
    # Create the coroutine inside the asyncio task, so argument errors surface as
    # the task's exception rather than in the Trio caller.
    return await fn(*args, **kwargs)


def _set_event(event: trio.Event, _future: asyncio.Future[Any]) -> None:
    event.set()


def log_unhandled_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Log an asyncio error nobody handled, as one line, and carry on."""
    message = str(context.get("message") or "unhandled error").splitlines()[0]
    exception = context.get("exception")
    if exception is not None:
        message = f"{message}: {type(exception).__name__}: {exception}"
    log.warning("driver: %s", message)
