from __future__ import annotations

import pytest
import trio
import trio.testing

from service.core import Collector, Query
from service.core.coalesce import MAX_WAIT, Coalescer
from tests.unit.fakes import FakeSource, rows


async def test_identical_queries_arriving_together_share_one_fan_out(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    source = FakeSource("a", rows(1, 2), delay=0.5)
    coalescer = Coalescer(Collector([source], 2.0).collect, nursery, 2.0)
    answers = []

    async def ask() -> None:
        answers.append(await coalescer.collect(Query()))

    async with trio.open_nursery() as requests:
        for _ in range(10):
            requests.start_soon(ask)
    assert source.calls == 1
    assert coalescer.fan_outs == 1
    assert all(answer is answers[0] for answer in answers)
    assert [row.id for row in answers[0].rows] == [1, 2]


async def test_a_request_never_joins_a_fan_out_that_already_started(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    source = FakeSource("a", rows(1), delay=1.0)
    coalescer = Coalescer(Collector([source], 2.0).collect, nursery, 2.0)
    async with trio.open_nursery() as requests:
        requests.start_soon(coalescer.collect, Query())
        await trio.sleep(0.1)  # the first fan-out is reading now
        requests.start_soon(coalescer.collect, Query())
    assert source.calls == 2
    assert coalescer.fan_outs == 2


async def test_different_queries_do_not_share(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    source = FakeSource("a", rows(1, 2, 3))
    coalescer = Coalescer(Collector([source], 2.0).collect, nursery, 2.0)
    async with trio.open_nursery() as requests:
        requests.start_soon(coalescer.collect, Query(limit=1))
        requests.start_soon(coalescer.collect, Query(limit=2))
    assert source.calls == 2


async def test_one_client_leaving_does_not_cancel_the_shared_answer(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    source = FakeSource("a", rows(1), delay=1.0)
    coalescer = Coalescer(Collector([source], 2.0).collect, nursery, 2.0)
    kept = []

    async def impatient() -> None:
        with trio.move_on_after(0.5):
            await coalescer.collect(Query())

    async def patient() -> None:
        kept.append(await coalescer.collect(Query()))

    async with trio.open_nursery() as requests:
        requests.start_soon(impatient)
        requests.start_soon(patient)
    assert source.cancelled == 0
    assert [row.id for row in kept[0].rows] == [1]


async def test_fan_out_stops_when_every_client_has_gone(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    source = FakeSource("a", rows(1), delay=1.0)
    coalescer = Coalescer(Collector([source], 2.0).collect, nursery, 2.0)

    async def impatient() -> None:
        with trio.move_on_after(0.5):
            await coalescer.collect(Query())

    async with trio.open_nursery() as requests:
        requests.start_soon(impatient)
        requests.start_soon(impatient)
    await trio.testing.wait_all_tasks_blocked()
    assert source.calls == 1
    assert source.cancelled == 1  # no query left running for nobody


async def test_joined_request_is_answered_within_its_own_deadline(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    slow = FakeSource("slow", rows(1), delay=60.0)
    coalescer = Coalescer(Collector([slow], 2.0).collect, nursery, 2.0)
    finished: list[float] = []

    async def ask() -> None:
        start = trio.current_time()
        await coalescer.collect(Query())
        finished.append(trio.current_time() - start)

    async with trio.open_nursery() as requests:
        requests.start_soon(ask)  # its fan-out reads until the 2 s deadline
        await trio.sleep(0.5)
        requests.start_soon(ask)  # waits for it at most MAX_WAIT, then starts its own
    assert max(finished) <= 2.0 + 1e-9


async def test_a_group_that_waited_lingers_for_the_requests_of_the_answered_group(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    # Under load, the clients of a group just answered ask again within a few ms;
    # the next group gathers them instead of leaving them a fan-out of their own.
    source = FakeSource("a", rows(1), delay=0.010)
    coalescer = Coalescer(Collector([source], 2.0).collect, nursery, 2.0, linger=0.003)
    answers: dict[str, object] = {}

    async def ask(name: str, at: float) -> None:
        await trio.sleep(at)
        answers[name] = await coalescer.collect(Query())

    async with trio.open_nursery() as requests:
        requests.start_soon(ask, "first", 0.0)  # reads from 0 to 0.010
        requests.start_soon(ask, "waited", 0.005)  # waits for it, lingers to 0.013
        requests.start_soon(ask, "lingered", 0.012)  # joins during the linger
        requests.start_soon(ask, "late", 0.014)  # that fan-out has started: a new one
    assert source.calls == 3
    assert answers["waited"] is answers["lingered"]
    assert answers["late"] is not answers["lingered"]


async def test_a_request_with_no_fan_out_to_wait_for_never_lingers(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    source = FakeSource("a", rows(1), delay=0.010)
    coalescer = Coalescer(Collector([source], 2.0).collect, nursery, 2.0, linger=0.003)
    for _ in range(3):  # one client, one request after the other
        start = trio.current_time()
        await coalescer.collect(Query())
        assert trio.current_time() - start == pytest.approx(0.010)
    assert source.calls == 3


async def test_waiting_and_lingering_together_stay_within_max_wait(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    source = FakeSource("a", rows(1), delay=0.015)
    coalescer = Coalescer(Collector([source], 2.0).collect, nursery, 2.0, linger=MAX_WAIT)
    async with trio.open_nursery() as requests:
        requests.start_soon(coalescer.collect, Query())
        await trio.sleep(0.001)
        start = trio.current_time()
        await coalescer.collect(Query())
    # Opened at 0.001, it starts at 0.001 + MAX_WAIT, not at 0.015 + MAX_WAIT.
    assert trio.current_time() - start == pytest.approx(MAX_WAIT + 0.015)
