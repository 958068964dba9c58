"""The fan-out/merge core: ask every source at once, wait for all, merge by id.

This module knows nothing of HTTP or SQL. A source is anything that satisfies the
small :class:`Source` protocol; the HTTP layer turns a :class:`Collection` into a
response, and the source implementations turn databases into :class:`Row` lists.

Outcomes a source can have in one collection::

    ok       it answered before the deadline; its rows are in the result
    timeout  the deadline passed first (or the driver's own, slightly shorter, one)
    error    it raised; its rows are missing and the reason is recorded
    skipped  its circuit breaker is open, so it was not asked (see breaker.py)
"""

from __future__ import annotations

import bisect
import logging
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import chain
from typing import Protocol

import trio

from service.breaker import BreakerSettings, BreakerState, CircuitBreaker

log = logging.getLogger("collector.core")

#: Longest error description kept in an outcome; enough to diagnose, short enough to log.
MAX_ERROR_LENGTH = 200

#: An inclusive range of ids, and a sorted, non-overlapping tuple of them.
IdRange = tuple[int, int]
IdRanges = tuple[IdRange, ...]


class Status(StrEnum):
    """How one source fared in one collection."""

    OK = "ok"
    TIMEOUT = "timeout"
    ERROR = "error"
    SKIPPED = "skipped"


class SourceError(Exception):
    """A source failed; the message is already a safe, short description.

    Source implementations raise it with secrets (DSN passwords) removed, so the
    core can log and report the reason as it is.
    """


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

    async def ping(self) -> None:
        """Return if the source can answer a trivial query now; raise otherwise."""
        ...


@dataclass(frozen=True, slots=True)
class Member:
    """A source as the collector sees it: what it holds and when to stop asking it."""

    source: Source
    ids: IdRanges | None = None
    """The id ranges it declares, used to report what is missing; None if unknown."""
    breaker: BreakerSettings = field(default_factory=BreakerSettings)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one source contributed to one collection."""

    source: str
    status: Status
    rows: int
    duration: float
    """Seconds from the start of the fetch until it ended or was abandoned."""
    error: str | None = None
    breaker: BreakerState = BreakerState.CLOSED
    """The source's breaker after this fetch."""
    missing_ids: IdRanges | None = None
    """When the rows are missing: the ranges the source declares (None if undeclared)."""
    out_of_range: int = 0
    """Rows served whose id lies outside the ranges the source declares."""


@dataclass(frozen=True, slots=True)
class Probe:
    """Whether a source could answer a trivial query just now."""

    source: str
    reachable: bool
    duration: float
    error: str | None
    breaker: BreakerState


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

    @property
    def missing_ids(self) -> IdRanges | None:
        """Every id range absent from the result; None if some absent source is undeclared."""
        ranges: list[IdRange] = []
        for outcome in self.outcomes:
            if outcome.status is Status.OK:
                continue
            if outcome.missing_ids is None:
                return None
            ranges.extend(outcome.missing_ids)
        return merge_ranges(ranges)


OutcomeObserver = Callable[[Outcome], None]


class Collector:
    """Fans one collection out to a fixed set of sources under a per-source deadline."""

    def __init__(
        self,
        sources: Sequence[Source | Member],
        timeout: float,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._members = tuple(s if isinstance(s, Member) else Member(s) for s in sources)
        self._breakers = tuple(CircuitBreaker(m.breaker) for m in self._members)
        self._timeout = timeout
        self._observers: list[OutcomeObserver] = []

    def add_observer(self, observer: OutcomeObserver) -> None:
        """Call ``observer`` with every outcome (metrics); it must not block or raise."""
        self._observers.append(observer)

    @property
    def sources(self) -> tuple[Source, ...]:
        """The sources every collection asks, in configuration order."""
        return tuple(m.source for m in self._members)

    @property
    def timeout(self) -> float:
        """Seconds each source may take."""
        return self._timeout

    def breaker_states(self) -> dict[str, BreakerState]:
        """Each source's breaker state as of now."""
        return {m.source.name: b.state for m, b in zip(self._members, self._breakers, strict=True)}

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
        results: list[tuple[Outcome, Sequence[Row]] | None] = [None] * len(self._members)
        async with trio.open_nursery() as nursery:
            for index in range(len(self._members)):
                nursery.start_soon(self._fetch_one, index, results)
        outcomes: list[Outcome] = []
        batches: list[Sequence[Row]] = []
        for result in results:
            assert result is not None  # every child fills its slot before returning
            outcomes.append(result[0])
            batches.append(result[1])
        return Collection(rows=merge_by_id(batches), outcomes=tuple(outcomes))

    async def probe(self) -> tuple[Probe, ...]:
        """Ping every source concurrently (ignoring breakers), each under the deadline."""
        probes: list[Probe | None] = [None] * len(self._members)

        async def ping(index: int) -> None:
            member, breaker = self._members[index], self._breakers[index]
            start = trio.current_time()
            error: str | None = f"no answer within {self._timeout:g} s"
            with trio.move_on_after(self._timeout):
                try:
                    await member.source.ping()
                except Exception as exc:
                    error = describe_error(exc)
                else:
                    error = None
            duration = trio.current_time() - start
            probes[index] = Probe(member.source.name, error is None, duration, error, breaker.state)

        async with trio.open_nursery() as nursery:
            for index in range(len(self._members)):
                nursery.start_soon(ping, index)
        return tuple(p for p in probes if p is not None)

    async def _fetch_one(
        self, index: int, results: list[tuple[Outcome, Sequence[Row]] | None]
    ) -> None:
        member, breaker = self._members[index], self._breakers[index]
        source = member.source
        start = trio.current_time()
        rows: Sequence[Row] = ()
        permit = breaker.acquire()
        if permit is None:
            status = Status.SKIPPED
            error: str | None = (
                f"circuit open after {breaker.consecutive_failures} failures in a row"
            )
        else:
            status = Status.TIMEOUT
            error = None
            try:
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
            except BaseException:
                breaker.release(permit)  # cancelled from outside: no verdict on the source
                raise
            breaker.record(permit, success=status is Status.OK)
        duration = trio.current_time() - start
        if status is Status.TIMEOUT and error is None:
            error = f"no answer within {self._timeout:g} s"
        out_of_range = 0
        if status is Status.OK:
            if member.ids is not None:
                out_of_range = sum(1 for row in rows if not in_ranges(row.id, member.ids))
        else:
            rows = ()
            log.warning(
                "source %s %s after %.1f ms: %s",
                source.name,
                status,
                duration * 1000,
                error,
                extra={"source": source.name, "status": str(status), "reason": error},
            )
        outcome = Outcome(
            source=source.name,
            status=status,
            rows=len(rows),
            duration=duration,
            error=error,
            breaker=breaker.state,
            missing_ids=member.ids if status is not Status.OK else None,
            out_of_range=out_of_range,
        )
        if out_of_range:
            log.warning(
                "source %s served %d rows outside its declared ids",
                source.name,
                out_of_range,
                extra={"source": source.name, "out_of_range": out_of_range},
            )
        for observer in self._observers:
            observer(outcome)
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


def in_ranges(value: int, ranges: IdRanges) -> bool:
    """Whether ``value`` lies in one of the sorted, inclusive ``ranges``."""
    index = bisect.bisect_right(ranges, (value, float("inf"))) - 1
    return index >= 0 and ranges[index][0] <= value <= ranges[index][1]


def merge_ranges(ranges: Sequence[IdRange]) -> IdRanges:
    """Sort inclusive ranges and join those that overlap or touch."""
    merged: list[IdRange] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return tuple(merged)


def describe_error(exc: BaseException) -> str:
    """A short, single-line reason for a failed source: type and first message line."""
    if isinstance(exc, SourceError):
        return str(exc)[:MAX_ERROR_LENGTH]
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text[:MAX_ERROR_LENGTH]
