from __future__ import annotations

import pytest
import trio

from service.core import (
    Collector,
    Member,
    Row,
    Status,
    count_outside,
    describe_error,
    merge_by_id,
    merge_ranges,
)
from tests.unit.fakes import FakeSource, rows

TIMEOUT = 2.0


def reference_sources(**overrides: FakeSource) -> list[FakeSource]:
    sources = {
        "source_1": FakeSource("source_1", rows(*range(1, 11), *range(31, 41))),
        "source_2": FakeSource("source_2", rows(*range(11, 21), *range(41, 51))),
        "source_3": FakeSource("source_3", rows(*range(21, 31), *range(51, 61))),
    }
    sources.update(overrides)
    return list(sources.values())


async def test_rows_from_all_sources_are_merged_sorted_by_id() -> None:
    collection = await Collector(reference_sources(), TIMEOUT).collect()
    assert [row.id for row in collection.rows] == list(range(1, 61))
    assert collection.rows[0] == Row(1, "Test 1")
    assert collection.complete
    assert [o.status for o in collection.outcomes] == [Status.OK] * 3
    assert [o.rows for o in collection.outcomes] == [20, 20, 20]


async def test_slow_source_is_dropped_at_deadline(autojump_clock: trio.abc.Clock) -> None:
    slow = FakeSource("source_2", rows(11, 12), delay=60.0)
    start = trio.current_time()
    collection = await Collector(reference_sources(source_2=slow), TIMEOUT).collect()
    assert trio.current_time() - start == pytest.approx(TIMEOUT)
    assert slow.cancelled == 1
    assert [row.id for row in collection.rows] == [*range(1, 11), *range(21, 41), *range(51, 61)]
    timeout = collection.outcomes[1]
    assert (timeout.source, timeout.status, timeout.rows) == ("source_2", Status.TIMEOUT, 0)
    assert timeout.duration == pytest.approx(TIMEOUT)
    assert not collection.complete
    assert collection.missing == ("source_2",)


async def test_source_answering_just_before_deadline_is_kept(
    autojump_clock: trio.abc.Clock,
) -> None:
    late = FakeSource("source_3", rows(21), delay=TIMEOUT - 0.001)
    collection = await Collector(reference_sources(source_3=late), TIMEOUT).collect()
    assert collection.outcomes[2].status is Status.OK
    assert Row(21, "Test 21") in collection.rows


async def test_sources_are_queried_concurrently(autojump_clock: trio.abc.Clock) -> None:
    sources = [FakeSource(f"s{i}", rows(i), delay=1.5) for i in range(5)]
    start = trio.current_time()
    collection = await Collector(sources, TIMEOUT).collect()
    assert trio.current_time() - start == pytest.approx(1.5)
    assert collection.complete


async def test_response_waits_for_slowest_source_within_deadline(
    autojump_clock: trio.abc.Clock,
) -> None:
    sources = [FakeSource("fast", rows(2), delay=0.1), FakeSource("slow", rows(1), delay=1.9)]
    collection = await Collector(sources, TIMEOUT).collect()
    assert [row.id for row in collection.rows] == [1, 2]
    assert collection.outcomes[1].duration == pytest.approx(1.9)


async def test_failing_source_does_not_fail_its_siblings() -> None:
    broken = FakeSource("source_1", error=ConnectionRefusedError(111, "Connection refused"))
    collection = await Collector(reference_sources(source_1=broken), TIMEOUT).collect()
    assert len(collection.rows) == 40
    outcome = collection.outcomes[0]
    assert outcome.status is Status.ERROR
    assert outcome.error == "ConnectionRefusedError: [Errno 111] Connection refused"


async def test_driver_timeout_counts_as_timeout() -> None:
    source = FakeSource("source_1", error=TimeoutError())
    collection = await Collector(reference_sources(source_1=source), TIMEOUT).collect()
    assert collection.outcomes[0].status is Status.TIMEOUT
    assert collection.outcomes[0].error == "TimeoutError"


async def test_every_source_failing_gives_an_empty_result(autojump_clock: trio.abc.Clock) -> None:
    sources = [
        FakeSource("a", error=RuntimeError("boom")),
        FakeSource("b", delay=30.0),
        FakeSource("c", error=OSError("unreachable")),
    ]
    collection = await Collector(sources, TIMEOUT).collect()
    assert collection.rows == []
    assert [o.status for o in collection.outcomes] == [Status.ERROR, Status.TIMEOUT, Status.ERROR]
    assert collection.missing == ("a", "b", "c")


async def test_cancellation_from_outside_abandons_every_source(
    autojump_clock: trio.abc.Clock,
) -> None:
    sources = [FakeSource("a", delay=1.0), FakeSource("b", delay=1.0)]
    with trio.move_on_after(0.5) as scope:
        await Collector(sources, TIMEOUT).collect()
    assert scope.cancelled_caught
    assert [s.cancelled for s in sources] == [1, 1]


async def test_each_collection_asks_every_source_again() -> None:
    sources = reference_sources()
    collector = Collector(sources, TIMEOUT)
    await collector.collect()
    await collector.collect()
    assert [s.calls for s in sources] == [2, 2, 2]


def test_merge_interleaves_sorted_batches() -> None:
    merged = merge_by_id([rows(1, 4, 9), rows(2, 3, 10), rows(5)])
    assert [row.id for row in merged] == [1, 2, 3, 4, 5, 9, 10]


def test_merge_keeps_duplicate_ids_in_source_order() -> None:
    merged = merge_by_id([[Row(7, "first")], [Row(7, "second")], [Row(6, "x")]])
    assert list(merged) == [Row(6, "x"), Row(7, "first"), Row(7, "second")]


async def test_source_answering_out_of_id_order_is_an_error() -> None:
    unordered = FakeSource("source_1")
    unordered.result = rows(3, 1, 2)
    unordered.fetch = unordered_fetch(unordered.result)  # type: ignore[method-assign]
    collection = await Collector(reference_sources(source_1=unordered), TIMEOUT).collect()
    assert collection.outcomes[0].status is Status.ERROR
    assert collection.outcomes[0].error == "rows out of id order: 1 after 3"


def test_error_description_is_one_short_line() -> None:
    text = describe_error(ValueError("line one\nline two" + "x" * 500))
    assert text == "ValueError: line one"
    assert len(describe_error(ValueError("y" * 1000))) == 200


def test_collector_rejects_non_positive_timeout() -> None:
    with pytest.raises(ValueError, match="positive"):
        Collector([], 0)


async def test_absent_sources_report_their_declared_id_ranges() -> None:
    collector = Collector(
        [
            Member(FakeSource("a", rows(1)), ids=((1, 10), (31, 40))),
            Member(FakeSource("b", error=OSError("down")), ids=((11, 20), (41, 50))),
            Member(FakeSource("c", error=OSError("down")), ids=((21, 30),)),
        ],
        TIMEOUT,
    )
    collection = await collector.collect()
    assert collection.outcomes[0].missing_ids is None
    assert collection.outcomes[1].missing_ids == ((11, 20), (41, 50))
    assert collection.missing_ids == ((11, 30), (41, 50))


async def test_missing_ids_are_unknown_when_an_absent_source_declares_none() -> None:
    collector = Collector(
        [Member(FakeSource("a", error=OSError()), ids=((1, 5),)), FakeSource("b", error=OSError())],
        TIMEOUT,
    )
    assert (await collector.collect()).missing_ids is None


async def test_complete_collection_misses_no_ids() -> None:
    collection = await Collector(reference_sources(), TIMEOUT).collect()
    assert collection.missing_ids == ()


async def test_rows_outside_declared_ranges_are_served_and_counted() -> None:
    member = Member(FakeSource("a", rows(1, 2, 99)), ids=((1, 10),))
    collection = await Collector([member], TIMEOUT).collect()
    assert [row.id for row in collection.rows] == [1, 2, 99]
    assert collection.outcomes[0].out_of_range == 1


async def test_observers_see_every_outcome() -> None:
    seen: list[tuple[str, Status]] = []
    collector = Collector(reference_sources(source_2=FakeSource("source_2", error=OSError())), 2)
    collector.add_observer(lambda outcome: seen.append((outcome.source, outcome.status)))
    await collector.collect()
    assert sorted(seen) == [
        ("source_1", Status.OK),
        ("source_2", Status.ERROR),
        ("source_3", Status.OK),
    ]


async def test_probe_reports_each_source_reachability(autojump_clock: trio.abc.Clock) -> None:
    down = FakeSource("down", error=OSError())
    probes = await Collector([FakeSource("up"), down], TIMEOUT).probe()
    assert [(p.source, p.reachable) for p in probes] == [("up", True), ("down", False)]
    assert probes[1].error == "ConnectionRefusedError: [Errno 111] Connection refused"


def test_ranges_are_merged_when_they_touch_or_overlap() -> None:
    assert merge_ranges([(11, 20), (1, 10), (30, 40), (35, 50)]) == ((1, 20), (30, 50))


@pytest.mark.parametrize(
    ("value", "inside"), [(0, False), (1, True), (10, True), (11, False), (31, True), (41, False)]
)
def test_declared_ranges_are_inclusive(value: int, inside: bool) -> None:
    assert count_outside([Row(value, None)], ((1, 10), (31, 40))) == (0 if inside else 1)


def unordered_fetch(result: list[Row]):  # a source that ignores ORDER BY
    async def fetch(window: object = None) -> list[Row]:
        return result

    return fetch
