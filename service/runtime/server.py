"""Serving: the asyncio bridge, the sources and Hypercorn's Trio worker, nested.

Everything is opened in one structured block, so shutdown runs in reverse order:
Hypercorn stops accepting and lets in-flight requests finish, then the pools
close, then the asyncio loop. The trio-asyncio loop is handed to the sources
explicitly: its ContextVar would not reach Hypercorn's request tasks otherwise.

Worker processes are in :mod:`service.runtime.workers`, heap tuning in
:mod:`service.runtime.heap`. This module opens the loop (``service.sources.aioloop``
imports ``trio_asyncio``, which patches asyncio for the whole process); ``collector
init-db`` imports neither.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import TypeVar

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.typing import AppWrapper
from hypercorn.utils import wrap_app
from quart_trio import QuartTrio

from service.config import Config
from service.core import Collector, keep_probing
from service.core.coalesce import Coalescer
from service.dbinit import init_source
from service.runtime import stopping, tracing
from service.runtime.heap import settle_heap
from service.runtime.writeguard import GuardedConfig, install
from service.sources import budgets_for, open_sources
from service.sources.aioloop import open_loop
from service.sources.bridge import AsyncioBridge
from service.web import create_app
from service.web.app import MAX_REQUEST_HEAD
from service.web.metrics import Metrics

log = logging.getLogger("collector.server")

E = TypeVar("E", bound=BaseException)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: Seconds in-flight requests get to finish at shutdown, beyond the source deadline.
SHUTDOWN_GRACE = 1.0
#: Seconds an idle keep-alive connection is kept open before the server closes it.
KEEP_ALIVE_TIMEOUT = 5.0


class ServeError(Exception):
    """The server could not start (e.g. the port is taken); one line for the operator."""


def hypercorn_config(
    host: str, port: int, timeout: float, write_idle: float | None = None
) -> HypercornConfig:
    """Hypercorn settings for one worker bound to ``host:port``.

    ``write_idle`` is the seconds a client may accept nothing of an answer being
    written (``service.runtime.writeguard``); None leaves writes unbounded.
    """
    config = GuardedConfig()
    config.write_idle_timeout = write_idle
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.graceful_timeout = timeout + SHUTDOWN_GRACE
    config.keep_alive_timeout = KEEP_ALIVE_TIMEOUT
    config.accesslog = None
    # A head arriving in pieces is cut off here; a complete one is checked by the app.
    config.h11_max_incomplete_size = MAX_REQUEST_HEAD
    # Handing Hypercorn a logger (rather than "-") keeps it from attaching a
    # second stderr handler: its lines then go through ours, in our format.
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


async def serve(
    config: Config,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    sockets: Sockets | None = None,
    worker: int | None = None,
    metrics_dir: Path | None = None,
) -> None:
    """Serve ``config`` until SIGINT or SIGTERM.

    ``sockets`` are listening sockets made by a parent process that runs several
    workers (see ``serve_workers``); without them this binds ``host:port`` itself.
    ``metrics_dir`` is where those workers share their metrics.
    """
    stop_tracing = tracing.configure(os.environ)
    try:
        await _serve(config, host, port, sockets=sockets, worker=worker, metrics_dir=metrics_dir)
    finally:
        if stop_tracing is not None:
            stop_tracing()  # the spans still buffered are exported before the process ends


async def _serve(
    config: Config,
    host: str,
    port: int,
    *,
    sockets: Sockets | None,
    worker: int | None,
    metrics_dir: Path | None,
) -> None:
    """``serve`` once tracing is set up."""
    draining = trio.Event()  # set when shutdown begins: open streams end early
    async with open_loop() as loop:
        bridge = AsyncioBridge(loop)
        budgets = budgets_for(config)
        async with open_sources(config, bridge, budgets) as members, trio.open_nursery() as nursery:
            collector = Collector(members, config.timeout, probe_timeout=config.probe_timeout)
            if not await _first_ids_check(collector, draining):
                return  # asked to stop while checking: nothing was served yet
            checks = trio.CancelScope()
            nursery.start_soon(_background_checks, collector, config, checks)
            metrics = Metrics(metrics_dir)
            metrics.watch_connections(budgets.usage)
            app = _app(config, collector, nursery, draining, metrics)
            hconfig = hypercorn_config(host, port, config.timeout, config.stream_idle_timeout)
            install()
            try:
                binds: list[str] = await nursery.start(
                    partial(
                        _serve_then_stop,
                        wrap_app(app, hconfig.wsgi_max_body_size, None),
                        hconfig,
                        sockets,
                        checks,
                        draining,
                    )
                )
            except BaseException as exc:
                # Trio reports a failure to bind wrapped in an exception group.
                if (bind_error := find_exception(exc, OSError)) is None:
                    raise
                reason = bind_error.strerror or bind_error
                raise ServeError(f"cannot listen on {host}:{port}: {reason}") from None
            settle_heap()
            names = ", ".join(f"{s.name} ({s.access})" for s in config.sources)
            who = "" if worker is None else f" (worker {worker})"
            print(f"collector: serving {binds[0]}/collect-data from {names}{who}", flush=True)


def _app(
    config: Config,
    collector: Collector,
    nursery: trio.Nursery,
    draining: trio.Event,
    metrics: Metrics,
) -> QuartTrio:
    """The web app over ``collector``, with a coalescer in ``nursery`` when configured."""
    coalescer = None
    if config.coalesce:
        coalescer = Coalescer(
            collector.collect, nursery, config.timeout, linger=config.coalesce_linger
        )
    return create_app(
        collector,
        metrics,
        coalescer=coalescer,
        api_token=config.api_token,
        max_concurrent=config.max_concurrent_requests,
        response_timeout=config.response_timeout,
        draining=draining,
    )


async def _first_ids_check(collector: Collector, draining: trio.Event) -> bool:
    """Check the declared ids before serving; False if SIGINT or SIGTERM came first.

    Serving only after the check (at most one deadline) lets verified sources be
    pruned from the first request on; a signal meanwhile still stops the service
    gracefully rather than killing it.
    """
    signalled = False

    async def check() -> None:
        await collector.declared.check()
        race.cancel_scope.cancel()

    async def stop() -> None:
        nonlocal signalled
        await _until_signal(draining)
        signalled = True
        race.cancel_scope.cancel()

    async with trio.open_nursery() as race:
        race.start_soon(check)
        race.start_soon(stop)
    return not signalled


async def _background_checks(collector: Collector, config: Config, scope: trio.CancelScope) -> None:
    """Until the server stops: the periodic ids checks, and probes of open breakers."""
    with scope:
        async with trio.open_nursery() as background:
            ids_watch = partial(collector.declared.watch, checked=True)
            background.start_soon(ids_watch, config.ids_check_interval)
            if config.probe_interval > 0:
                targets = collector.probe_targets()
                background.start_soon(keep_probing, targets, config.probe_interval, config.timeout)


async def _serve_then_stop(
    app: AppWrapper,
    hconfig: HypercornConfig,
    sockets: Sockets | None,
    checks: trio.CancelScope,
    draining: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until a signal, then stop the background checks so shutdown can finish."""
    try:
        await worker_serve(
            app,
            hconfig,
            sockets=sockets,
            shutdown_trigger=partial(_until_signal, draining),
            task_status=task_status,
        )
    finally:
        checks.cancel()


async def seed_sources(config: Config) -> None:
    """Run init-db on every source (for the embedded default, before workers start)."""
    async with open_loop() as loop:
        bridge = AsyncioBridge(loop)
        for source in config.sources:
            report = await bridge.run(init_source, source)
            log.info("source %s ready (%d rows added)", report.source, report.inserted_rows)


def find_exception(error: BaseException, kind: type[E]) -> E | None:
    """The first ``kind`` in ``error``, looking inside (nested) exception groups."""
    if isinstance(error, kind):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            if (found := find_exception(inner, kind)) is not None:
                return found
    return None


async def _until_signal(draining: trio.Event) -> None:
    """Return on the first SIGINT or SIGTERM, which starts a graceful shutdown.

    One that arrived before the receiver was open (``service.runtime.stopping``) counts too.
    ``draining`` is set first, so that open streams end at their next row
    boundary with a summary (incomplete, with the cursor to resume from) while
    Hypercorn gives in-flight requests their grace.
    """
    with trio.open_signal_receiver(*stopping.STOP_SIGNALS) as signals:
        if stopping.requested():
            print("collector: shutting down", file=sys.stderr)
            draining.set()
            return
        async for signum in signals:
            stopping.request(signum)
            print(f"collector: {signal.Signals(signum).name}, shutting down", file=sys.stderr)
            draining.set()
            return
