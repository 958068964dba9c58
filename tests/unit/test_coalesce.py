from __future__ import annotations

import trio
import trio.testing

from service.coalesce import Coalescer
from service.core import Collector, Query
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
