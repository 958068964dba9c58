"""Pruning trusts a source's declared ids only once its rows were checked against them."""

from __future__ import annotations

import logging

import pytest
import trio

from service.core import Collector, Member, Query, Status
from service.core.declared import HIGHEST_ID, LOWEST_ID, IdsState, gaps
from tests.unit.fakes import FakeSource, rows

TIMEOUT = 2.0
DECLARED = ((1, 10), (31, 40))


def declared_source(*extra: int) -> tuple[FakeSource, Collector]:
    """One source declaring 1-10 and 31-40, holding those ids and ``extra`` ones."""
    ids = [i for first, last in DECLARED for i in range(first, last + 1)]
    source = FakeSource("s", rows(*sorted([*ids, *extra])))
    return source, Collector([Member(source, ids=DECLARED)], TIMEOUT)


def test_gaps_are_the_ids_around_and_between_the_ranges() -> None:
    assert gaps(DECLARED) == ((LOWEST_ID, 0), (11, 30), (41, HIGHEST_ID))
    assert gaps(((LOWEST_ID, 5), (6, HIGHEST_ID))) == ()
    assert gaps(((LOWEST_ID, HIGHEST_ID),)) == ()
    assert gaps(()) == ((LOWEST_ID, HIGHEST_ID),)


async def test_an_unchecked_declaration_prunes_nothing() -> None:
    _, collector = declared_source(1000)
    assert collector.declared.state("s") is IdsState.UNKNOWN
    page = await collector.collect(Query(after=60))
    assert page.outcomes[0].status is Status.OK
    assert [row.id for row in page.rows] == [1000]


async def test_a_verified_declaration_prunes() -> None:
    source, collector = declared_source()
    await collector.declared.check()
    assert collector.declared.state("s") is IdsState.VERIFIED
    page = await collector.collect(Query(after=60))
    assert page.outcomes[0].status is Status.PRUNED
    assert source.calls == 0


async def test_a_violated_declaration_is_not_pruned_and_its_rows_are_served() -> None:
    _, collector = declared_source(1000, 2147483647)
    await collector.declared.check()
    assert collector.declared.state("s") is IdsState.VIOLATED
    page = await collector.collect(Query(after=60))
    assert [row.id for row in page.rows] == [1000, 2147483647]
    one = await collector.collect(Query(after=999, until=1000))
    assert [row.id for row in one.rows] == [1000]
    stream = [item async for item in collector.stream(Query(after=60), 10)]
    assert [row.id for row in stream[0]] == [1000, 2147483647]  # type: ignore[union-attr]


async def test_a_failed_check_leaves_the_source_unpruned() -> None:
    source, collector = declared_source()
    await collector.declared.check()
    source.check_error = OSError("connection refused")
    await collector.declared.check()
    assert collector.declared.state("s") is IdsState.UNKNOWN
    assert (await collector.collect(Query(after=60))).outcomes[0].status is Status.OK


async def test_a_check_gives_up_at_the_deadline(autojump_clock: trio.abc.Clock) -> None:
    source, collector = declared_source()
    source.check_delay = 60.0
    start = trio.current_time()
    await collector.declared.check()
    assert trio.current_time() - start == pytest.approx(TIMEOUT)
    assert collector.declared.state("s") is IdsState.UNKNOWN


async def test_rows_appearing_later_are_found_by_the_periodic_check(
    autojump_clock: trio.abc.Clock,
) -> None:
    source, collector = declared_source()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collector.declared.watch, 60.0)
        await trio.sleep(1)
        assert collector.declared.state("s") is IdsState.VERIFIED  # checked at start-up
        source.result.extend(rows(1000))
        await trio.sleep(30)
        assert collector.declared.state("s") is IdsState.VERIFIED
        await trio.sleep(30)
        assert collector.declared.state("s") is IdsState.VIOLATED
        assert source.checks == 2
        nursery.cancel_scope.cancel()


async def test_each_transition_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    source, collector = declared_source(1000)
    with caplog.at_level(logging.INFO, logger="collector.declared"):
        for _ in range(3):
            await collector.declared.check()
        source.result = [row for row in source.result if row.id != 1000]
        for _ in range(3):
            await collector.declared.check()
    states = [record.ids_state for record in caplog.records]  # type: ignore[attr-defined]
    assert states == ["violated", "verified"]
    assert "id 1000 outside" in caplog.records[0].getMessage()


async def test_undeclared_sources_have_no_state_and_are_never_checked() -> None:
    source = FakeSource("free", rows(1, 1000))
    collector = Collector([source], TIMEOUT)
    await collector.declared.check()
    assert collector.declared.state("free") is None
    assert collector.declared.states() == {}
    assert source.checks == 0


async def test_a_violated_source_that_fails_may_be_missing_any_id() -> None:
    source, collector = declared_source(1000)
    await collector.declared.check()
    source.error = OSError("down")
    collection = await collector.collect()
    assert collection.outcomes[0].missing_ids is None
    assert collection.missing_ids is None  # nobody can say which ids are absent
