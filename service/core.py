"""The fan-out/merge core: ask every source at once, wait for all, merge by id.

This module knows nothing of HTTP or SQL. A source is anything that satisfies the
small :class:`Source` protocol; the HTTP layer turns a :class:`Collection` into a
response, and the source implementations turn databases into :class:`Row` lists.

Outcomes a source can have in one collection::

    ok       it answered before the deadline; its rows are in the result
    timeout  the deadline passed first (or the driver's own, slightly shorter, one)
    error    it raised; its rows are missing and the reason is recorded
    skipped  its circuit breaker is open, so it was not asked (see breaker.py)
    pruned   its declared id ranges cannot hold any id asked for, so it was not asked

A collection can be a page: every source is asked for at most ``limit`` rows after
its position (the query is pushed down), the sorted answers are merged k ways, and
the page ends after ``limit`` rows. The cursor to the next page keeps a position per
source, so a source that missed this page is asked again from where it stopped:
a partial page never makes the client skip ids.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import operator
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from collections.abc import Collection as Collection_
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from itertools import islice, pairwise
from typing import NamedTuple, Protocol

import trio

from service.breaker import BreakerSettings, BreakerState, CircuitBreaker, Permit
from service.declared import DeclaredIds, IdsState

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
    PRUNED = "pruned"

    @property
    def answered(self) -> bool:
        """Whether no rows of the source can be missing (asked and answered, or pruned)."""
        return self in (Status.OK, Status.PRUNED)


class SourceError(Exception):
    """A source failed; the message is already a safe, short description.

    Source implementations raise it with secrets (DSN passwords) removed, so the
    core can log and report the reason as it is.
    """


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
class Collection:
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


OutcomeObserver = Callable[[Outcome], None]


class Collector:
    """Fans one collection out to a fixed set of sources under a per-source deadline."""

    def __init__(
        self,
        sources: Sequence[Source | Member],
        timeout: float,
        *,
        probe_timeout: float | None = None,
    ) -> None:
        if timeout <= 0 or (probe_timeout is not None and probe_timeout <= 0):
            raise ValueError("timeouts must be positive")
        self._members = tuple(s if isinstance(s, Member) else Member(s) for s in sources)
        self._breakers = tuple(CircuitBreaker(m.breaker) for m in self._members)
        self._timeout = timeout
        self._probe_timeout = timeout if probe_timeout is None else probe_timeout
        self.declared = DeclaredIds(
            [(m.source, m.ids) for m in self._members if m.ids is not None], timeout
        )
        """Which declarations are checked, so that pruning by them is safe."""
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

    async def collect(
        self, query: Query | None = None, *, budget: float | None = None
    ) -> Collection:
        """Ask every source concurrently and return whatever arrived in time.

        Each source may take the timeout, or ``budget`` seconds when the caller has
        already spent part of its deadline (a coalesced request that waited).
        Never raises because of a source: every failure becomes an outcome.
        """
        query = query or Query()
        budget = self._timeout if budget is None else max(0.0, min(budget, self._timeout))
        # Each child task writes only its own slot, so no locking is needed, and
        # each child catches every error its source can raise. That is what keeps
        # the nursery from ever cancelling siblings: one broken source cannot take
        # the others' rows down with it. The only exception that can escape is a
        # cancellation from *outside* (the client went away), and then abandoning
        # every source at once is exactly right.
        results: list[tuple[Outcome, Sequence[Row]] | None] = [None] * len(self._members)
        async with trio.open_nursery() as nursery:
            for index in range(len(self._members)):
                nursery.start_soon(self._fetch_one, index, query, budget, results)
        outcomes: list[Outcome] = []
        batches: list[Sequence[Row]] = []
        for result in results:
            assert result is not None  # every child fills its slot before returning
            outcomes.append(result[0])
            batches.append(result[1])
        rows = list(islice(merge_by_id(batches), query.limit))
        cursor = None
        if query.limit is not None and query.until is None:
            cursor = next_cursor(query, outcomes, batches, rows)
        return Collection(rows=rows, outcomes=tuple(outcomes), next=cursor)

    async def stream(
        self, query: Query, batch_size: int, stop: trio.Event | None = None
    ) -> AsyncGenerator[list[Row] | Collection, None]:
        """Yield the merged rows in chunks as they are merged, then a summary.

        Memory stays bounded by the number of sources times ``batch_size``: each
        source is read through a server-side cursor a batch at a time, and a batch
        is fetched only when the merge has used up the previous one. Every batch
        must arrive within the deadline; a source that fails mid-stream ends its
        contribution there and is reported in the summary, which is the last item
        (a Collection without rows: outcomes, and the cursor to resume from).

        Once ``stop`` is set (shutdown) the stream ends at the next row boundary:
        the summary is then marked interrupted and its cursor resumes after the
        last row yielded.
        """
        states = [
            _StreamState(m, b, query.window_for(m.source.name))
            for m, b in zip(self._members, self._breakers, strict=True)
        ]
        async with trio.open_nursery() as nursery:  # open every cursor at once
            for state in states:
                nursery.start_soon(self._stream_start, state, batch_size)
        heap = [(st.batch[0].id, i, 0) for i, st in enumerate(states) if st.batch]
        heapq.heapify(heap)
        chunk: list[Row] = []
        budget = query.limit
        interrupted = None
        try:
            while heap and (budget is None or budget > 0):
                if stop is not None and stop.is_set():
                    interrupted = "shutdown"
                    break
                _, index, position = heapq.heappop(heap)
                state = states[index]
                # Take every row of this batch that sorts before the other sources'
                # next rows in one slice: with sources holding runs of ids, most
                # rows never touch the heap.
                bound = heap[0][0] if heap else None
                end = len(state.batch)
                if bound is not None:
                    end = bisect.bisect_left(state.ids, bound, position, end)
                    end = max(end, position + 1)
                end = min(end, position + batch_size - len(chunk))
                if budget is not None:
                    end = min(end, position + budget)
                    budget -= end - position
                taken = state.batch[position:end]
                chunk.extend(taken)
                state.delivered += len(taken)
                state.last_id = taken[-1].id
                if end < len(state.batch):
                    heapq.heappush(heap, (state.batch[end].id, index, end))
                elif not state.finished:
                    await self._stream_next(state)
                    if state.batch:
                        heapq.heappush(heap, (state.batch[0].id, index, 0))
                if len(chunk) >= batch_size:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk
        finally:
            for state in states:
                state.finish()
        outcomes = [self._stream_outcome(state) for state in states]
        # Sources that delivered everything they hold can start anywhere.
        done = {st.member.source.name for st in states if st.finished and st.status.answered}
        cursor = None
        if len(done) < len(states):
            cursor = cursor_at([(st.member.source.name, st.position) for st in states], done)
        yield Collection(rows=[], outcomes=tuple(outcomes), next=cursor, interrupted=interrupted)

    async def _stream_start(self, state: _StreamState, batch_size: int) -> None:
        admission = admit(state.member, state.breaker, state.window, self.declared)
        if isinstance(admission, tuple):
            (state.status, state.error), state.finished = admission, True
            return
        state.permit = admission
        state.stream = state.member.source.open_stream(state.window, batch_size)
        await self._stream_next(state)

    async def _stream_next(self, state: _StreamState) -> None:
        assert state.stream is not None
        start = trio.current_time()
        state.status, batch, state.error = await attempt(state.stream.next_batch, self._timeout)
        state.batch, state.ids = list(batch), [row.id for row in batch]
        state.duration += trio.current_time() - start
        if state.status is not Status.OK or not state.batch:
            state.finished = True

    def _stream_outcome(self, state: _StreamState) -> Outcome:
        name = state.member.source.name
        missing = None
        if not state.status.answered:
            log.warning(
                "source %s %s mid-stream after %d rows: %s",
                name,
                state.status,
                state.delivered,
                state.error,
                extra={"source": name, "status": str(state.status), "reason": state.error},
            )
            ranges = self._trusted_ranges(state.member)
            if ranges is not None:
                missing = clip_ranges(ranges, state.position)
        outcome = Outcome(
            source=name,
            status=state.status,
            rows=state.delivered,
            duration=state.duration,
            error=state.error,
            breaker=state.breaker.state,
            missing_ids=missing,
        )
        self._notify(outcome)
        return outcome

    async def probe(self) -> tuple[Probe, ...]:
        """Ping every source concurrently under the probe deadline.

        A source whose breaker is open is not pinged: data requests skip it, so
        for readiness it counts as unable to serve, whatever a ping would say.
        """
        probes: list[Probe | None] = [None] * len(self._members)

        async def ping(index: int) -> None:
            member, breaker = self._members[index], self._breakers[index]
            start = trio.current_time()
            error: str | None
            if breaker.state is BreakerState.OPEN:
                failures = breaker.consecutive_failures
                status, error = Status.SKIPPED, f"circuit open after {failures} failures in a row"
            else:
                status, _, error = await attempt(member.source.ping, self._probe_timeout)
            duration = trio.current_time() - start
            name = member.source.name
            ids = self.declared.state(name)
            probes[index] = Probe(name, status, duration, error, breaker.state, ids)

        async with trio.open_nursery() as nursery:
            for index in range(len(self._members)):
                nursery.start_soon(ping, index)
        return tuple(p for p in probes if p is not None)

    async def _fetch_one(
        self,
        index: int,
        query: Query,
        budget: float,
        results: list[tuple[Outcome, Sequence[Row]] | None],
    ) -> None:
        member, breaker = self._members[index], self._breakers[index]
        source = member.source
        window = query.window_for(source.name)
        start = trio.current_time()
        rows: Sequence[Row] = ()
        before: BreakerState | None = None  # the breaker's state before this verdict
        admission = admit(member, breaker, window, self.declared)
        if isinstance(admission, tuple):
            status, error = admission
        else:
            try:
                status, rows, error = await attempt(partial(source.fetch, window), budget)
            except BaseException:
                breaker.release(admission)  # cancelled from outside: no verdict on the source
                raise
            before = breaker.state
            breaker.record(admission, success=status is Status.OK)
        if status is Status.PRUNED:
            # No id it could hold is asked for: no connection, no breaker verdict.
            outcome = Outcome(source.name, Status.PRUNED, 0, 0.0, breaker=breaker.state)
            self._notify(outcome)
            results[index] = (outcome, rows)
            return
        duration = trio.current_time() - start
        out_of_range = 0
        if status is Status.OK:
            if member.ids is not None:
                out_of_range = count_outside(rows, member.ids)
        elif status is not Status.SKIPPED:
            # A skip is not logged per request: the breaker's opening was, once.
            log.warning(
                "source %s %s after %.1f ms: %s",
                source.name,
                status,
                duration * 1000,
                error,
                extra={"source": source.name, "status": str(status), "reason": error},
            )
        if before is not None and breaker.state is not before:
            log_breaker_change(source.name, before, breaker)
        outcome = Outcome(
            source=source.name,
            status=status,
            rows=len(rows),
            duration=duration,
            error=error,
            breaker=breaker.state,
            missing_ids=self._trusted_ranges(member) if status is not Status.OK else None,
            out_of_range=out_of_range,
        )
        if out_of_range:
            log.warning(
                "source %s served %d rows outside its declared ids",
                source.name,
                out_of_range,
                extra={"source": source.name, "out_of_range": out_of_range},
            )
        self._notify(outcome)
        results[index] = (outcome, rows)

    def _trusted_ranges(self, member: Member) -> IdRanges | None:
        """The ranges that say what a failed source's absence hides; None once violated.

        A source known to hold rows outside its declaration may be missing any id.
        """
        if self.declared.state(member.source.name) is IdsState.VIOLATED:
            return None
        return member.ids

    def _notify(self, outcome: Outcome) -> None:
        for observer in self._observers:
            observer(outcome)


def log_breaker_change(name: str, before: BreakerState, breaker: CircuitBreaker) -> None:
    """One line when a source's breaker opens, re-opens after a failed trial, or closes.

    Requests that an open breaker skips are not logged one by one: under load that
    would be a line per request for as long as the source is down.
    """
    fields = {"source": name, "breaker": str(breaker.state)}
    if breaker.state is BreakerState.CLOSED:
        log.info("source %s answers again: circuit closed", name, extra=fields)
    elif before is BreakerState.CLOSED:
        log.warning(
            "source %s failed %d times in a row: circuit open, skipped for %g s",
            name,
            breaker.consecutive_failures,
            breaker.settings.cooldown,
            extra=fields,
        )
    else:
        log.warning(
            "source %s failed its trial: circuit open for another %g s",
            name,
            breaker.settings.cooldown,
            extra=fields,
        )


async def attempt(
    call: Callable[[], Awaitable[Sequence[Row] | None]], budget: float
) -> tuple[Status, Sequence[Row], str | None]:
    """Run one source call under the deadline; every way it can end becomes a status.

    This is the per-source guard: it catches all that a source can raise, so the
    nursery around it never cancels a sibling. Rows must come ordered by id.
    """
    status = Status.TIMEOUT
    rows: Sequence[Row] = ()
    error: str | None = f"no answer within {budget:g} s"
    with trio.move_on_after(budget):
        try:
            answer = await call()
            rows = answer if answer is not None else ()
            check_order(rows)
        except TimeoutError as exc:
            # A driver's own timeout is set just below ours, so it can fire first.
            rows, error = (), describe_error(exc)
        except Exception as exc:
            status, rows, error = Status.ERROR, (), describe_error(exc)
        else:
            status, error = Status.OK, None
    return status, rows, error


def admit(
    member: Member, breaker: CircuitBreaker, window: Window, declared: DeclaredIds
) -> Permit | tuple[Status, str | None]:
    """A permit to ask the source, or why not: pruned by its ranges, or breaker open.

    Ranges prune only once they are verified against the table: an unchecked or
    broken declaration would silently drop the rows outside it.
    """
    name = member.source.name
    if member.ids is not None and declared.prunable(name) and not window.intersects(member.ids):
        return Status.PRUNED, None
    permit = breaker.acquire()
    if permit is None:
        failures = breaker.consecutive_failures
        return Status.SKIPPED, f"circuit open after {failures} failures in a row"
    return permit


def count_outside(rows: Sequence[Row], ranges: IdRanges) -> int:
    """How many of ``rows`` (ordered by id) lie outside the inclusive ``ranges``.

    Counted per range with two bisections over the ids, not per row: a page of
    thousands of rows from a source declaring hundreds of ranges stays cheap.
    """
    ids = list(map(operator.itemgetter(0), rows))
    inside = sum(
        bisect.bisect_right(ids, last) - bisect.bisect_left(ids, first) for first, last in ranges
    )
    return len(ids) - inside


class _StreamState:
    """One source's progress through a streamed collection."""

    def __init__(self, member: Member, breaker: CircuitBreaker, window: Window) -> None:
        self.member = member
        self.breaker = breaker
        self.window = window
        self.permit: Permit | None = None
        self.stream: RowStream | None = None
        self.batch: list[Row] = []
        self.ids: list[int] = []
        self.status = Status.OK
        self.error: str | None = None
        self.finished = False
        self.delivered = 0
        self.last_id: int | None = None
        self.duration = 0.0

    @property
    def position(self) -> int | None:
        """The id this source's next rows come after."""
        return self.window.after if self.last_id is None else self.last_id

    def finish(self) -> None:
        """Close the cursor and give the breaker its verdict (or none, if cut short)."""
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        if self.permit is not None:
            if self.finished:
                self.breaker.record(self.permit, success=self.status is Status.OK)
            else:
                self.breaker.release(self.permit)  # the client stopped reading first
            self.permit = None


def clip_ranges(ranges: IdRanges, after: int | None) -> IdRanges:
    """The parts of ``ranges`` above ``after``."""
    if after is None:
        return ranges
    return tuple((max(first, after + 1), last) for first, last in ranges if last > after)


def merge_by_id(batches: Sequence[Sequence[Row]]) -> Iterator[Row]:
    """Merge per-source row lists, each ordered by id, into one ordered stream.

    A k-way merge on a heap: O(n log k) for k sources, and lazy, so a page stops
    consuming after ``limit`` rows. Rows with equal ids (the same id in two
    sources) are all kept, in source configuration order, because dropping
    either would hide data.
    """
    return heapq.merge(*batches, key=operator.attrgetter("id"))


def check_order(rows: Sequence[Row]) -> None:
    """Refuse a source answer that is not ordered by id (the merge relies on it)."""
    for previous, current in pairwise(rows):
        if current.id < previous.id:
            raise SourceError(f"rows out of id order: {current.id} after {previous.id}")


def next_cursor(
    query: Query,
    outcomes: Sequence[Outcome],
    batches: Sequence[Sequence[Row]],
    page: Sequence[Row],
) -> Cursor | None:
    """Where the page after ``page`` starts, or None if every source is exhausted.

    Each source gets its own next position: a source that missed the page stays
    where it was (it is asked again from there); a source some of whose rows at
    or below the page's last id did not fit (equal ids cut by the limit) resumes
    after its last row that did; any other source moves to the page's last id,
    or stays ahead if it already was. The cursor names the furthest position as
    ``after`` and lists the sources behind it.
    """
    assert query.limit is not None
    last = page[-1].id if page else None
    used = [0] * len(batches)
    for row in page:  # how many rows of each batch the page took, matched by identity
        for index, batch in enumerate(batches):
            if used[index] < len(batch) and batch[used[index]] is row:
                used[index] += 1
                break
    more = False
    positions: list[tuple[str, int | None]] = []
    for index, outcome in enumerate(outcomes):
        own_after = query.window_for(outcome.source).after
        batch, taken = batches[index], used[index]
        if not outcome.status.answered:
            more = True
            position = own_after
        else:
            if taken < len(batch) or len(batch) == query.limit:
                more = True  # rows left over, or a full batch: the source may hold more
            if taken < len(batch) and last is not None and batch[taken].id <= last:
                position = batch[taken - 1].id if taken else own_after
            else:
                position = _furthest(own_after, last)
        positions.append((outcome.source, position))
    return cursor_at(positions) if more else None


def cursor_at(positions: Sequence[tuple[str, int | None]], done: Collection_[str] = ()) -> Cursor:
    """A cursor from per-source positions: the furthest is ``after``, the rest lag.

    Sources in ``done`` have nothing left to give, so they are never listed.
    """
    after: int | None = None
    for _, position in positions:
        after = _furthest(after, position)
    behind = tuple(p for p in positions if p[1] != after and p[0] not in done)
    return Cursor(after=after, behind=behind)


def _furthest(a: int | None, b: int | None) -> int | None:
    """The later of two positions, where None is the very start."""
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


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
