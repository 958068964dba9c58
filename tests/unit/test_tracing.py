"""Traces: a span per request, per source and per fetch, into the SDK's in-memory exporter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import trio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from service.core import Collector, Member, Query, tracing
from service.core.coalesce import Coalescer
from service.core.declared import IdsState
from service.runtime.tracing import OpenTelemetryTracer, configure, install_provider, wanted
from service.web import create_app
from tests.unit.fakes import FakeSource, rows

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Every span the service ends, in memory; tracing is off again afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    install_provider(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)
        provider.shutdown()


def collector() -> Collector:
    """A fast source, a slow one (times out at 0.5 s), a broken one and one that prunes."""
    pruned = Member(FakeSource("pruned", rows(-5)), ids=((-5, -5),))
    made = Collector(
        [
            FakeSource("fast", rows(1, 3), delay=0.1),
            FakeSource("slow", rows(2), delay=9.0),
            FakeSource("broken", error=OSError("down")),
            pruned,
        ],
        0.5,
    )
    made.declared.record("pruned", IdsState.VERIFIED)
    return made


def by_name(exported: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in exported if s.name == name]


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


async def test_a_request_its_sources_and_fetches_form_one_trace_under_the_callers(
    spans: InMemorySpanExporter, autojump_clock: trio.abc.Clock
) -> None:
    app = create_app(collector())
    response = await app.test_client().get(
        "/collect-data?after=0&limit=5", headers={"traceparent": TRACEPARENT}
    )
    assert response.status_code == 200
    exported = spans.get_finished_spans()
    (request,) = by_name(exported, "GET /collect-data")
    assert request.kind is SpanKind.SERVER
    assert format(request.context.trace_id, "032x") == TRACE_ID
    assert format(parent_of(request) or 0, "016x") == PARENT_ID
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["collector.complete"] is False
    assert request.attributes["collector.missing"] == "slow,broken"
    assert request.attributes["collector.outcome"] == "sent"

    sources = {s.attributes["collector.source"]: s for s in by_name(exported, "collector.source")}
    assert set(sources) == {"pruned", "broken", "fast", "slow"}
    assert {parent_of(s) for s in sources.values()} == {request.context.span_id}
    assert {s.context.trace_id for s in exported} == {int(TRACE_ID, 16)}
    status = {name: s.attributes["collector.status"] for name, s in sources.items()}
    assert status == {"fast": "ok", "slow": "timeout", "broken": "error", "pruned": "pruned"}
    assert sources["fast"].attributes["collector.rows"] == 2
    assert sources["fast"].attributes["collector.deadline_s"] == 0.5
    assert sources["slow"].status.status_code is StatusCode.ERROR
    assert sources["slow"].status.description == "no answer within 0.5 s"
    assert sources["fast"].status.status_code is StatusCode.UNSET

    fetches = {s.attributes["collector.source"]: s for s in by_name(exported, "collector.fetch")}
    assert set(fetches) == {"fast", "slow", "broken"}  # a pruned source is not asked
    for name, fetch in fetches.items():
        assert parent_of(fetch) == sources[name].context.span_id
        assert fetch.attributes["collector.operation"] == "fetch"
    assert fetches["broken"].attributes["collector.status"] == "error"
    assert fetches["slow"].attributes["collector.deadline_s"] == 0.5


async def test_without_a_traceparent_the_request_starts_a_trace(
    spans: InMemorySpanExporter,
) -> None:
    app = create_app(Collector([FakeSource("a", rows(1))], 1.0))
    await app.test_client().get("/collect-data/1")
    (request,) = by_name(spans.get_finished_spans(), "GET /collect-data/{id}")
    assert request.parent is None
    assert request.attributes is not None
    assert request.attributes["url.path"] == "/collect-data/1"


async def test_a_stream_has_a_span_per_batch_under_the_request(
    spans: InMemorySpanExporter, autojump_clock: trio.abc.Clock
) -> None:
    app = create_app(collector())
    response = await app.test_client().get(
        "/collect-data", headers={"Accept": "application/x-ndjson", "traceparent": TRACEPARENT}
    )
    await response.get_data()
    exported = spans.get_finished_spans()
    (request,) = by_name(exported, "GET /collect-data")
    batches = by_name(exported, "collector.fetch")
    assert {parent_of(b) for b in batches} == {request.context.span_id}
    assert {b.attributes["collector.operation"] for b in batches} == {"stream.batch"}
    per_source = [
        (b.attributes["collector.source"], b.attributes["collector.status"]) for b in batches
    ]
    assert sorted(per_source) == [
        ("broken", "error"),
        ("fast", "ok"),  # its rows
        ("fast", "ok"),  # the empty batch that ends it
        ("pruned", "ok"),  # a stream of every id asks it (its ids are in the window)
        ("pruned", "ok"),
        ("slow", "timeout"),
    ]


async def test_a_client_that_leaves_marks_its_spans_cancelled_not_failed(
    spans: InMemorySpanExporter, autojump_clock: trio.abc.Clock
) -> None:
    made = Collector([FakeSource("slow", rows(1), delay=9.0)], 2.0)
    with trio.move_on_after(0.3):
        await made.collect()
    (source,) = by_name(spans.get_finished_spans(), "collector.source")
    assert source.attributes is not None
    assert source.attributes["collector.cancelled"] is True
    assert source.status.status_code is StatusCode.UNSET


async def test_a_coalesced_fan_out_is_traced_once_in_the_trace_of_the_request_that_opened_it(
    spans: InMemorySpanExporter, nursery: trio.Nursery
) -> None:
    made = Collector([FakeSource("a", rows(1))], 1.0)
    coalescer = Coalescer(made.collect, nursery, 1.0)
    tracer = tracing.active()
    assert isinstance(tracer, OpenTelemetryTracer)

    async def request(traceparent: str) -> None:
        with tracer.span("GET /collect-data", carrier={"traceparent": traceparent}, server=True):
            await coalescer.collect(Query())

    other = f"00-{'1' * 32}-{PARENT_ID}-01"
    async with trio.open_nursery() as requests:
        requests.start_soon(request, TRACEPARENT)
        requests.start_soon(request, other)
    assert coalescer.fan_outs == 1
    (source,) = by_name(spans.get_finished_spans(), "collector.source")
    assert format(source.context.trace_id, "032x") in (TRACE_ID, "1" * 32)


def test_tracing_is_off_and_costs_no_import_unless_the_environment_asks() -> None:
    script = (
        "import os, sys\n"
        "from service.runtime import server, tracing\n"
        "from service.core import tracing as seam\n"
        "assert tracing.configure(os.environ) is None\n"
        "assert seam.active() is None and seam.span('x') is seam.NO_SPAN\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout.replace("'", '"')) == []


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4318"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://h:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "TRUE"}, False),
    ],
)
def test_the_standard_variables_turn_tracing_on(env: dict[str, str], on: bool) -> None:
    assert wanted(env) is on


def test_configured_from_the_environment_an_otlp_tracer_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    stop = configure(os.environ)
    try:
        assert stop is not None
        tracer = tracing.active()
        assert isinstance(tracer, OpenTelemetryTracer)
    finally:
        tracing.install(None)
        if stop is not None:
            stop()
