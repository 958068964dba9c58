"""Replicas: one source served by several servers that hold the same rows.

A :class:`ReplicaSet` is a :class:`~service.core.ports.Source` like any other, so the
guard, the fan-out, paging and streams use it unchanged. Inside it:

- **Choice.** Each fetch goes first to the replica expected to answer first. Each
  replica keeps an EWMA of its latency and its calls in flight; its score is
  ``latency * (in_flight + 1)``, the time a new call can expect to wait, where
  ``latency`` is the EWMA or the age of its oldest call in flight, if older. Of
  the replicas whose breaker is not open, two are drawn at random and the lower
  score wins (power of two choices); the others follow in score order, as
  fail-overs and hedges. Two random candidates rather than the global best: when
  many requests choose at once on the same figures, the best replica would get
  all of them, while two choices spread the load and still avoid the worst one.
  The in-flight term reacts at once, before any latency is measured. A replica
  with a call in flight for longer than the hedge delay and twice its EWMA, that
  has answered nothing since that call began, is *suspect* (it may have stopped
  answering) and is asked only after the others.
  A replica not measured for ``STALE_AFTER`` seconds (it lost every race, or was
  never asked) scores zero for one fetch, so it is tried again and its figure
  refreshed; the fetches meanwhile see its old figure.
- **Fail-over.** A replica that errors is skipped at once for the next one, within
  the same deadline (the caller's cancel scope).
- **Breakers.** Each replica has its own breaker; an open one is not asked.
- **Hedging.** If the chosen replica has not answered after the hedge delay, the
  same call goes to the next replica as well; the first answer wins and the other
  attempt is cancelled (the bridge cancels the driver's query). Hedges are paid
  from a budget (:class:`HedgeBudget`) so that an overloaded cluster is never sent
  twice its load. The delay is configured, or by default the 95th percentile of
  the source's recent answers.
- **Streams** open on one replica (no hedging), failing over to the next if
  opening or the first batch fails; once rows flow, a failure ends the stream as
  it would for a single server (the summary's cursor resumes it).

Which replica answered is reported through :func:`answered_by` (fetches) and
:attr:`ReplicaStream.replica` (streams), and to observers as events.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import Generic, TypeVar

import trio

from service.core.breaker import BreakerSettings, BreakerState, CircuitBreaker, Permit
from service.core.guard import log_breaker_change
from service.core.model import IdRanges, Row, Window
from service.core.ports import RowStream, Source, SourceError, SourceSkipped, describe_error
from service.core.probing import ProbeTarget

T = TypeVar("T")

#: Weight of the newest latency sample in a replica's EWMA: about the last five
#: samples count, so a replica that slows down is avoided within a few fetches.
EWMA_WEIGHT = 0.3
#: Seconds after which a replica's latency figure is too old to trust.
STALE_AFTER = 2.0
#: A failed attempt counts as at least this slow: an error that comes back fast
#: (connection refused) must not make the failing replica look like the best one.
FAILURE_PENALTY = 1.0
#: Hedge delay while a source has too few answers for a percentile.
DEFAULT_HEDGE_DELAY = 0.05
#: Bounds of the automatic hedge delay, in seconds.
MIN_HEDGE_DELAY = 0.002
#: Answers kept for the automatic hedge delay, and how many it needs.
LATENCY_WINDOW = 200
MIN_SAMPLES = 20
HEDGE_PERCENTILE = 0.95
#: Default share of fetches that may be hedged.
DEFAULT_HEDGE_BUDGET = 0.1
#: Hedges the budget can hold at most (and holds at start).
HEDGE_BURST = 3.0

ReplicaObserver = Callable[[str, str, str], None]
"""Called with (source, replica, event): ``fetch`` (an attempt was sent), ``hedge``
(that attempt was a hedge), ``hedge_win`` (a hedge answered first)."""

_answered_by: ContextVar[str | None] = ContextVar("answered_by", default=None)


def answered_by() -> str | None:
    """The replica whose answer the last fetch of a replica set in this task returned."""
    return _answered_by.get()


@dataclass(frozen=True, slots=True)
class HedgeSettings:
    """When to hedge: after ``delay`` seconds (None: the recent p95), within ``budget``."""

    delay: float | None = None
    budget: float = DEFAULT_HEDGE_BUDGET


class HedgeBudget:
    """A token bucket: each fetch earns ``share`` of a hedge, each hedge spends one.

    Over any stretch of time the hedges are then at most ``share`` of the fetches
    plus the burst, so a cluster that slows down under load is not sent more.
    """

    def __init__(self, share: float, burst: float = HEDGE_BURST) -> None:
        self.share = share
        self.burst = max(burst, 1.0)
        self.tokens = self.burst if share > 0 else 0.0

    def earn(self) -> None:
        """One fetch began."""
        self.tokens = min(self.burst, self.tokens + self.share)

    def spend(self) -> bool:
        """Take one hedge from the budget, if it holds one."""
        if self.tokens < 1.0 - 1e-9:  # ten tenths make one, despite binary fractions
            return False
        self.tokens -= 1.0
        return True


class Replica:
    """One server of a replica set, with its breaker and latency figures."""

    def __init__(self, label: str, source: Source, breaker: BreakerSettings) -> None:
        self.label = label
        self.source = source
        self.breaker = CircuitBreaker(breaker)
        self.ewma: float | None = None
        self.started: list[float] = []
        """When each call in flight began."""
        self.measured_at = -math.inf
        self.answered_at = -math.inf
        """When a call last returned an answer."""

    @property
    def in_flight(self) -> int:
        """Calls sent to this replica that have not ended."""
        return len(self.started)

    def score(self, now: float) -> float:
        """Seconds a new call can expect to wait; zero when the figure is stale.

        A call in flight for longer than the EWMA is a sample not yet taken: a
        replica that just stopped answering looks slow at once, not only once its
        calls end (a black-holed one's would end only at the deadline).
        """
        if self.ewma is None or now - self.measured_at > STALE_AFTER:
            return 0.0 if not self.started else now - self.started[0]
        latency = max(self.ewma, now - self.started[0]) if self.started else self.ewma
        return latency * (self.in_flight + 1)

    def suspect(self, now: float, patience: float) -> bool:
        """Whether it may have stopped answering (see the module docstring).

        A call in flight for longer than ``patience`` and twice the EWMA, and no
        answer since that call began. New fetches then go elsewhere first rather
        than queue behind it. A replica that keeps answering other calls is only
        busy, and its score says so.
        """
        if not self.started or self.answered_at > self.started[0]:
            return False
        return now - self.started[0] > max(patience, 2 * (self.ewma or 0.0))

    def measure(self, seconds: float, now: float) -> None:
        """Fold one latency sample into the EWMA."""
        if self.ewma is None:
            self.ewma = seconds
        else:
            self.ewma += EWMA_WEIGHT * (seconds - self.ewma)
        self.measured_at = now


class ReplicaSet:
    """A source whose rows several servers hold; see the module docstring."""

    def __init__(
        self,
        name: str,
        replicas: Sequence[tuple[str, Source]],
        *,
        breaker: BreakerSettings | None = None,
        hedge: HedgeSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not replicas:
            raise ValueError("a replica set needs at least one replica")
        self._name = name
        settings = breaker or BreakerSettings()
        self.replicas = tuple(Replica(label, source, settings) for label, source in replicas)
        self.hedge = hedge or HedgeSettings()
        self.budget = HedgeBudget(self.hedge.budget if len(self.replicas) > 1 else 0.0)
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._rng = rng or random.Random()
        self._observers: list[ReplicaObserver] = []
        self.fetches = 0
        self.hedges = 0

    @property
    def name(self) -> str:
        """The source's name (every replica serves under it)."""
        return self._name

    def add_observer(self, observer: ReplicaObserver) -> None:
        """Call ``observer`` on every attempt, hedge and hedge win; it must not block."""
        self._observers.append(observer)

    def probe_targets(self) -> list[ProbeTarget]:
        """Each replica's breaker and ping, for the active health checks."""
        return [
            ProbeTarget(f"{self._name} replica {r.label}", r.breaker, r.source.ping)
            for r in self.replicas
        ]

    def hedge_delay(self) -> float:
        """Seconds before a hedge: configured, else the recent 95th percentile."""
        if self.hedge.delay is not None:
            return self.hedge.delay
        if len(self._latencies) < MIN_SAMPLES:
            return DEFAULT_HEDGE_DELAY
        ordered = sorted(self._latencies)
        return max(MIN_HEDGE_DELAY, ordered[int(HEDGE_PERCENTILE * (len(ordered) - 1))])

    def ranked(self, *, measuring: bool = True) -> list[Replica]:
        """The replicas to ask, in order: the power-of-two choice, then by score.

        ``measuring``: the call will measure the first replica (a fetch or a stream,
        not a ping), so it may be the one that re-measures a stale figure.
        """
        now = trio.current_time()
        usable = [r for r in self.replicas if r.breaker.state is not BreakerState.OPEN]
        if len(usable) < 2:
            return usable
        patience = self.hedge_delay()
        trusted = [r for r in usable if not r.suspect(now, patience)] or usable
        one, two = self._rng.sample(trusted, 2) if len(trusted) > 1 else (trusted[0],) * 2
        first = two if two.score(now) < one.score(now) else one
        rest = sorted(
            (r for r in usable if r is not first),
            key=lambda r: (r.suspect(now, patience), r.score(now)),
        )
        if measuring and now - first.measured_at > STALE_AFTER:
            # This fetch re-measures a stale replica; the fetches running meanwhile
            # keep its old figure, or every one of them would be sent to it at once.
            first.measured_at = now
        return [first, *rest]

    async def fetch(self, window: Window) -> Sequence[Row]:
        """The rows from the replica that answers first."""
        _answered_by.set(None)
        self.fetches += 1
        self.budget.earn()
        race: _Race[Sequence[Row]] = _Race(self, lambda source: source.fetch(window), True)
        rows = await race.run(hedging=True)
        _answered_by.set(race.winner)
        return rows

    async def ping(self) -> None:
        """Return if some replica answers a ping (no verdicts: readiness only asks)."""
        await _Race(self, lambda source: source.ping(), False).run(hedging=False)

    async def lowest_outside(self, ranges: IdRanges) -> int | None:
        """The ids check, on the first replica that answers it."""
        race: _Race[int | None] = _Race(self, lambda s: s.lowest_outside(ranges), False)
        return await race.run(hedging=False)

    def open_stream(self, window: Window, batch_size: int) -> ReplicaStream:
        """A cursor on one replica, chosen when the first batch is read."""
        return ReplicaStream(self, window, batch_size)

    def notify(self, replica: Replica, event: str) -> None:
        """Hand one event to the observers (metrics)."""
        for observer in self._observers:
            observer(self._name, replica.label, event)

    def answered(self, replica: Replica, permit: Permit, seconds: float) -> None:
        """A judged attempt answered in ``seconds``."""
        now = trio.current_time()
        replica.measure(seconds, now)
        replica.answered_at = now
        self._latencies.append(seconds)
        self._judge(replica, permit, success=True)

    def failed(self, replica: Replica, permit: Permit, seconds: float) -> None:
        """A judged attempt failed or ran out of time after ``seconds``."""
        replica.measure(max(seconds, FAILURE_PENALTY), trio.current_time())
        self._judge(replica, permit, success=False)

    def _judge(self, replica: Replica, permit: Permit, *, success: bool) -> None:
        before = replica.breaker.state
        replica.breaker.record(permit, success=success)
        if replica.breaker.state is not before:
            log_breaker_change(f"{self._name} replica {replica.label}", before, replica.breaker)

    def abandoned(self, replica: Replica, permit: Permit, seconds: float) -> None:
        """A judged attempt was cancelled before it ended (it lost, or the client left).

        No breaker verdict, but it had not answered after ``seconds``: the sample
        is that plus what its EWMA said it still needed, so a replica that keeps
        losing races (black-holed, say) looks slower each time and stops being
        chosen, while one that lost a single race to jitter soon recovers.
        """
        replica.measure(seconds + (replica.ewma or 0.0), trio.current_time())
        replica.breaker.release(permit)


class _Race(Generic[T]):
    """One call across the replicas: first answer wins, the rest are cancelled."""

    def __init__(
        self, owner: ReplicaSet, call: Callable[[Source], Awaitable[T]], judged: bool
    ) -> None:
        self.owner = owner
        self.call = call
        self.judged = judged
        """Fetches give breaker verdicts and latency samples; pings and checks do not."""
        self.deadline = trio.current_effective_deadline()
        self.answer: T | None = None
        self.winner: str | None = None
        self.errors: list[str] = []
        self.wake = trio.Event()

    async def run(self, *, hedging: bool) -> T:
        """Ask the ranked replicas in turn: on failure at once, after the delay as a hedge."""
        pending = deque(self.owner.ranked(measuring=self.judged))
        asked = 0
        hedged = False
        # Every attempt runs as a child of this nursery and catches its own errors,
        # so a failing replica never cancels its siblings. The loop below starts the
        # next replica when the last one started has failed (``wake``), or, once per
        # call, when the hedge delay passes with no answer and the budget pays for a
        # hedge (asked again every hedge delay while it holds none, so a fetch stuck on
        # a replica that just went slow is hedged once other fetches have earned one;
        # those others avoid that replica already, its calls in flight being old).
        # The first attempt to answer cancels the nursery: that stops this
        # loop and every other attempt. The caller's cancel scope (the deadline)
        # bounds it all; when it fires, the attempts still running count as timed out.
        async with trio.open_nursery() as nursery:
            as_hedge = False
            while pending:
                replica = pending.popleft()
                permit = replica.breaker.acquire() if self.judged else Permit()
                if permit is None:
                    continue  # its breaker opened since the ranking
                asked += 1
                self.wake = trio.Event()
                # In flight from now, not from when the child first runs: fetches
                # choosing in this same scheduler pass must see it.
                start = trio.current_time()
                replica.started.append(start)
                attempt = partial(self.attempt, replica, permit, as_hedge, start)
                nursery.start_soon(attempt, nursery.cancel_scope)
                as_hedge = False
                if not pending:
                    break
                delay = self.owner.hedge_delay() if hedging and not hedged else math.inf
                with trio.move_on_after(delay):
                    await self.wake.wait()
                if self.wake.is_set():
                    continue  # it failed: the next replica at once, not as a hedge
                # No budget yet: the next replica if this one fails, or as a hedge
                # as soon as other fetches have earned one.
                while not self.wake.is_set() and not self.owner.budget.spend():
                    with trio.move_on_after(delay):
                        await self.wake.wait()
                if not self.wake.is_set():
                    hedged = as_hedge = True
                    self.owner.hedges += 1
        if self.winner is not None:
            return self.answer  # type: ignore[return-value]
        if not asked:
            count = len(self.owner.replicas)
            raise SourceSkipped(f"circuit open on all {count} replicas")
        raise SourceError("; ".join(self.errors))

    async def attempt(
        self,
        replica: Replica,
        permit: Permit,
        hedge: bool,
        start: float,
        race: trio.CancelScope,
    ) -> None:
        """One replica's try; records its outcome, and cancels the race if it won."""
        owner = self.owner
        try:
            if self.judged:
                owner.notify(replica, "fetch")
                if hedge:
                    owner.notify(replica, "hedge")
            try:
                answer = await self.call(replica.source)
            except Exception as exc:
                # Raised while being cancelled (a torn-down connection): a cancellation.
                await trio.lowlevel.checkpoint_if_cancelled()
                if self.judged:
                    owner.failed(replica, permit, trio.current_time() - start)
                self.errors.append(f"replica {replica.label}: {describe_error(exc)}")
                self.wake.set()
                return
        except trio.Cancelled:
            if self.judged:
                elapsed = trio.current_time() - start
                if trio.current_time() >= self.deadline:
                    owner.failed(replica, permit, elapsed)  # the caller's deadline passed
                else:
                    owner.abandoned(replica, permit, elapsed)
            raise
        finally:
            replica.started.remove(start)
        if self.judged:
            owner.answered(replica, permit, trio.current_time() - start)
        if self.winner is None:
            self.answer, self.winner = answer, replica.label
            if hedge:
                owner.notify(replica, "hedge_win")
            race.cancel()


class ReplicaStream:
    """A server-side cursor on the first replica that opens it."""

    def __init__(self, owner: ReplicaSet, window: Window, batch_size: int) -> None:
        self._owner = owner
        self._window = window
        self._batch_size = batch_size
        self._stream: RowStream | None = None
        self._replica: Replica | None = None
        self.replica: str | None = None
        """The replica reading the rows, once one opened the cursor."""

    async def next_batch(self) -> Sequence[Row]:
        """The next rows; the first call picks the replica, failing over on errors."""
        if self._replica is not None:
            return await self._read(self._replica)
        errors: list[str] = []
        asked = 0
        deadline = trio.current_effective_deadline()
        for replica in self._owner.ranked():
            permit = replica.breaker.acquire()
            if permit is None:
                continue
            asked += 1
            self._owner.notify(replica, "fetch")
            self._replica, self._stream = replica, None
            start = trio.current_time()
            try:
                try:
                    batch = await self._read(replica, opening=True)
                except Exception as exc:
                    await trio.lowlevel.checkpoint_if_cancelled()
                    self._owner.failed(replica, permit, trio.current_time() - start)
                    errors.append(f"replica {replica.label}: {describe_error(exc)}")
                    self.close()
                    continue
            except trio.Cancelled:
                elapsed = trio.current_time() - start
                if trio.current_time() >= deadline:
                    self._owner.failed(replica, permit, elapsed)
                else:
                    self._owner.abandoned(replica, permit, elapsed)
                raise
            self._owner.answered(replica, permit, trio.current_time() - start)
            self.replica = replica.label
            return batch
        self._replica = None
        if not asked:
            raise SourceSkipped(f"circuit open on all {len(self._owner.replicas)} replicas")
        raise SourceError("; ".join(errors))

    async def _read(self, replica: Replica, *, opening: bool = False) -> Sequence[Row]:
        if self._stream is None:
            self._stream = replica.source.open_stream(self._window, self._batch_size)
        stream = self._stream
        if opening:
            return await stream.next_batch()
        try:
            return await stream.next_batch()
        except Exception:
            replica.breaker.record(Permit(), success=False)  # mid-stream: counts for it
            raise

    def close(self) -> None:
        """Release the cursor without waiting."""
        stream, self._stream, self._replica = self._stream, None, None
        if stream is not None:
            stream.close()
