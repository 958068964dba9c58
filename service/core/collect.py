"""The fan-out/merge: ask every source at once, wait for all, merge by id.

Outcomes a source can have in one collection::

    ok       it answered before the deadline; its rows are in the result
    timeout  the deadline passed first (or the driver's own, slightly shorter, one)
    error    it raised; its rows are missing and the reason is recorded
    skipped  its circuit breaker is open, so it was not asked (see breaker.py)
    pruned   its declared id ranges cannot hold any id asked for, so it was not asked

A collection can be a page: every source is asked for at most ``limit`` rows after
its position (the query is pushed down), the sorted answers are merged k ways, and
the page ends after ``limit`` rows, with a cursor to the next one (paging.py).
"""

from __future__ import annotations

import dataclasses
import heapq
import operator
from collections.abc import AsyncGenerator, Iterator, Sequence
from functools import partial
from itertools import islice

import trio

from service.core.breaker import BreakerSettings, BreakerState
from service.core.declared import DeclaredIds
from service.core.guard import Guard, OutcomeObserver, attempt, describe
from service.core.model import Answer, Outcome, Probe, Query, Row, Status
from service.core.paging import next_cursor
from service.core.ports import Member, Source
from service.core.probing import ProbeTarget
from service.core.replicas import ReplicaObserver, ReplicaSet, answered_by
from service.core.stream import merge_streams
from service.core.tracing import SOURCE_SPAN, span


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
        members = tuple(_member(s) for s in sources)
        self._timeout = timeout
        self._probe_timeout = timeout if probe_timeout is None else probe_timeout
        self.declared = DeclaredIds(
            [(m.source, m.ids) for m in members if m.ids is not None], timeout
        )
        """Which declarations are checked, so that pruning by them is safe."""
        self._observers: list[OutcomeObserver] = []
        self._guards = tuple(Guard(m, self.declared, self._observers) for m in members)

    def add_observer(self, observer: OutcomeObserver) -> None:
        """Call ``observer`` with every outcome (metrics); it must not block or raise."""
        self._observers.append(observer)

    def add_replica_observer(self, observer: ReplicaObserver) -> None:
        """Call ``observer`` on every replica attempt, hedge and hedge win (metrics)."""
        for guard in self._guards:
            if isinstance(guard.source, ReplicaSet):
                guard.source.add_observer(observer)

    def probe_targets(self) -> list[ProbeTarget]:
        """Every breaker an active health check watches: a source's, or each replica's."""
        targets: list[ProbeTarget] = []
        for guard in self._guards:
            if isinstance(guard.source, ReplicaSet):
                targets.extend(guard.source.probe_targets())
            else:
                targets.append(ProbeTarget(guard.name, guard.breaker, guard.source.ping))
        return targets

    @property
    def sources(self) -> tuple[Source, ...]:
        """The sources every collection asks, in configuration order."""
        return tuple(g.source for g in self._guards)

    @property
    def timeout(self) -> float:
        """Seconds each source may take."""
        return self._timeout

    def breaker_states(self) -> dict[str, BreakerState]:
        """Each source's breaker state as of now."""
        return {g.name: g.breaker.state for g in self._guards}

    async def collect(
        self, query: Query | None = None, *, seconds_left: float | None = None
    ) -> Answer:
        """Ask every source concurrently and return whatever arrived in time.

        Each source may take the timeout, or ``seconds_left`` when the caller has
        already spent part of its deadline (a coalesced request that waited).
        Never raises because of a source: every failure becomes an outcome.
        """
        query = query or Query()
        seconds = self._timeout
        if seconds_left is not None:
            seconds = max(0.0, min(seconds_left, self._timeout))
        # Each child task writes only its own slot, so no locking is needed, and
        # each child catches every error its source can raise. That is what keeps
        # the nursery from ever cancelling siblings: one broken source cannot take
        # the others' rows down with it. The only exception that can escape is a
        # cancellation from *outside* (the client went away), and then abandoning
        # every source at once is exactly right.
        results: list[tuple[Outcome, Sequence[Row]] | None] = [None] * len(self._guards)
        async with trio.open_nursery() as nursery:
            for index, guard in enumerate(self._guards):
                nursery.start_soon(self._fetch_one, guard, index, query, seconds, results)
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
        return Answer(rows=rows, outcomes=tuple(outcomes), next=cursor)

    def stream(
        self,
        query: Query,
        batch_size: int,
        stop: trio.Event | None = None,
        *,
        batch_seconds: float | None = None,
    ) -> AsyncGenerator[list[Row] | Answer, None]:
        """Yield the merged rows in chunks as they are merged, then a summary.

        Memory stays bounded by the number of sources times ``batch_size``: each
        source is read through a server-side cursor a batch at a time, and a batch
        is fetched only when the merge has used up the previous one. Every batch
        must arrive within the deadline; a source that fails mid-stream ends its
        contribution there and is reported in the summary, which is the last item
        (a Answer without rows: outcomes, and the cursor to resume from).

        Once ``stop`` is set (shutdown) the stream ends at the next row boundary:
        the summary is then marked interrupted and its cursor resumes after the
        last row yielded.

        ``batch_seconds`` shortens every batch's deadline (a client's
        ``Prefer: wait``); it never lengthens it beyond the timeout.
        """
        seconds = self._timeout
        if batch_seconds is not None:
            seconds = max(0.0, min(batch_seconds, self._timeout))
        return merge_streams(self._guards, query, batch_size, seconds, stop)

    async def probe(self) -> tuple[Probe, ...]:
        """Ping every source concurrently under the probe deadline.

        A source whose breaker is open is not pinged: data requests skip it, so
        for readiness it counts as unable to serve, whatever a ping would say.
        """
        probes: list[Probe | None] = [None] * len(self._guards)

        async def ping(index: int, guard: Guard) -> None:
            breaker = guard.breaker
            start = trio.current_time()
            error: str | None
            if breaker.state is BreakerState.OPEN:
                status, error = guard.skipped()
            else:
                status, _, error = await attempt(guard.source.ping, self._probe_timeout)
            duration = trio.current_time() - start
            ids = self.declared.state(guard.name)
            probes[index] = Probe(guard.name, status, duration, error, breaker.state, ids)

        async with trio.open_nursery() as nursery:
            for index, guard in enumerate(self._guards):
                nursery.start_soon(ping, index, guard)
        return tuple(p for p in probes if p is not None)

    async def _fetch_one(
        self,
        guard: Guard,
        index: int,
        query: Query,
        seconds: float,
        results: list[tuple[Outcome, Sequence[Row]] | None],
    ) -> None:
        """One source's part of a collection, inside its ``collector.source`` span."""
        with span(SOURCE_SPAN, {"collector.source": guard.name}) as traced:
            await self._fetch_untraced(guard, index, query, seconds, results)
            result = results[index]
            if result is not None:
                outcome = result[0]
                describe(traced, outcome.status, outcome.rows, outcome.error, seconds)
                traced.set("collector.breaker", outcome.breaker.value)

    async def _fetch_untraced(
        self,
        guard: Guard,
        index: int,
        query: Query,
        seconds: float,
        results: list[tuple[Outcome, Sequence[Row]] | None],
    ) -> None:
        window = query.window_for(guard.name)
        start = trio.current_time()
        rows: Sequence[Row] = ()
        clearance = guard.clearance(window)
        permit = None
        if isinstance(clearance, tuple):
            status, error = clearance
        else:
            permit = clearance
            fetch = partial(guard.source.fetch, window)
            status, rows, error = await guard.ask(permit, fetch, seconds)
        duration = trio.current_time() - start
        guard.verdict(permit, status, error, duration=duration, rows=len(rows))
        stray = guard.count_stray(rows) if status is Status.OK else 0
        replica = answered_by() if status is Status.OK else None
        outcome = guard.outcome(
            status,
            rows=len(rows),
            duration=duration,
            error=error,
            out_of_range=stray,
            replica=replica,
        )
        results[index] = (outcome, rows)


def _member(source: Source | Member) -> Member:
    """A configured source as the collector keeps it.

    A replica set's own breaker never opens: each replica has one, and with all of
    them open the set answers ``skipped`` at once, closing as soon as a probe (or a
    trial) brings one replica back.
    """
    member = source if isinstance(source, Member) else Member(source)
    if isinstance(member.source, ReplicaSet):
        member = dataclasses.replace(member, breaker=BreakerSettings(failures=0))
    return member


def merge_by_id(batches: Sequence[Sequence[Row]]) -> Iterator[Row]:
    """Merge per-source row lists, each ordered by id, into one ordered stream.

    A k-way merge on a heap: O(n log k) for k sources, and lazy, so a page stops
    consuming after ``limit`` rows. Rows with equal ids (the same id in two
    sources) are all kept, in source configuration order, because dropping
    either would hide data.
    """
    return heapq.merge(*batches, key=operator.attrgetter("id"))
