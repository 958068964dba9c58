"""Active health checks: while a breaker is open, probe its server in the background.

Without them a recovered source comes back only when a client request, let through
as the breaker's trial after the cool-down, happens to succeed: that request pays
the deadline if the source is still down, and full answers wait for the cool-down.
With them, every breaker that opens is probed (a ping under the deadline) every
``interval`` seconds by a background task, and the first probe that succeeds closes
it; a probed breaker never lets a request through as a trial. A breaker that is
closed is never probed, so a healthy fleet carries no background load.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio

from service.core.breaker import BreakerState, CircuitBreaker
from service.core.guard import attempt, log_breaker_change

log = logging.getLogger("collector.core")


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """One breaker and the ping that proves its server answers again."""

    name: str
    breaker: CircuitBreaker
    ping: Callable[[], Awaitable[None]]


async def keep_probing(targets: Sequence[ProbeTarget], interval: float, seconds: float) -> None:
    """Probe each target while its breaker is open, until cancelled (shutdown)."""
    async with trio.open_nursery() as nursery:
        for target in targets:
            nursery.start_soon(_watch, target, interval, seconds)


async def _watch(target: ProbeTarget, interval: float, seconds: float) -> None:
    target.breaker.probed = True
    try:
        while True:
            await target.breaker.wait_open()
            await probe_until_closed(target, interval, seconds)
    finally:
        target.breaker.probed = False  # requests may be trials again once nobody probes


async def probe_until_closed(target: ProbeTarget, interval: float, seconds: float) -> None:
    """Start a probe every ``interval`` until one succeeds, then close the breaker.

    A new probe starts on schedule even while earlier ones still wait: against a
    black-holed server a probe lasts the whole deadline, and waiting for it would
    delay noticing the recovery by that much. So each probe is a child of this
    nursery under its own deadline, at most ``seconds / interval + 1`` are in
    flight, and the first to succeed closes the breaker and cancels the nursery
    (the other probes and the schedule). The first probe waits one interval: the
    breaker has just opened on failures, so probing at once would only fail again.
    """
    async with trio.open_nursery() as nursery:

        async def probe() -> None:
            status, _, error = await attempt(target.ping, seconds)
            if not status.answered:
                log.debug("probe of %s failed: %s", target.name, error)
                return
            before = target.breaker.state
            if before is not BreakerState.CLOSED:
                target.breaker.close()
                log_breaker_change(target.name, before, target.breaker)
            nursery.cancel_scope.cancel()

        while True:
            await trio.sleep(interval)
            if target.breaker.state is BreakerState.CLOSED:
                nursery.cancel_scope.cancel()  # a request's late answer closed it first
                return
            nursery.start_soon(probe)
