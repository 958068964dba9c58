"""Replica sets: choice, fail-over, hedging within its budget, and active probes."""

from __future__ import annotations

import math
import random
from collections.abc import MutableSequence, Sequence
from typing import Any

import pytest
import trio

from service.core import (
    Collector,
    HedgeSettings,
    Member,
    Query,
    ReplicaSet,
    Status,
    keep_probing,
)
from service.core.breaker import BreakerSettings, BreakerState
from service.core.replicas import STALE_AFTER, HedgeBudget
from service.web import formats
from tests.support.collecting import read_stream
from tests.unit.fakes import FakeSource, rows

ROWS = rows(1, 2, 3)
REFUSED = ConnectionRefusedError(111, "Connection refused")


class InOrder(random.Random):
    """Draws the first replicas listed, so a test decides which is asked first."""

    def sample(self, population: Sequence[Any], k: int, **_: Any) -> list[Any]:  # type: ignore[override]
        return list(population[:k])


def replica_set(
    *sources: FakeSource,
    delay: float | None = 0.05,
    budget: float = 0.1,
    failures: int = 5,
    rng: random.Random | None = None,
) -> ReplicaSet:
    return ReplicaSet(
        "source_1",
        [(str(i), s) for i, s in enumerate(sources)],
        breaker=BreakerSettings(failures=failures, cooldown=10.0),
        hedge=HedgeSettings(delay=delay, budget=budget),
        rng=rng or InOrder(),
    )


def events(replicas: ReplicaSet) -> MutableSequence[tuple[str, str, str]]:
    seen: list[tuple[str, str, str]] = []
    replicas.add_observer(lambda *event: seen.append(event))
    return seen


async def test_fetches_go_to_the_replica_that_answers_first(
    autojump_clock: trio.abc.Clock,
) -> None:
    slow = FakeSource("a", ROWS, delay=0.02)
    fast = FakeSource("b", ROWS, delay=0.002)
    replicas = replica_set(slow, fast, delay=None, budget=0.0, rng=random.Random(7))
    for _ in range(40):
        await replicas.fetch(Query().window_for("source_1"))
    # Both are measured once (each scores zero until then), then the fast one wins
    # every comparison of the two.
    assert fast.calls >= 38
    assert slow.calls <= 2


async def test_in_flight_calls_spread_concurrent_fetches(autojump_clock: trio.abc.Clock) -> None:
    one = FakeSource("a", ROWS, delay=0.009)
    two = FakeSource("b", ROWS, delay=0.01)
    replicas = replica_set(one, two, budget=0.0, rng=random.Random(1))
    await replicas.fetch(Query().window_for("source_1"))
    await replicas.fetch(Query().window_for("source_1"))
    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(replicas.fetch, Query().window_for("source_1"))
    # Nearly equal latency: the calls in flight spread the ten, rather than all
    # going to the replica that is 1 ms faster.
    assert one.calls - 1 in range(4, 7)
    assert two.calls - 1 in range(4, 7)


async def test_an_erroring_replica_is_skipped_for_the_next_within_the_deadline(
    autojump_clock: trio.abc.Clock,
) -> None:
    broken = FakeSource("a", ROWS, error=REFUSED)
    healthy = FakeSource("b", ROWS, delay=0.01)
    collector = Collector([replica_set(broken, healthy)], timeout=2.0)
    start = trio.current_time()
    answer = await collector.collect()
    assert answer.complete
    assert [r.id for r in answer.rows] == [1, 2, 3]
    assert answer.outcomes[0].replica == "1"
    assert trio.current_time() - start == pytest.approx(0.01)
    assert broken.calls == healthy.calls == 1


async def test_a_slow_replica_is_hedged_the_first_answer_wins_and_the_loser_is_cancelled(
    autojump_clock: trio.abc.Clock,
) -> None:
    slow = FakeSource("a", ROWS, delay=10.0)
    fast = FakeSource("b", ROWS, delay=0.01)
    replicas = replica_set(slow, fast, delay=0.05)
    seen = events(replicas)
    collector = Collector([replicas], timeout=2.0)
    start = trio.current_time()
    answer = await collector.collect()
    assert trio.current_time() - start == pytest.approx(0.06)
    assert answer.complete
    assert answer.outcomes[0].replica == "1"
    assert slow.cancelled == 1  # the loser's call was cancelled, not left running
    assert replicas.hedges == 1
    assert seen == [
        ("source_1", "0", "fetch"),
        ("source_1", "1", "fetch"),
        ("source_1", "1", "hedge"),
        ("source_1", "1", "hedge_win"),
    ]
    assert slow.cancelled == 1


async def test_a_replica_that_lost_is_asked_first_again_once_its_figure_is_stale(
    autojump_clock: trio.abc.Clock,
) -> None:
    slow = FakeSource("a", ROWS, delay=10.0)
    fast = FakeSource("b", ROWS, delay=0.01)
    replicas = replica_set(slow, fast, delay=0.05, budget=1.0)
    window = Query().window_for("source_1")
    await replicas.fetch(window)
    for _ in range(5):
        await replicas.fetch(window)
    assert slow.calls == 1  # it lost: the fast one is asked first
    await trio.sleep(STALE_AFTER + 0.1)
    await replicas.fetch(window)
    await replicas.fetch(window)
    assert slow.calls == 2  # explored once, then avoided again


async def test_hedges_stay_within_the_budget(autojump_clock: trio.abc.Clock) -> None:
    one = FakeSource("a", ROWS, delay=1.0)
    two = FakeSource("b", ROWS, delay=1.0)
    replicas = replica_set(one, two, delay=0.05, budget=0.1)
    for _ in range(100):
        await replicas.fetch(Query().window_for("source_1"))
    # Every fetch wanted a hedge; the bucket paid for its burst and a tenth after.
    assert 10 <= replicas.hedges <= 0.1 * 100 + 3


async def test_without_budget_there_is_no_hedge(autojump_clock: trio.abc.Clock) -> None:
    slow = FakeSource("a", ROWS, delay=0.5)
    fast = FakeSource("b", ROWS, delay=0.01)
    replicas = replica_set(slow, fast, delay=0.05, budget=0.0)
    start = trio.current_time()
    await replicas.fetch(Query().window_for("source_1"))
    assert trio.current_time() - start == pytest.approx(0.5)
    assert fast.calls == 0
    assert replicas.hedges == 0


def test_the_budget_is_a_bounded_bucket() -> None:
    budget = HedgeBudget(0.1, burst=2)
    assert budget.spend()
    assert budget.spend()
    assert not budget.spend()
    for _ in range(9):
        budget.earn()
    assert not budget.spend()
    budget.earn()
    assert budget.spend()


async def test_a_single_server_set_never_hedges(autojump_clock: trio.abc.Clock) -> None:
    only = FakeSource("a", ROWS, delay=0.5)
    replicas = replica_set(only, delay=0.05, budget=1.0)
    start = trio.current_time()
    await replicas.fetch(Query().window_for("source_1"))
    assert trio.current_time() - start == pytest.approx(0.5)
    assert replicas.hedges == 0


async def test_the_automatic_hedge_delay_follows_the_recent_p95(
    autojump_clock: trio.abc.Clock,
) -> None:
    one = FakeSource("a", ROWS, delay=0.01)
    replicas = replica_set(one, FakeSource("b", ROWS, delay=0.01), delay=None)
    assert replicas.hedge_delay() == 0.05  # too few answers yet
    for _ in range(40):
        await replicas.fetch(Query().window_for("source_1"))
    assert replicas.hedge_delay() == pytest.approx(0.01)


async def test_a_replica_left_at_the_deadline_counts_as_failed(
    autojump_clock: trio.abc.Clock,
) -> None:
    hung = FakeSource("a", ROWS, delay=math.inf)
    replicas = replica_set(hung, failures=1)
    answer = await Collector([replicas], timeout=2.0).collect()
    assert answer.outcomes[0].status is Status.TIMEOUT
    assert replicas.replicas[0].breaker.state is BreakerState.OPEN


async def test_with_every_replica_open_the_source_is_skipped_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    a = FakeSource("a", ROWS, error=REFUSED)
    b = FakeSource("b", ROWS, error=REFUSED)
    collector = Collector([replica_set(a, b, failures=1)], timeout=2.0)
    first = await collector.collect()
    assert first.outcomes[0].status is Status.ERROR
    assert "replica 0" in (first.outcomes[0].error or "")
    second = await collector.collect()
    assert second.outcomes[0].status is Status.SKIPPED
    assert a.calls == b.calls == 1
    assert collector.breaker_states()["source_1"] is BreakerState.CLOSED  # its own never opens


async def test_a_stream_fails_over_when_opening_fails(autojump_clock: trio.abc.Clock) -> None:
    broken = FakeSource("a", ROWS, error=REFUSED)
    healthy = FakeSource("b", ROWS)
    collector = Collector([replica_set(broken, healthy)], timeout=2.0)
    merged, summary = await read_stream(collector, Query(), 2)
    assert [r.id for r in merged] == [1, 2, 3]
    assert summary.complete
    assert summary.outcomes[0].replica == "1"
    assert broken.streams[0].closed


async def test_a_probe_closes_an_open_replica_breaker_within_an_interval_of_recovery(
    autojump_clock: trio.abc.Clock,
) -> None:
    down = FakeSource("a", ROWS, error=REFUSED)
    down.reachable = False
    down.ping_delay = math.inf  # black-holed: every probe waits out its deadline
    replicas = replica_set(down, FakeSource("b", ROWS), failures=1)
    collector = Collector([replicas], timeout=2.0)
    breaker = replicas.replicas[0].breaker
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_probing, collector.probe_targets(), 1.0, 2.0)
        await trio.sleep(5)
        assert down.pings == 0  # closed: never probed
        await collector.collect()
        assert breaker.state is BreakerState.OPEN
        await trio.sleep(4.5)
        down.reachable, down.ping_delay, down.error = True, 0.0, None
        recovered = trio.current_time()
        await breaker_closed(breaker)
        assert trio.current_time() - recovered <= 1.0
        pings = down.pings
        await trio.sleep(5)
        assert down.pings == pings  # closed again: probing stopped
        nursery.cancel_scope.cancel()
    assert not breaker.probed  # stopped with the nursery


async def test_a_probed_breaker_never_lets_a_request_be_the_trial(
    autojump_clock: trio.abc.Clock,
) -> None:
    source = FakeSource("source_1", ROWS, error=REFUSED)
    source.reachable = False
    member = Member(source, breaker=BreakerSettings(failures=2, cooldown=1.0))
    collector = Collector([member], timeout=2.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_probing, collector.probe_targets(), 1.0, 2.0)
        await collector.collect()
        await collector.collect()
        assert collector.breaker_states()["source_1"] is BreakerState.OPEN
        for _ in range(10):
            await trio.sleep(0.7)  # well past the cool-down
            answer = await collector.collect()
            assert answer.outcomes[0].status is Status.SKIPPED
        assert source.calls == 2
        assert source.pings >= 5
        source.reachable, source.error = True, None
        await trio.sleep(1.1)  # the next probe, at most an interval away
        assert (await collector.collect()).complete
        nursery.cancel_scope.cancel()


async def breaker_closed(breaker: Any) -> None:
    while breaker.state is not BreakerState.CLOSED:  # noqa: ASYNC110 (no event to wait on)
        await trio.sleep(0.01)


def test_server_timing_and_envelope_name_the_replica() -> None:
    from service.core import Outcome

    outcome = Outcome("source_1", Status.OK, 3, 0.0042, replica="1")
    assert formats.server_timing([outcome]) == 'source_1;dur=4.2;desc="ok";replica=1'
    assert formats.outcome_json(outcome)["replica"] == "1"
    plain = Outcome("source_2", Status.OK, 3, 0.001)
    assert formats.server_timing([plain]) == 'source_2;dur=1.0;desc="ok"'
    assert formats.outcome_json(plain)["replica"] is None


async def test_a_replica_with_a_hung_call_is_asked_after_the_others(
    autojump_clock: trio.abc.Clock,
) -> None:
    hung = FakeSource("a", ROWS, delay=0.01)
    slower = FakeSource("b", ROWS, delay=0.25)
    replicas = replica_set(hung, slower, delay=0.05, budget=0.0)
    window = Query().window_for("source_1")
    await replicas.fetch(window)  # a: 10 ms
    replicas.replicas[1].measure(0.25, trio.current_time())
    hung.delay = math.inf
    async with trio.open_nursery() as nursery:
        nursery.start_soon(replicas.fetch, window)  # hangs on a (no budget to hedge)
        await trio.sleep(0.1)
        # a's call is 100 ms old: past the hedge delay and twice its 10 ms, so it is
        # suspect, though its score (0.1 s x 2) is below b's 0.25 s.
        start = trio.current_time()
        with trio.fail_after(1):
            await replicas.fetch(window)
        assert trio.current_time() - start == pytest.approx(0.25)
        assert slower.calls == 1
        nursery.cancel_scope.cancel()


async def test_readiness_fails_over_and_skips_a_set_whose_replicas_are_all_open(
    autojump_clock: trio.abc.Clock,
) -> None:
    down = FakeSource("a", ROWS, error=REFUSED)
    down.reachable = False
    up = FakeSource("b", ROWS)
    replicas = replica_set(down, up, failures=1)
    collector = Collector([replicas], timeout=2.0)
    (probe,) = await collector.probe()
    assert probe.status is Status.OK  # replica 0 refused the ping; replica 1 answered
    up.error, up.reachable = REFUSED, False
    await collector.collect()  # both fail: both breakers open
    (probe,) = await collector.probe()
    assert probe.status is Status.SKIPPED
    assert down.pings + up.pings == 2  # open breakers are not pinged
