"""The values the core passes around: rows, windows, queries, outcomes, collections.

Plain frozen data with no I/O, so every other room (the HTTP layer, the sources, the
tests) can build and read them freely. Id ranges are inclusive ``(first, last)``
pairs; the two functions at the end are the range algebra outcomes need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from service.core.breaker import BreakerState
from service.core.declared import IdsState

#: An inclusive range of ids, and a sorted, non-overlapping tuple of them.
IdRange = tuple[int, int]
IdRanges = tuple[IdRange, ...]


class Status(StrEnum):
    """How one source fared in one collection."""

    OK = "ok"
    TIMEOUT = "timeout"
    ERROR = "error"
    SKIPPED = "skipped"
    PRUNED = "pruned"

    @property
    def answered(self) -> bool:
        """Whether no rows of the source can be missing (asked and answered, or pruned)."""
        return self in (Status.OK, Status.PRUNED)


class Row(NamedTuple):
    """One row of the product's single table shape.

    A named tuple rather than a dataclass: millions of them are made when a
    stream is merged, and a tuple is built at C speed (a frozen dataclass takes
    about three times as long here).
    """

    id: int
    name: str | None


@dataclass(frozen=True, slots=True)
class Window:
    """What one source is asked for: ids in ``(after, until]``, at most ``limit`` rows.

    ``None`` leaves a bound open. Sources push the window down into their query.
    """

    after: int | None = None
    until: int | None = None
    limit: int | None = None

    def intersects(self, ranges: IdRanges) -> bool:
        """Whether any of the inclusive ``ranges`` holds an id inside this window."""
        low = float("-inf") if self.after is None else self.after + 1
        high = float("inf") if self.until is None else self.until
        return any(first <= high and last >= low for first, last in ranges)


@dataclass(frozen=True, slots=True)
class Query:
    """One collection's question: a window on the ids, and where lagging sources are.

    ``behind`` maps a source to its own ``after`` when a previous page missed it
    (``None``: from the very start); every other source starts at ``after``.
    """

    after: int | None = None
    until: int | None = None
    limit: int | None = None
    behind: tuple[tuple[str, int | None], ...] = ()

    def window_for(self, source: str) -> Window:
        """The window pushed down to ``source``."""
        after = dict(self.behind).get(source, self.after)
        return Window(after=after, until=self.until, limit=self.limit)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where the next page starts: ``after`` for most sources, ``behind`` for laggards."""

    after: int | None
    behind: tuple[tuple[str, int | None], ...] = ()


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
    replica: str | None = None
    """Which replica answered, for a source with several (None: one server, or none)."""


@dataclass(frozen=True, slots=True)
class Probe:
    """Whether a source could answer a trivial query just now.

    ``status`` is ``ok``, ``timeout`` (no answer within the probe deadline),
    ``error``, or ``skipped`` (its breaker is open: data requests skip it, so
    it serves nothing whether or not it would answer a ping).
    """

    source: str
    status: Status
    duration: float
    error: str | None
    breaker: BreakerState
    ids: IdsState | None = None
    """Whether its declared ids were checked (None: it declares none)."""

    @property
    def reachable(self) -> bool:
        """Whether it answered the ping."""
        return self.status is Status.OK


@dataclass(frozen=True, slots=True)
class Answer:
    """The merged rows of every source that answered, and every source's outcome."""

    rows: list[Row]
    outcomes: tuple[Outcome, ...]
    next: Cursor | None = None
    """Where the next page starts, for a paged query that has more to give."""
    interrupted: str | None = None
    """Why a stream ended before its rows did (``"shutdown"``); ``next`` resumes it."""

    @property
    def complete(self) -> bool:
        """True when every source answered (or was pruned), so no rows can be missing."""
        if self.interrupted is not None:
            return False
        return all(outcome.status.answered for outcome in self.outcomes)

    @property
    def missing(self) -> tuple[str, ...]:
        """Names of the sources whose rows are not in the result."""
        return tuple(o.source for o in self.outcomes if not o.status.answered)

    @property
    def missing_ids(self) -> IdRanges | None:
        """Every id range absent from the result; None if some absent source is undeclared."""
        ranges: list[IdRange] = []
        for outcome in self.outcomes:
            if outcome.status.answered:
                continue
            if outcome.missing_ids is None:
                return None
            ranges.extend(outcome.missing_ids)
        return merge_ranges(ranges)


def merge_ranges(ranges: Sequence[IdRange]) -> IdRanges:
    """Sort inclusive ranges and join those that overlap or touch."""
    merged: list[IdRange] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return tuple(merged)


def clip_ranges(ranges: IdRanges, after: int | None) -> IdRanges:
    """The parts of ``ranges`` above ``after``."""
    if after is None:
        return ranges
    return tuple((max(first, after + 1), last) for first, last in ranges if last > after)
