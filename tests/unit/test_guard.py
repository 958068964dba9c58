"""One guard for every kind of collection: plain and streamed requests judge sources alike."""

from __future__ import annotations

import logging
from contextlib import aclosing

import pytest
import trio

from service.core import BreakerSettings, BreakerState, Collector, Member, Query, Status
from tests.support.collecting import read_stream
from tests.unit.fakes import FakeSource, rows

TIMEOUT = 2.0


def declared_members() -> list[Member]:
    """One source with a stray row outside its ranges, one that fails, one that is fine."""
    return [
        Member(FakeSource("stray", rows(1, 2, 3, 50)), ids=((1, 10),)),
        Member(FakeSource("down", error=OSError("down")), ids=((11, 20),)),
        Member(FakeSource("fine", rows(21, 22)), ids=((21, 30),)),
    ]


async def test_a_stream_and_a_plain_request_give_the_same_outcomes_for_the_same_data(
    autojump_clock: trio.abc.Clock,
) -> None:
    plain = await Collector(declared_members(), TIMEOUT).collect(Query())
    _, streamed = await read_stream(Collector(declared_members(), TIMEOUT), Query(), batch=2)
    assert [o.out_of_range for o in plain.outcomes] == [1, 0, 0]
    assert [o.status for o in plain.outcomes] == [Status.OK, Status.ERROR, Status.OK]
    assert streamed.outcomes == plain.outcomes
    assert streamed.missing_ids == plain.missing_ids == ((11, 20),)


def core_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "collector.core"]


async def test_a_stream_and_a_plain_request_log_and_trip_the_breaker_alike(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="collector.core")
    logs: list[list[str]] = []
    states: list[BreakerState] = []
    for streamed in (False, True):
        caplog.clear()
        source = FakeSource("down", error=OSError("down"))
        collector = Collector([Member(source, breaker=BreakerSettings(failures=2))], TIMEOUT)
        for _ in range(3):
            if streamed:
                await read_stream(collector, Query(), batch=5)
            else:
                await collector.collect(Query())
        logs.append(core_messages(caplog))
        states.append(collector.breaker_states()["down"])
    assert logs[0] == [
        "source down error after 0.0 ms: OSError: down",
        "source down error after 0.0 ms: OSError: down",
        "source down failed 2 times in a row: circuit open, skipped for 10 s",
    ]
    assert logs[1] == logs[0]
    assert states == [BreakerState.OPEN, BreakerState.OPEN]


async def test_a_stream_counts_out_of_range_rows_of_every_batch(
    autojump_clock: trio.abc.Clock,
) -> None:
    source = FakeSource("stray", rows(*range(1, 16), 90, 91, 92))
    collector = Collector([Member(source, ids=((1, 20),))], TIMEOUT)
    merged, summary = await read_stream(collector, Query(), batch=4)
    assert len(merged) == 18
    (outcome,) = summary.outcomes
    assert (outcome.status, outcome.rows, outcome.out_of_range) == (Status.OK, 18, 3)


async def test_a_stream_misses_only_the_ids_after_its_last_delivered_row(
    autojump_clock: trio.abc.Clock,
) -> None:
    source = FakeSource("cut", rows(*range(1, 101)), error=OSError("reset"))
    source.fail_at_batch = 2  # two batches of ten arrive, then the source fails
    collector = Collector([Member(source, ids=((1, 100), (201, 300)))], TIMEOUT)
    merged, summary = await read_stream(collector, Query(), batch=10)
    assert [row.id for row in merged] == list(range(1, 21))
    (outcome,) = summary.outcomes
    assert (outcome.status, outcome.rows) == (Status.ERROR, 20)
    assert outcome.missing_ids == ((21, 100), (201, 300))
    assert summary.missing_ids == ((21, 100), (201, 300))


async def test_a_stream_failing_at_once_misses_its_ranges_above_the_window(
    autojump_clock: trio.abc.Clock,
) -> None:
    source = FakeSource("down", rows(*range(1, 101)), error=OSError("down"))
    collector = Collector([Member(source, ids=((1, 100),))], TIMEOUT)
    merged, summary = await read_stream(collector, Query(after=40), batch=10)
    assert merged == []
    assert summary.outcomes[0].missing_ids == ((41, 100),)


DISCONNECT_ERRORS = [None, ConnectionResetError(104, "Connection reset by peer")]


@pytest.mark.parametrize("on_cancel", DISCONNECT_ERRORS, ids=["cancelled", "driver-error"])
async def test_five_disconnects_in_a_row_leave_a_healthy_source_closed(
    autojump_clock: trio.abc.Clock, on_cancel: Exception | None
) -> None:
    source = FakeSource("slow", rows(1, 2), delay=1.0)
    source.error_on_cancel = on_cancel
    collector = Collector([Member(source, breaker=BreakerSettings(failures=5))], TIMEOUT)
    for _ in range(5):
        with trio.move_on_after(0.5):  # the client goes away mid-fetch
            await collector.collect(Query())
    assert source.cancelled == 5
    assert collector.breaker_states() == {"slow": BreakerState.CLOSED}
    collection = await collector.collect(Query())
    assert collection.complete
    assert [row.id for row in collection.rows] == [1, 2]


async def read_all(collector: Collector, query: Query) -> None:
    async with aclosing(collector.stream(query, batch_size=1)) as items:
        async for _ in items:
            pass


@pytest.mark.parametrize("on_cancel", DISCONNECT_ERRORS, ids=["cancelled", "driver-error"])
async def test_five_streams_abandoned_in_a_row_leave_a_healthy_source_closed(
    autojump_clock: trio.abc.Clock, on_cancel: Exception | None
) -> None:
    source = FakeSource("slow", rows(1, 2, 3), delay=1.0)
    source.error_on_cancel = on_cancel
    collector = Collector([Member(source, breaker=BreakerSettings(failures=5))], TIMEOUT)
    for wait in (0.5, 1.5, 2.5, 0.5, 1.5):  # at the opening batch, or later ones
        with trio.move_on_after(wait):
            await read_all(collector, Query())
    assert source.cancelled == 5
    assert all(stream.closed for stream in source.streams)
    assert collector.breaker_states() == {"slow": BreakerState.CLOSED}
    merged, summary = await read_stream(collector, Query(), batch=2)
    assert summary.complete
    assert [row.id for row in merged] == [1, 2, 3]


async def test_a_stream_abandoned_during_its_trial_hands_the_trial_on(
    autojump_clock: trio.abc.Clock,
) -> None:
    source = FakeSource("flaky", rows(1), error=OSError("down"))
    collector = Collector(
        [Member(source, breaker=BreakerSettings(failures=1, cooldown=5))], TIMEOUT
    )
    await collector.collect(Query())
    assert collector.breaker_states() == {"flaky": BreakerState.OPEN}
    await trio.sleep(5)
    source.error, source.delay = None, 1.0
    with trio.move_on_after(0.5):  # the trial's client goes away while the cursor opens
        await read_all(collector, Query())
    assert all(stream.closed for stream in source.streams)
    merged, summary = await read_stream(collector, Query(), batch=2)
    assert [o.status for o in summary.outcomes] == [Status.OK]
    assert collector.breaker_states() == {"flaky": BreakerState.CLOSED}
    assert [row.id for row in merged] == [1]
