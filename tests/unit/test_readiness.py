"""Readiness: probes have their own short deadline, and open breakers count as not ready."""

from __future__ import annotations

import json

import pytest
import trio

from service.core import Collector, Member, Query, Status
from service.core.breaker import BreakerSettings
from service.web import create_app
from tests.unit.fakes import FakeSource, rows

TIMEOUT = 2.0
PROBE_TIMEOUT = 0.5


def black_holed(name: str) -> FakeSource:
    """A source that accepts the ping and never answers, like a black-holed peer."""
    source = FakeSource(name, rows(1))
    source.ping_delay = 3600.0
    return source


async def test_a_black_holed_source_costs_the_probe_deadline_not_the_source_deadline(
    autojump_clock: trio.abc.Clock,
) -> None:
    collector = Collector([FakeSource("up"), black_holed("hole")], TIMEOUT, probe_timeout=0.5)
    start = trio.current_time()
    probes = await collector.probe()
    assert trio.current_time() - start == pytest.approx(PROBE_TIMEOUT)
    assert [(p.source, p.status) for p in probes] == [("up", Status.OK), ("hole", Status.TIMEOUT)]
    assert probes[1].error == "no answer within 0.5 s"


async def test_readyz_answers_within_the_probe_deadline(autojump_clock: trio.abc.Clock) -> None:
    collector = Collector([black_holed("a"), black_holed("b")], TIMEOUT, probe_timeout=0.5)
    client = create_app(collector).test_client()
    start = trio.current_time()
    response = await client.get("/readyz")
    assert trio.current_time() - start == pytest.approx(PROBE_TIMEOUT)
    assert response.status_code == 503
    body = json.loads(await response.get_data())
    assert body["status"] == "unavailable"
    assert [s["status"] for s in body["sources"]] == ["timeout", "timeout"]


async def broken_breakers() -> tuple[Collector, list[FakeSource]]:
    """Two sources whose data fetches fail until their breakers open; pings still work."""
    sources = [FakeSource("a", error=OSError("down")), FakeSource("b", error=OSError("down"))]
    for source in sources:
        source.reachable = True  # a ping would answer: only its data fails
    settings = BreakerSettings(failures=2, cooldown=10.0)
    members = [Member(s, breaker=settings) for s in sources]
    collector = Collector(members, TIMEOUT, probe_timeout=PROBE_TIMEOUT)
    for _ in range(2):
        await collector.collect(Query())
    return collector, sources


async def test_readyz_is_unavailable_while_every_breaker_is_open(
    autojump_clock: trio.abc.Clock,
) -> None:
    collector, sources = await broken_breakers()
    response = await create_app(collector).test_client().get("/readyz")
    assert response.status_code == 503
    body = json.loads(await response.get_data())
    assert [(s["status"], s["breaker"]) for s in body["sources"]] == [("skipped", "open")] * 2
    assert body["sources"][0]["error"] == "circuit open after 2 failures in a row"
    assert [s.pings for s in sources] == [0, 0]


async def test_readyz_pings_again_once_the_cool_down_allows_a_trial(
    autojump_clock: trio.abc.Clock,
) -> None:
    collector, sources = await broken_breakers()
    await trio.sleep(10.0)
    response = await create_app(collector).test_client().get("/readyz")
    assert response.status_code == 200
    body = json.loads(await response.get_data())
    assert [(s["status"], s["breaker"]) for s in body["sources"]] == [("ok", "half_open")] * 2
    assert [s.pings for s in sources] == [1, 1]


async def test_readyz_and_metrics_report_each_declared_sources_ids_state() -> None:
    inside = FakeSource("inside", rows(1, 2))
    outside = FakeSource("outside", rows(1, 1000))
    members = [Member(inside, ids=((1, 10),)), Member(outside, ids=((1, 10),)), FakeSource("free")]
    collector = Collector(members, TIMEOUT, probe_timeout=PROBE_TIMEOUT)
    client = create_app(collector).test_client()
    before = json.loads(await (await client.get("/readyz")).get_data())
    assert [s["ids"] for s in before["sources"]] == ["unknown", "unknown", None]
    await collector.declared.check()
    after = json.loads(await (await client.get("/readyz")).get_data())
    assert [s["ids"] for s in after["sources"]] == ["verified", "violated", None]
    text = (await (await client.get("/metrics")).get_data()).decode()
    assert 'collector_source_ids_state{source="inside"} 0.0' in text
    assert 'collector_source_ids_state{source="outside"} 2.0' in text
    assert 'collector_source_ids_state{source="free"}' not in text
