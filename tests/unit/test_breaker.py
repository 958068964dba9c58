from __future__ import annotations

import logging

import pytest
import trio

from service.core import Collector, Member, Status
from service.core.breaker import BreakerSettings, BreakerState, CircuitBreaker
from tests.unit.fakes import FakeSource, rows

SETTINGS = BreakerSettings(failures=3, cooldown=10.0)


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        permit = breaker.acquire()
        assert permit is not None
        breaker.record(permit, success=False)


async def test_breaker_opens_after_the_configured_failures_in_a_row(
    autojump_clock: trio.abc.Clock,
) -> None:
    breaker = CircuitBreaker(SETTINGS)
    fail(breaker, 2)
    assert breaker.state is BreakerState.CLOSED
    fail(breaker, 1)
    assert breaker.state is BreakerState.OPEN
    assert breaker.acquire() is None


async def test_a_success_resets_the_failure_count(autojump_clock: trio.abc.Clock) -> None:
    breaker = CircuitBreaker(SETTINGS)
    fail(breaker, 2)
    permit = breaker.acquire()
    assert permit is not None
    breaker.record(permit, success=True)
    fail(breaker, 2)
    assert breaker.state is BreakerState.CLOSED


async def test_after_cooldown_exactly_one_trial_is_let_through(
    autojump_clock: trio.abc.Clock,
) -> None:
    breaker = CircuitBreaker(SETTINGS)
    fail(breaker, 3)
    await trio.sleep(9.9)
    assert breaker.acquire() is None
    await trio.sleep(0.1)
    assert breaker.state is BreakerState.HALF_OPEN
    trial = breaker.acquire()
    assert trial is not None
    assert trial.trial
    assert breaker.acquire() is None  # a second request while the trial is in flight
    breaker.record(trial, success=True)
    assert breaker.state is BreakerState.CLOSED


async def test_failed_trial_opens_the_breaker_for_a_fresh_cooldown(
    autojump_clock: trio.abc.Clock,
) -> None:
    breaker = CircuitBreaker(SETTINGS)
    fail(breaker, 3)
    await trio.sleep(10)
    trial = breaker.acquire()
    assert trial is not None
    breaker.record(trial, success=False)
    assert breaker.state is BreakerState.OPEN
    await trio.sleep(9)
    assert breaker.acquire() is None
    await trio.sleep(1)
    assert breaker.acquire() is not None


async def test_abandoned_trial_lets_the_next_request_try(autojump_clock: trio.abc.Clock) -> None:
    breaker = CircuitBreaker(SETTINGS)
    fail(breaker, 3)
    await trio.sleep(10)
    trial = breaker.acquire()
    assert trial is not None
    breaker.release(trial)
    assert breaker.acquire() is not None


async def test_late_failure_does_not_extend_the_cooldown(autojump_clock: trio.abc.Clock) -> None:
    breaker = CircuitBreaker(SETTINGS)
    early = [breaker.acquire() for _ in range(4)]
    for permit in early[:3]:
        assert permit is not None
        breaker.record(permit, success=False)
    await trio.sleep(5)
    assert early[3] is not None
    breaker.record(early[3], success=False)  # began before the breaker opened
    await trio.sleep(5)
    assert breaker.state is BreakerState.HALF_OPEN


async def test_zero_failures_disables_the_breaker(autojump_clock: trio.abc.Clock) -> None:
    breaker = CircuitBreaker(BreakerSettings(failures=0))
    fail(breaker, 100)
    assert breaker.state is BreakerState.CLOSED


async def test_collector_skips_an_open_source_at_once(autojump_clock: trio.abc.Clock) -> None:
    dead = FakeSource("dead", delay=60.0)
    healthy = FakeSource("healthy", rows(1))
    collector = Collector([Member(dead, breaker=SETTINGS), healthy], timeout=2.0)
    for _ in range(3):
        collection = await collector.collect()
        assert collection.outcomes[0].status is Status.TIMEOUT
    assert collection.outcomes[0].breaker is BreakerState.OPEN

    start = trio.current_time()
    collection = await collector.collect()
    assert trio.current_time() - start == 0
    skipped = collection.outcomes[0]
    assert (skipped.status, skipped.duration) == (Status.SKIPPED, 0)
    assert skipped.error == "circuit open after 3 failures in a row"
    assert dead.calls == 3
    assert [row.id for row in collection.rows] == [1]


async def test_collector_closes_the_breaker_when_the_source_recovers(
    autojump_clock: trio.abc.Clock,
) -> None:
    flaky = FakeSource("flaky", rows(5), error=OSError("down"))
    collector = Collector([Member(flaky, breaker=SETTINGS)], timeout=2.0)
    for _ in range(3):
        await collector.collect()
    assert collector.breaker_states() == {"flaky": BreakerState.OPEN}
    flaky.error = None
    await trio.sleep(SETTINGS.cooldown)
    collection = await collector.collect()
    assert collection.outcomes[0].status is Status.OK
    assert collector.breaker_states() == {"flaky": BreakerState.CLOSED}


async def test_concurrent_requests_share_one_trial(autojump_clock: trio.abc.Clock) -> None:
    slow = FakeSource("slow", rows(1), error=OSError("down"))
    collector = Collector([Member(slow, breaker=SETTINGS)], timeout=2.0)
    for _ in range(3):
        await collector.collect()
    slow.error, slow.delay = None, 1.0
    await trio.sleep(SETTINGS.cooldown)
    statuses: list[Status] = []

    async def one() -> None:
        statuses.append((await collector.collect()).outcomes[0].status)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one)
    assert sorted(statuses) == sorted([Status.OK] + [Status.SKIPPED] * 4)
    assert slow.calls == 4


async def test_breaker_changes_are_logged_once_and_skips_not_at_all(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = FakeSource("flaky", rows(5), error=OSError("down"))
    collector = Collector([Member(flaky, breaker=SETTINGS)], timeout=2.0)
    caplog.set_level(logging.INFO, logger="collector.core")
    for _ in range(3):
        await collector.collect()
    for _ in range(50):  # skipped while open
        await collector.collect()
    await trio.sleep(SETTINGS.cooldown)
    await collector.collect()  # the trial fails
    await trio.sleep(SETTINGS.cooldown)
    flaky.error = None
    await collector.collect()  # the trial succeeds
    messages = [r.getMessage() for r in caplog.records if r.name == "collector.core"]
    assert messages == [
        "source flaky error after 0.0 ms: OSError: down",
        "source flaky error after 0.0 ms: OSError: down",
        "source flaky error after 0.0 ms: OSError: down",
        "source flaky failed 3 times in a row: circuit open, skipped for 10 s",
        "source flaky error after 0.0 ms: OSError: down",
        "source flaky failed its trial: circuit open for another 10 s",
        "source flaky answers again: circuit closed",
    ]
