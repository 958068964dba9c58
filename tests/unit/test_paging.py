from __future__ import annotations

import random

import pytest
import trio

from service.core import Collector, Cursor, Member, Query, Row, Status, Window
from tests.unit.fakes import FakeSource, rows

TIMEOUT = 2.0
DECLARED = {
    "source_1": ((1, 10), (31, 40)),
    "source_2": ((11, 20), (41, 50)),
    "source_3": ((21, 30), (51, 60)),
}


def reference(declare: bool = True) -> list[Member]:
    return [
        Member(
            FakeSource(name, rows(*(i for first, last in ranges for i in range(first, last + 1)))),
            ids=ranges if declare else None,
        )
        for name, ranges in DECLARED.items()
    ]


def fake(member: Member) -> FakeSource:
    assert isinstance(member.source, FakeSource)
    return member.source


def next_query(limit: int, cursor: Cursor) -> Query:
    return Query(after=cursor.after, limit=limit, behind=cursor.behind)


async def test_page_pushes_the_limit_down_and_stops_after_it() -> None:
    members = reference()
    collection = await Collector(members, TIMEOUT).collect(Query(limit=15))
    assert [row.id for row in collection.rows] == list(range(1, 16))
    assert all(fake(m).windows == [Window(limit=15)] for m in members)
    assert collection.next == Cursor(after=15)


async def test_next_page_starts_after_the_last_id() -> None:
    collection = await Collector(reference(), TIMEOUT).collect(Query(after=15, limit=10))
    assert [row.id for row in collection.rows] == list(range(16, 26))
    assert collection.next == Cursor(after=25)


async def test_last_page_has_no_next_cursor() -> None:
    collection = await Collector(reference(), TIMEOUT).collect(Query(after=55, limit=10))
    assert [row.id for row in collection.rows] == list(range(56, 61))
    assert collection.next is None


async def test_exactly_full_last_page_still_offers_a_next_page_that_is_empty() -> None:
    collector = Collector(reference(), TIMEOUT)
    page = await collector.collect(Query(after=50, limit=10))
    assert [row.id for row in page.rows] == list(range(51, 61))
    assert page.next == Cursor(after=60)
    empty = await collector.collect(next_query(10, page.next))
    assert empty.rows == []
    assert empty.next is None


async def checked(members: list[Member]) -> Collector:
    """A collector whose declared ids were checked (and hold), so it may prune."""
    collector = Collector(members, TIMEOUT)
    await collector.declared.check()
    return collector


async def test_sources_whose_ranges_cannot_hold_the_page_are_pruned() -> None:
    members = reference()
    collection = await (await checked(members)).collect(Query(after=50, limit=5))
    statuses = [o.status for o in collection.outcomes]
    assert statuses == [Status.PRUNED, Status.PRUNED, Status.OK]
    assert [fake(m).calls for m in members] == [0, 0, 1]
    assert collection.complete
    assert [o.duration for o in collection.outcomes[:2]] == [0.0, 0.0]


async def test_single_id_asks_only_the_source_that_can_hold_it() -> None:
    members = reference()
    collection = await (await checked(members)).collect(Query(after=41, until=42))
    assert collection.rows == [Row(42, "Test 42")]
    assert [fake(m).calls for m in members] == [0, 1, 0]
    assert collection.next is None


async def test_without_declared_ranges_every_source_is_asked() -> None:
    members = reference(declare=False)
    await Collector(members, TIMEOUT).collect(Query(after=41, until=42))
    assert [fake(m).calls for m in members] == [1, 1, 1]


async def test_partial_page_keeps_the_missing_source_behind() -> None:
    members = reference()
    fake(members[1]).error = OSError("down")
    collection = await Collector(members, TIMEOUT).collect(Query(after=5, limit=10))
    assert [row.id for row in collection.rows] == [6, 7, 8, 9, 10, *range(21, 26)]
    assert collection.next == Cursor(after=25, behind=(("source_2", 5),))


async def test_lagging_source_delivers_its_rows_on_the_next_page() -> None:
    members = reference()
    query = Query(after=25, limit=10, behind=(("source_2", 5),))
    collection = await Collector(members, TIMEOUT).collect(query)
    assert fake(members[1]).windows == [Window(after=5, limit=10)]
    assert [row.id for row in collection.rows] == list(range(11, 21))
    # The others stay at 25, where they were; source_2 is now at 20.
    assert collection.next == Cursor(after=25, behind=(("source_2", 20),))
    follow = await Collector(members, TIMEOUT).collect(next_query(10, collection.next))
    assert [row.id for row in follow.rows] == [26, 27, 28, 29, 30, 31, 32, 33, 34, 35]


async def test_first_page_missing_a_source_resumes_it_from_the_start() -> None:
    members = reference()
    fake(members[0]).error = OSError("down")
    collection = await Collector(members, TIMEOUT).collect(Query(limit=5))
    assert collection.next == Cursor(after=15, behind=(("source_1", None),))


async def test_equal_ids_cut_by_the_limit_are_not_skipped() -> None:
    a, b = FakeSource("a", [Row(1, "a1"), Row(2, "a2")]), FakeSource("b", [Row(2, "b2")])
    collector = Collector([a, b], TIMEOUT)
    page = await collector.collect(Query(limit=2))
    assert page.rows == [Row(1, "a1"), Row(2, "a2")]
    assert page.next == Cursor(after=2, behind=(("b", None),))
    rest = await collector.collect(next_query(2, page.next))
    assert rest.rows == [Row(2, "b2")]


@pytest.mark.parametrize("seed", range(12))
async def test_following_cursors_yields_every_row_exactly_once_despite_failures(
    seed: int, autojump_clock: trio.abc.Clock
) -> None:
    rng = random.Random(seed)
    members = reference(declare=rng.random() < 0.5)
    collector = Collector(
        [Member(m.source, ids=m.ids, breaker=m.breaker) for m in members], TIMEOUT
    )
    limit = rng.randint(1, 25)
    seen: list[int] = []
    query = Query(limit=limit)
    for _ in range(500):
        for member in members:  # each page, each source fails with some probability
            source = fake(member)
            source.error = OSError("flaky") if rng.random() < 0.3 else None
            source.delay = 5.0 if rng.random() < 0.1 else 0.0
        page = await collector.collect(query)
        assert [r.id for r in page.rows] == sorted(r.id for r in page.rows)
        seen.extend(row.id for row in page.rows)
        if page.next is None:
            break
        query = next_query(limit, page.next)
        await trio.sleep(1)  # a client pacing its pages; lets open breakers cool down
    assert page.next is None
    assert sorted(seen) == list(range(1, 61))
