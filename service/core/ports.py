"""What the core needs from a source, and how a source may fail.

A source is anything that satisfies :class:`Source`; a stream of its rows is a
:class:`RowStream`. The core never imports an implementation: the sources package
plugs databases in here.

How each way a source call can end is judged (``guard.attempt``)::

    BaseException
     ├── trio.Cancelled            from outside (the client went away): no verdict,
     │                             the breaker's permit is handed back
     └── Exception
          ├── TimeoutError         the driver's own deadline, set just below ours:
          │                        status ``timeout``
          ├── SourceError          the source failed; its message is already safe to
          │    │                   log (passwords removed): status ``error``
          │    │                   (also raised by the core for rows out of id order)
          │    └── SourceSkipped   every replica's breaker is open: status ``skipped``
          └── any other            status ``error``, described as "Type: first line"

Our own deadline passing is status ``timeout`` too. Whatever a call raised while
the request around it was being cancelled counts as that cancellation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from service.core.breaker import BreakerSettings
from service.core.model import IdRanges, Row, Window

#: Longest error description kept in an outcome; enough to diagnose, short enough to log.
MAX_ERROR_LENGTH = 200


class SourceError(Exception):
    """A source failed; the message is already a safe, short description.

    Source implementations raise it with secrets (DSN passwords) removed, so the
    core can log and report the reason as it is.
    """


class SourceSkipped(SourceError):
    """Nothing was asked: every server of the source has its breaker open (``skipped``)."""


class Source(Protocol):
    """Anything rows can be fetched from.

    ``fetch`` must return the source's rows inside the window, ordered by id, and
    must be cancellable: the core stops waiting at the deadline by cancelling it,
    and an implementation must not block that cancellation on I/O.
    """

    @property
    def name(self) -> str:
        """Identifies the source in outcomes, headers and logs."""
        ...

    async def fetch(self, window: Window) -> Sequence[Row]:
        """Return the source's rows inside ``window``, ordered by id."""
        ...

    async def ping(self) -> None:
        """Return if the source can answer a trivial query now; raise otherwise."""
        ...

    def open_stream(self, window: Window, batch_size: int) -> RowStream:
        """A server-side cursor over the rows in ``window``, read ``batch_size`` at a time."""
        ...

    async def lowest_outside(self, ranges: IdRanges) -> int | None:
        """The lowest id outside the inclusive ``ranges`` (an indexed query); None if none."""
        ...


class RowStream(Protocol):
    """Rows of one source in id order, a batch at a time (a server-side cursor)."""

    async def next_batch(self) -> Sequence[Row]:
        """The next rows, ordered by id; an empty batch means the end."""
        ...

    def close(self) -> None:
        """Release the cursor and its connection without waiting (never blocks)."""
        ...


@dataclass(frozen=True, slots=True)
class Member:
    """A source as the collector sees it: what it holds and when to stop asking it."""

    source: Source
    ids: IdRanges | None = None
    """The id ranges it declares: what is missing when it fails, and, once verified
    against its table, which requests may skip it. None if undeclared."""
    breaker: BreakerSettings = field(default_factory=BreakerSettings)


def describe_error(exc: BaseException) -> str:
    """A short, single-line reason for a failed source: type and first message line."""
    if isinstance(exc, SourceError):
        return str(exc)[:MAX_ERROR_LENGTH]
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text[:MAX_ERROR_LENGTH]
