"""``Prefer: wait=N`` (RFC 7240 section 4.3): the client's own deadline, on virtual time."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing
from quart_trio import QuartTrio

from service.core import Collector, Member, Query
from service.core.coalesce import Coalescer
from service.core.declared import IdsState
from service.web import create_app
from service.web.formats import Preferences, preferences
from tests.unit.fakes import FakeSource, rows

ENVELOPE = {"Accept": "application/vnd.collector.envelope+json"}
NDJSON = {"Accept": "application/x-ndjson"}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (["wait=0.5"], Preferences(wait=0.5, wait_text="0.5")),
        (["wait=5"], Preferences(wait=5.0, wait_text="5")),
        (['wait="2"'], Preferences(wait=2.0, wait_text="2")),
        (["respond-async, Wait = 3 ; x=y"], Preferences(wait=3.0, wait_text="3")),
        (["handling=strict, wait=1"], Preferences(strict=True, wait=1.0, wait_text="1")),
        (["handling=strict", "wait=1"], Preferences(strict=True, wait=1.0, wait_text="1")),
        (["wait=1, wait=5"], Preferences(wait=1.0, wait_text="1")),  # the first one counts
        (["wait=soon, wait=5"], Preferences()),  # ... even when it is malformed
        (["wait=0"], Preferences()),
        (["wait=0.0"], Preferences()),
        (["wait=-1"], Preferences()),
        (["wait=1e3"], Preferences()),
        (["wait=inf"], Preferences()),
        (["wait=nan"], Preferences()),
        (["wait=.5"], Preferences()),
        (["wait="], Preferences()),
        (["wait"], Preferences()),
        (["wait=1234567890"], Preferences()),  # more than nine digits: not a sane deadline
        (["handling=strict, wait=-2"], Preferences(strict=True)),
        ([], Preferences()),
    ],
)
def test_wait_is_a_positive_number_of_seconds_or_ignored(
    headers: list[str], expected: Preferences
) -> None:
    assert preferences(headers) == expected


def slow_app(*, slow: float = 9.0, timeout: float = 2.0, coalesce: bool = False) -> QuartTrio:
    """One fast source (0.1 s) and one slow one, declared and verified so lookups prune."""
    collector = Collector(
        [
            Member(FakeSource("fast", rows(1, 3), delay=0.1), ids=((1, 9),)),
            Member(FakeSource("slow", rows(2, 12), delay=slow), ids=((2, 2), (10, 19))),
        ],
        timeout,
    )
    for name in ("fast", "slow"):
        collector.declared.record(name, IdsState.VERIFIED)
    return create_app(collector)


async def timed(app: QuartTrio, path: str, **headers: str) -> tuple[object, float]:
    start = trio.current_time()
    response = await app.test_client().get(path, headers=headers)
    return response, trio.current_time() - start


async def test_wait_shortens_every_sources_deadline(autojump_clock: trio.abc.Clock) -> None:
    response, elapsed = await timed(slow_app(), "/collect-data", Prefer="wait=0.5", **ENVELOPE)
    assert elapsed == pytest.approx(0.5)
    assert response.status_code == 200
    assert response.headers["Preference-Applied"] == "wait=0.5"
    assert response.headers["Collection-Missing"] == '"slow";status=timeout'
    body = json.loads(await response.get_data())
    assert [row["id"] for row in body["data"]] == [1, 3]
    assert [(s["name"], s["status"], s["duration_ms"]) for s in body["sources"]] == [
        ("fast", "ok", 100.0),
        ("slow", "timeout", 500.0),
    ]
    assert body["sources"][1]["error"] == "no answer within 0.5 s"
    assert body["missing_ids"] == [[2, 2], [10, 19]]


@pytest.mark.parametrize("prefer", ["wait=0", "wait=-1", "wait=soon", "wait=1e-3", "wait"])
async def test_a_malformed_or_non_positive_wait_is_ignored(
    autojump_clock: trio.abc.Clock, prefer: str
) -> None:
    response, elapsed = await timed(slow_app(), "/collect-data", Prefer=prefer)
    assert elapsed == pytest.approx(2.0)  # the configured deadline, as without it
    assert response.status_code == 200
    assert "Preference-Applied" not in response.headers
    assert response.headers["Vary"] == "Accept, Prefer"


async def test_a_wait_longer_than_the_timeout_is_honoured_by_the_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    response, elapsed = await timed(slow_app(), "/collect-data", Prefer="wait=10")
    assert elapsed == pytest.approx(2.0)
    assert response.headers["Preference-Applied"] == "wait=10"


async def test_a_source_within_the_wait_is_answered_in_full(
    autojump_clock: trio.abc.Clock,
) -> None:
    response, elapsed = await timed(slow_app(slow=0.3), "/collect-data", Prefer="wait=0.5")
    assert elapsed == pytest.approx(0.3)
    assert response.headers["Collection-Complete"] == "?1"
    assert [row["id"] for row in json.loads(await response.get_data())] == [1, 2, 3, 12]


async def test_wait_and_strict_handling_both_apply(autojump_clock: trio.abc.Clock) -> None:
    response, elapsed = await timed(slow_app(), "/collect-data", Prefer="handling=strict, wait=0.5")
    assert elapsed == pytest.approx(0.5)
    assert response.status_code == 503
    assert response.headers["Preference-Applied"] == "handling=strict, wait=0.5"
    problem = json.loads(await response.get_data())
    assert problem["sources"] == [
        {"name": "slow", "status": "timeout", "error": "no answer within 0.5 s"}
    ]


async def test_a_page_keeps_the_wait_and_resumes_the_slow_source(
    autojump_clock: trio.abc.Clock,
) -> None:
    response, elapsed = await timed(slow_app(), "/collect-data?limit=1", Prefer="wait=0.25")
    assert elapsed == pytest.approx(0.25)
    assert response.headers["Preference-Applied"] == "wait=0.25"
    assert json.loads(await response.get_data()) == [{"id": 1, "name": "Test 1"}]
    assert "behind=slow" in response.headers["Link"]


@pytest.mark.parametrize(("wanted", "status"), [(12, 503), (3, 200)])
async def test_one_id_keeps_the_wait(
    autojump_clock: trio.abc.Clock, wanted: int, status: int
) -> None:
    response, elapsed = await timed(slow_app(), f"/collect-data/{wanted}", Prefer="wait=0.5")
    assert response.status_code == status
    assert response.headers["Preference-Applied"] == "wait=0.5"
    # Only the source that may hold the id is asked: the slow one costs the wait.
    assert elapsed == pytest.approx(0.5 if wanted == 12 else 0.1)


async def test_a_stream_gives_every_batch_the_wait(autojump_clock: trio.abc.Clock) -> None:
    response, elapsed = await timed(
        slow_app(), "/collect-data", Prefer="wait=0.5, handling=strict", **NDJSON
    )
    assert response.status_code == 200
    # A stream cannot honour strict handling (its 200 is sent first): only wait applies.
    assert response.headers["Preference-Applied"] == "wait=0.5"
    *lines, summary = [json.loads(line) for line in (await response.get_data()).splitlines()]
    # The slow source's first batch is cut at 0.5 s; the fast one's last (empty) batch
    # then takes its 0.1 s: the wait bounds each batch, not the whole stream.
    assert elapsed == pytest.approx(0.6)
    assert [line["id"] for line in lines] == [1, 3]
    assert [(s["name"], s["status"]) for s in summary["sources"]] == [
        ("fast", "ok"),
        ("slow", "timeout"),
    ]
    assert summary["next"]["behind"] == {"slow": None}


@pytest.mark.parametrize(("prefer", "complete"), [("wait=0.5", False), ("wait=1.5", True)])
async def test_a_stream_batch_slower_than_the_wait_ends_its_source(
    autojump_clock: trio.abc.Clock, prefer: str, complete: bool
) -> None:
    response, _ = await timed(slow_app(slow=1.0), "/collect-data", Prefer=prefer, **NDJSON)
    *_, summary = [json.loads(line) for line in (await response.get_data()).splitlines()]
    assert summary["complete"] is complete


async def test_coalescing_never_holds_a_request_past_its_own_wait(
    nursery: trio.Nursery, autojump_clock: trio.abc.Clock
) -> None:
    slow = FakeSource("slow", rows(2), delay=1.0)
    coalescer = Coalescer(Collector([FakeSource("fast", rows(1)), slow], 2.0).collect, nursery, 2.0)
    answered: dict[str, tuple[float, bool]] = {}

    async def ask(label: str, wait: float | None) -> None:
        start = trio.current_time()
        answer = await coalescer.collect(Query(), seconds_left=wait)
        answered[label] = (trio.current_time() - start, answer.complete)

    async with trio.open_nursery() as requests:
        requests.start_soon(ask, "patient", None)
        requests.start_soon(ask, "hurried", 0.5)
        requests.start_soon(ask, "hurried too", 0.5)
    assert answered == {
        "patient": (pytest.approx(1.0), True),
        "hurried": (pytest.approx(0.5), False),
        "hurried too": (pytest.approx(0.5), False),
    }
    assert coalescer.fan_outs == 2  # the two hurried requests shared one
    assert slow.calls == 2
