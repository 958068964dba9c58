from __future__ import annotations

from contextlib import aclosing

import trio

from service.core import Answer, Collector, Member, Query, Status
from tests.support.collecting import read_stream
from tests.unit.fakes import FakeSource, rows

TIMEOUT = 2.0


def interleaved() -> list[Member]:
    """Three sources holding runs of ten ids in turn, 300 rows in all."""
    return [
        Member(
            FakeSource(f"s{k}", rows(*(i for i in range(1, 301) if (i - 1) // 10 % 3 == k))),
            ids=None,
        )
        for k in range(3)
    ]


async def test_stream_merges_every_row_in_order_in_bounded_chunks() -> None:
    members = interleaved()
    merged, summary = await read_stream(Collector(members, TIMEOUT), Query(), batch=7)
    assert [row.id for row in merged] == list(range(1, 301))
    assert summary.complete
    assert summary.next is None
    assert [o.rows for o in summary.outcomes] == [100, 100, 100]
    for member in members:
        assert isinstance(member.source, FakeSource)
        (stream,) = member.source.streams
        assert stream.batch_size == 7
        assert stream.closed


async def test_source_failing_mid_stream_ends_only_its_contribution(
    autojump_clock: trio.abc.Clock,
) -> None:
    members = interleaved()
    broken = members[1].source
    assert isinstance(broken, FakeSource)
    broken.fail_at_batch = 2  # stalls after delivering two batches of five
    start = trio.current_time()
    merged, summary = await read_stream(Collector(members, TIMEOUT), Query(), batch=5)
    assert trio.current_time() - start == TIMEOUT
    ids = [row.id for row in merged]
    assert ids == sorted(ids)
    from_broken = [i for i in ids if (i - 1) // 10 % 3 == 1]
    assert from_broken == list(range(11, 21))
    assert len(ids) == 200 + 10
    outcome = summary.outcomes[1]
    assert (outcome.status, outcome.rows) == (Status.TIMEOUT, 10)
    assert not summary.complete
    assert summary.next is not None
    assert (summary.next.after, summary.next.behind) == (300, (("s1", 20),)), summary.next


async def test_stream_error_is_reported_with_its_reason() -> None:
    members = interleaved()
    broken = members[0].source
    assert isinstance(broken, FakeSource)
    broken.error, broken.fail_at_batch = OSError("connection reset"), 0
    merged, summary = await read_stream(Collector(members, TIMEOUT), Query(), batch=50)
    assert len(merged) == 200
    assert summary.outcomes[0].status is Status.ERROR
    assert summary.outcomes[0].error == "OSError: connection reset"


async def test_stream_respects_window_and_limit() -> None:
    members = interleaved()
    merged, summary = await read_stream(
        Collector(members, TIMEOUT), Query(after=95, limit=20), batch=8
    )
    assert [row.id for row in merged] == list(range(96, 116))
    assert summary.next is not None
    assert summary.next.after == 115


async def test_stream_prunes_sources_outside_declared_ranges() -> None:
    a = FakeSource("a", rows(1, 2, 3))
    b = FakeSource("b", rows(11, 12))
    collector = Collector([Member(a, ids=((1, 10),)), Member(b, ids=((11, 20),))], TIMEOUT)
    await collector.declared.check()
    merged, summary = await read_stream(collector, Query(after=10), batch=10)
    assert [row.id for row in merged] == [11, 12]
    assert [o.status for o in summary.outcomes] == [Status.PRUNED, Status.OK]
    assert a.calls == 0


async def test_client_stopping_early_closes_every_cursor() -> None:
    members = interleaved()
    stream = Collector(members, TIMEOUT).stream(Query(), 10)
    first = await stream.__anext__()
    assert isinstance(first, list)
    await stream.aclose()
    for member in members:
        assert isinstance(member.source, FakeSource)
        assert all(s.closed for s in member.source.streams)


async def test_stop_ends_the_stream_at_a_row_boundary_with_a_resumable_summary() -> None:
    members = interleaved()
    collector = Collector(members, TIMEOUT)
    stop = trio.Event()
    received: list[int] = []
    summary = None
    async with aclosing(collector.stream(Query(), 7, stop=stop)) as items:
        async for item in items:
            if isinstance(item, Answer):
                summary = item
            else:
                received.extend(row.id for row in item)
                if len(received) >= 40:
                    stop.set()  # shutdown begins while the stream is half-way
    assert summary is not None
    assert 40 <= len(received) < 300
    assert received == list(range(1, len(received) + 1))
    assert summary.interrupted == "shutdown"
    assert not summary.complete
    assert [o.status for o in summary.outcomes] == [Status.OK] * 3
    assert summary.next is not None
    resumed = Query(after=summary.next.after, behind=summary.next.behind)
    rest, final = await read_stream(collector, resumed, batch=7)
    assert received + [row.id for row in rest] == list(range(1, 301))
    assert final.complete
    assert final.interrupted is None


async def test_stop_with_no_rows_left_leaves_the_stream_complete() -> None:
    stop = trio.Event()
    stop.set()
    stream = Collector(interleaved(), TIMEOUT).stream(Query(after=300), 7, stop=stop)
    async with aclosing(stream) as items:
        answers = [item async for item in items]
    assert len(answers) == 1
    summary = answers[0]
    assert isinstance(summary, Answer)
    assert summary.complete
    assert summary.interrupted is None
