"""SIGINT and SIGTERM for the whole life of a ``collector serve`` process.

Supervisors signal a service more than once: ``timeout`` sends SIGTERM to the
child and then to its process group, ``uv run`` forwards what the group already
got, an operator presses Ctrl-C twice. Python's default action for SIGTERM (and
the default restored when Trio stops listening) ends the process at once, before
it stops the embedded PostgreSQL server. So from the first line of ``serve`` to
its last, these signals only record that a stop was asked for: before serving
starts, start-up stops at its next step; while serving, Trio's receiver takes
them; during shutdown, further ones are ignored.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

#: The signals that ask the service to stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_requested: list[int] = []


def install() -> None:
    """Replace the default actions of the stop signals by recording them."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _record)


def requested() -> bool:
    """Whether a stop signal arrived outside Trio's receiver."""
    return bool(_requested)


def request(signum: int) -> None:
    """Note a stop signal taken by someone else (Trio's receiver while serving)."""
    _requested.append(signum)


def _record(signum: int, _frame: FrameType | None) -> None:
    # os.write, not print: the handler may run in the middle of another print.
    name = signal.Signals(signum).name
    what = "again, already stopping" if _requested else "stopping"
    _requested.append(signum)
    os.write(2, f"collector: {name}, {what}\n".encode())
