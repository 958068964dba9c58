"""Per-source circuit breaker: stop paying the full deadline for a source that is down.

    closed ──(failures in a row reach the threshold)──▶ open
    open ──(cool-down elapsed; the next request becomes the one trial)──▶ half-open
    half-open ──(trial succeeds)──▶ closed
    half-open ──(trial fails)──▶ open, with a fresh cool-down

While open, and while a half-open trial is in flight, requests skip the source at
once (outcome ``skipped``). Only one trial runs at a time, so a recovering source is
probed by a single query rather than by every request that arrives at once.

A breaker watched by an active health check (``probed``, see probing.py) never lets a
request through as the trial: it stays open until a background probe succeeds and
calls :meth:`CircuitBreaker.close`, so no client pays a deadline to test a server.

Time comes from Trio's clock, so tests drive it with ``autojump_clock``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import trio

#: Failures in a row that open the breaker. Five at the default 2 s deadline means
#: a dead source costs at most a few seconds of slow answers before it is skipped,
#: while one or two transient errors (a restart, a dropped connection) never trip it.
DEFAULT_FAILURE_THRESHOLD = 5
#: Seconds an open breaker waits before letting one trial request through. Ten
#: seconds bounds the cost of a dead source to one deadline per ten seconds, and
#: brings a recovered source back within ten seconds.
DEFAULT_COOLDOWN = 10.0


class BreakerState(StrEnum):
    """Where a breaker is; the metric encodes these as 0, 1 and 2."""

    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """When a breaker opens and how long it stays open; ``failures=0`` disables it."""

    failures: int = DEFAULT_FAILURE_THRESHOLD
    cooldown: float = DEFAULT_COOLDOWN


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to query a source once; ``trial`` marks the one half-open probe."""

    trial: bool = False


class CircuitBreaker:
    """The breaker of one source; callers ask before a fetch and report after it."""

    def __init__(self, settings: BreakerSettings | None = None) -> None:
        self.settings = settings or BreakerSettings()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False
        self._opened = trio.Event()
        self.probed = False
        """Whether a background probe closes this breaker (then no request is a trial)."""

    @property
    def state(self) -> BreakerState:
        """The state as a request arriving now would see it."""
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self.probed:
            return BreakerState.OPEN
        if self._trial_in_flight or self._cooled_down():
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    @property
    def consecutive_failures(self) -> int:
        """Failures since the last success."""
        return self._failures

    def acquire(self) -> Permit | None:
        """A permit to query the source now, or None to skip it."""
        if self._opened_at is None:
            return Permit()
        if self.probed or self._trial_in_flight or not self._cooled_down():
            return None
        self._trial_in_flight = True
        return Permit(trial=True)

    def record(self, permit: Permit, *, success: bool) -> None:
        """Report how a permitted fetch ended."""
        if permit.trial:
            self._trial_in_flight = False
        if success:
            # Any answer proves the source is back, a late one from before the
            # breaker opened included.
            self.close()
            return
        self._failures += 1
        if self.settings.failures <= 0:
            return
        if permit.trial or (self._opened_at is None and self._failures >= self.settings.failures):
            self._opened_at = trio.current_time()
            self._opened.set()
        # A late failure of a fetch begun before the breaker opened changes nothing:
        # the cool-down runs from the moment it opened.

    def release(self, permit: Permit) -> None:
        """A permitted fetch was abandoned without a verdict (the client went away)."""
        if permit.trial:
            self._trial_in_flight = False

    def close(self) -> None:
        """The source answered (a fetch or a probe): forget its failures, close."""
        self._failures = 0
        if self._opened_at is not None:
            self._opened_at = None
            self._opened = trio.Event()  # the next opening wakes the prober again

    async def wait_open(self) -> None:
        """Return once the breaker is open (at once if it already is)."""
        while self._opened_at is None:
            await self._opened.wait()

    def _cooled_down(self) -> bool:
        assert self._opened_at is not None
        return trio.current_time() - self._opened_at >= self.settings.cooldown
