"""The per-source guard: clearance (pruning, breaker), deadline, verdict and outcome.

Every kind of collection (a plain request, a page, a stream) asks a source only
through its :class:`Guard`, so all of them prune, skip, time out, count stray rows,
log and trip the breaker in one way.
"""

from __future__ import annotations

import bisect
import logging
import operator
from collections.abc import Awaitable, Callable, Sequence
from itertools import pairwise

import trio

from service.core.breaker import BreakerState, CircuitBreaker, Permit
from service.core.declared import DeclaredIds, IdsState
from service.core.model import IdRanges, Outcome, Row, Status, Window, clip_ranges
from service.core.ports import Member, SourceError, SourceSkipped, describe_error
from service.core.tracing import FETCH_SPAN, Span, span

log = logging.getLogger("collector.core")

OutcomeObserver = Callable[[Outcome], None]


class Guard:
    """One source with its breaker, its declared ids and the observers of its outcomes."""

    def __init__(
        self,
        member: Member,
        declared: DeclaredIds,
        observers: Sequence[OutcomeObserver],
    ) -> None:
        self.member = member
        self.source = member.source
        self.name = member.source.name
        self.breaker = CircuitBreaker(member.breaker)
        self._declared = declared
        self._observers = observers

    def clearance(self, window: Window) -> Permit | tuple[Status, str | None]:
        """A permit to ask the source, or why not: pruned by its ranges, or breaker open.

        Ranges prune only once they are verified against the table: an unchecked or
        broken declaration would silently drop the rows outside it.
        """
        ids = self.member.ids
        if ids is not None and self._declared.prunable(self.name) and not window.intersects(ids):
            return Status.PRUNED, None
        permit = self.breaker.acquire()
        return self.skipped() if permit is None else permit

    def skipped(self) -> tuple[Status, str]:
        """The outcome of a source not asked because its breaker is open."""
        failures = self.breaker.consecutive_failures
        return Status.SKIPPED, f"circuit open after {failures} failures in a row"

    async def ask(
        self, permit: Permit, call: Callable[[], Awaitable[Sequence[Row]]], seconds: float
    ) -> tuple[Status, Sequence[Row], str | None]:
        """Run one permitted call under ``seconds``; hand the permit back if cancelled."""
        try:
            return await traced_attempt(self.name, "fetch", call, seconds)
        except BaseException:
            self.breaker.release(permit)  # cancelled from outside: no verdict on the source
            raise

    def verdict(
        self,
        permit: Permit | None,
        status: Status,
        error: str | None,
        *,
        duration: float,
        rows: int,
    ) -> None:
        """Log how a call to the source failed, then give its breaker the verdict.

        Called once per permitted fetch, and once per stream when its source stops
        giving rows, so a stream and a plain request log and trip the breaker alike.
        A skip is not logged per request: the breaker's opening was, once.
        """
        if status in (Status.TIMEOUT, Status.ERROR):
            log.warning(
                "source %s %s after %.1f ms: %s",
                self.name,
                status,
                duration * 1000,
                error,
                extra={"source": self.name, "status": str(status), "reason": error, "rows": rows},
            )
        if permit is None:
            return
        before = self.breaker.state
        self.breaker.record(permit, success=status is Status.OK)
        if self.breaker.state is not before:
            log_breaker_change(self.name, before, self.breaker)

    def count_stray(self, rows: Sequence[Row]) -> int:
        """How many of ``rows`` lie outside the ranges the source declares (0 if none)."""
        return 0 if self.member.ids is None else count_outside(rows, self.member.ids)

    def outcome(
        self,
        status: Status,
        *,
        rows: int,
        duration: float,
        error: str | None,
        out_of_range: int = 0,
        resumes_after: int | None = None,
        replica: str | None = None,
    ) -> Outcome:
        """The source's outcome, logged if it served stray rows and handed to observers.

        ``resumes_after`` is the id after which the source's rows went missing (a
        stream that failed part way): only its declared ids above it are missing.
        ``replica`` names the replica that answered, for a source with several.
        """
        if status is Status.PRUNED:
            # No id it could hold was asked for: no connection, no breaker verdict.
            outcome = Outcome(self.name, status, 0, 0.0, breaker=self.breaker.state)
        else:
            missing = None
            if status is not Status.OK:
                ranges = self.trusted_ranges()
                missing = None if ranges is None else clip_ranges(ranges, resumes_after)
            outcome = Outcome(
                self.name,
                status,
                rows,
                duration,
                error,
                self.breaker.state,
                missing,
                out_of_range,
                replica,
            )
        if out_of_range:
            log.warning(
                "source %s served %d rows outside its declared ids",
                self.name,
                out_of_range,
                extra={"source": self.name, "out_of_range": out_of_range},
            )
        self.notify(outcome)
        return outcome

    def trusted_ranges(self) -> IdRanges | None:
        """The ranges that say what a failed source's absence hides; None once violated.

        A source known to hold rows outside its declaration may be missing any id.
        """
        if self._declared.state(self.name) is IdsState.VIOLATED:
            return None
        return self.member.ids

    def notify(self, outcome: Outcome) -> None:
        """Hand ``outcome`` to every observer (metrics)."""
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
    elif before is BreakerState.CLOSED and breaker.probed:
        log.warning(
            "source %s failed %d times in a row: circuit open until a probe succeeds",
            name,
            breaker.consecutive_failures,
            extra=fields,
        )
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
    call: Callable[[], Awaitable[Sequence[Row] | None]], seconds: float
) -> tuple[Status, Sequence[Row], str | None]:
    """Run one source call under the deadline; every way it can end becomes a status.

    This is the per-source guard: it catches all that a source can raise, so the
    nursery around it never cancels a sibling. Rows must come ordered by id.
    """
    status = Status.TIMEOUT
    rows: Sequence[Row] = ()
    error: str | None = f"no answer within {seconds:g} s"
    with trio.move_on_after(seconds):
        try:
            answer = await call()
            rows = answer if answer is not None else ()
            check_order(rows)
        except Exception as exc:
            # Raised while the request around the call is being cancelled (a driver
            # whose connection is torn down), it is that cancellation: no verdict.
            await trio.lowlevel.checkpoint_if_cancelled()
            # A driver's own timeout is set just below ours, so it can fire first.
            status = Status.TIMEOUT if isinstance(exc, TimeoutError) else Status.ERROR
            if isinstance(exc, SourceSkipped):
                status = Status.SKIPPED
            rows, error = (), describe_error(exc)
        else:
            status, error = Status.OK, None
    return status, rows, error


async def traced_attempt(
    source: str,
    operation: str,
    call: Callable[[], Awaitable[Sequence[Row] | None]],
    seconds: float,
) -> tuple[Status, Sequence[Row], str | None]:
    """``attempt`` inside a ``collector.fetch`` span: one call to a source, traced.

    The span is current while the call runs, so a source made of several servers
    can open a child span per server it asks.
    """
    attributes = {"collector.source": source, "collector.operation": operation}
    with span(FETCH_SPAN, attributes) as traced:
        status, rows, error = await attempt(call, seconds)
        describe(traced, status, len(rows), error, seconds)
    return status, rows, error


def describe(
    traced: Span, status: Status, rows: int, error: str | None, seconds: float | None
) -> None:
    """The attributes every source and fetch span ends with; failed ones are marked."""
    traced.set("collector.status", status.value)
    traced.set("collector.rows", rows)
    if seconds is not None:
        traced.set("collector.deadline_s", seconds)
    if status in (Status.TIMEOUT, Status.ERROR):
        traced.fail(error or status.value)


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


def check_order(rows: Sequence[Row]) -> None:
    """Refuse a source answer that is not ordered by id (the merge relies on it)."""
    for previous, current in pairwise(rows):
        if current.id < previous.id:
            raise SourceError(f"rows out of id order: {current.id} after {previous.id}")
