"""The fan-out/merge core: ask every source at once, wait for all, merge by id.

This module knows nothing of HTTP or SQL. A source is anything that satisfies the
small :class:`Source` protocol; the HTTP layer turns a :class:`Collection` into a
response, and the source implementations turn databases into :class:`Row` lists.

Outcomes a source can have in one collection::

    ok       it answered before the deadline; its rows are in the result
    timeout  the deadline passed first (or the driver's own, slightly shorter, one)
    error    it raised; its rows are missing and the reason is recorded
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import chain
from typing import Protocol

import trio

log = logging.getLogger("collector.core")

#: Longest error description kept in an outcome; enough to diagnose, short enough to log.
MAX_ERROR_LENGTH = 200


class Status(StrEnum):
    """How one source fared in one collection."""

    OK = "ok"
    TIMEOUT = "timeout"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Row:
    """One row of the product's single table shape."""

    id: int
    name: str | None


class Source(Protocol):
    """Anything rows can be fetched from.

    ``fetch`` must return the source's rows ordered by id and must be cancellable:
    the core stops waiting at the deadline by cancelling it, and an implementation
    must not block that cancellation on I/O.
    """

    @property
    def name(self) -> str:
        """Identifies the source in outcomes, headers and logs."""
        ...

    async def fetch(self) -> Sequence[Row]:
        """Return every row of the source, ordered by id."""
        ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one source contributed to one collection."""

    source: str
    status: Status
    rows: int
    duration: float
    """Seconds from the start of the fetch until it ended or was abandoned."""
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Collection:
    """The merged rows of every source that answered, and every source's outcome."""

    rows: list[Row]
    outcomes: tuple[Outcome, ...]

    @property
    def complete(self) -> bool:
        """True when every source answered, so no rows can be missing."""
        return all(outcome.status is Status.OK for outcome in self.outcomes)

    @property
    def missing(self) -> tuple[str, ...]:
        """Names of the sources whose rows are not in the result."""
        return tuple(o.source for o in self.outcomes if o.status is not Status.OK)


class Collector:
    """Fans one collection out to a fixed set of sources under a per-source deadline."""

    def __init__(self, sources: Sequence[Source], timeout: float) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._sources = tuple(sources)
        self._timeout = timeout

    @property
    def sources(self) -> tuple[Source, ...]:
        """The sources every collection asks, in configuration order."""
        return self._sources

    @property
    def timeout(self) -> float:
        """Seconds each source may take."""
        return self._timeout

    async def collect(self) -> Collection:
        """Ask every source concurrently and return whatever arrived in time.

        Never raises because of a source: every failure becomes an outcome.
        """
        # Each child task writes only its own slot, so no locking is needed, and
        # each child catches every error its source can raise. That is what keeps
        # the nursery from ever cancelling siblings: one broken source cannot take
        # the others' rows down with it. The only exception that can escape is a
        # cancellation from *outside* (the client went away), and then abandoning
        # every source at once is exactly right.
        results: list[tuple[Outcome, Sequence[Row]] | None] = [None] * len(self._sources)
        async with trio.open_nursery() as nursery:
            for index, source in enumerate(self._sources):
                nursery.start_soon(self._fetch_one, source, index, results)
        outcomes: list[Outcome] = []
        batches: list[Sequence[Row]] = []
        for result in results:
            assert result is not None  # every child fills its slot before returning
            outcomes.append(result[0])
            batches.append(result[1])
        return Collection(rows=merge_by_id(batches), outcomes=tuple(outcomes))

    async def _fetch_one(
        self,
        source: Source,
        index: int,
        results: list[tuple[Outcome, Sequence[Row]] | None],
    ) -> None:
        start = trio.current_time()
        rows: Sequence[Row] = ()
        status = Status.TIMEOUT
        error: str | None = None
        with trio.move_on_after(self._timeout):
            try:
                rows = await source.fetch()
            except TimeoutError as exc:
                # A driver's own timeout is set just below ours, so it can fire first.
                status, error = Status.TIMEOUT, describe_error(exc)
            except Exception as exc:
                status, error = Status.ERROR, describe_error(exc)
            else:
                status = Status.OK
        duration = trio.current_time() - start
        if status is Status.TIMEOUT and error is None:
            error = f"no answer within {self._timeout:g} s"
        if status is not Status.OK:
            rows = ()
            log.warning(
                "source %s %s after %.1f ms: %s", source.name, status, duration * 1000, error
            )
        outcome = Outcome(source.name, status, len(rows), duration, error)
        results[index] = (outcome, rows)


def merge_by_id(batches: Sequence[Sequence[Row]]) -> list[Row]:
    """Merge per-source row lists into one list ordered by id.

    Sources return their rows already ordered, and Timsort finds those runs and
    merges them, so this costs O(n log k) for k sources rather than a full sort,
    yet stays correct if a source ever hands back rows out of order. The sort is
    stable: rows with equal ids (the same id in two sources) are all kept, in
    source configuration order, because dropping either would hide data.
    """
    return sorted(chain.from_iterable(batches), key=operator.attrgetter("id"))


def describe_error(exc: BaseException) -> str:
    """A short, single-line reason for a failed source: type and first message line."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text[:MAX_ERROR_LENGTH]
