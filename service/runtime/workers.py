"""Several worker processes on one listening socket, each a full server (``serve``)."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
from functools import partial
from pathlib import Path

import trio
from hypercorn.config import Sockets

from service.config import Config
from service.logs import setup_logging
from service.runtime import stopping
from service.runtime.server import ServeError, hypercorn_config, serve
from service.web.metrics import shared_metrics_dir, worker_exited


def serve_workers(config: Config, host: str, port: int, workers: int) -> int:
    """Run ``workers`` processes serving one listening socket; return an exit code.

    The parent binds the socket and hands it to each worker (as Hypercorn's own
    multi-worker mode does), so the kernel spreads connections among them. Each
    worker has its own asyncio loop and pools: ``pool_size`` is per worker, and each
    worker gets an equal share of ``server_connections`` (the budget is the whole
    service's); the workers share one set of metrics (``service.web.metrics``). SIGINT or SIGTERM
    to the parent is passed on, and each worker shuts down gracefully.
    """
    share = max(1, config.server_connections // workers)
    config = dataclasses.replace(config, server_connections=share)
    hconfig = hypercorn_config(host, port, config.timeout)
    try:
        sockets = hconfig.create_sockets()
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    for sock in sockets.insecure_sockets:
        sock.listen(hconfig.backlog)
    try:
        with shared_metrics_dir() as metrics_dir:
            return _run_workers(config, host, port, sockets, workers, metrics_dir)
    finally:
        for sock in sockets.insecure_sockets:
            sock.close()


def _run_workers(
    config: Config, host: str, port: int, sockets: Sockets, workers: int, metrics_dir: Path
) -> int:
    """Start the worker processes, pass signals on, wait for all; the worst exit code."""
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker_main, args=(config, host, port, sockets, index, metrics_dir))
        for index in range(workers)
    ]
    for process in processes:
        process.start()

    def forward(signum: int, _frame: object) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    for process in processes:
        process.join()
        if process.pid is not None:
            worker_exited(metrics_dir, process.pid)
    return max((p.exitcode or 0) for p in processes)


def _worker_main(
    config: Config, host: str, port: int, sockets: Sockets, index: int, metrics_dir: Path
) -> None:
    """Entry point of one worker process."""
    stopping.install()  # the group's SIGTERM and the parent's both reach it
    setup_logging()
    serving = partial(serve, sockets=sockets, worker=index, metrics_dir=metrics_dir)
    trio.run(serving, config, host, port)
