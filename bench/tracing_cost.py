"""What the tracing seam costs a collection: off (the no-op), and on (the OpenTelemetry SDK).

Run from the repository root (not part of the test suite):

    uv run python bench/tracing_cost.py [--requests 20000] [--sources 3]

It fans ``--requests`` collections out, one after the other, to in-memory sources
that answer at once (so the fan-out itself is all that is measured), with tracing
off, then on with an SDK provider whose spans go nowhere (a processor that drops
them), then on with the SDK's in-memory exporter, in alternating rounds; and it
times the no-op span alone. It prints microseconds per collection for each, and how
many spans a collection makes. Tracing off must cost nothing measurable: its
figure is the span count times the no-op span's cost, well under the noise of a
collection.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.core import Collector, Row, Window, tracing
from service.runtime.tracing import install_provider

ROUNDS = 5


class InstantSource:
    """A source that answers its rows at once: no I/O, no sleep."""

    def __init__(self, name: str, first: int) -> None:
        self.name = name
        self._rows = [Row(i, f"Test {i}") for i in range(first, first + 10)]

    async def fetch(self, window: Window) -> Sequence[Row]:
        await trio.lowlevel.checkpoint()
        return self._rows

    async def ping(self) -> None:
        """Always reachable."""

    def open_stream(self, window: Window, batch_size: int) -> object:
        raise NotImplementedError

    async def lowest_outside(self, ranges: object) -> int | None:
        return None


async def per_collection(collector: Collector, requests: int) -> float:
    """Microseconds per collection, over ``requests`` sequential ones."""
    start = time.perf_counter()
    for _ in range(requests):
        await collector.collect()
    return (time.perf_counter() - start) / requests * 1e6


def sdk(exporting: bool) -> Callable[[], None]:
    """Install an SDK tracer; return how to take it away again."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    if exporting:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    install_provider(provider)

    def remove() -> None:
        tracing.install(None)
        exporter.clear()
        provider.shutdown()

    return remove


def no_op_span_ns(calls: int = 1_000_000) -> float:
    """Nanoseconds for one ``with span(...)`` plus one attribute set, tracing off."""
    span = tracing.span
    start = time.perf_counter()
    for _ in range(calls):
        with span("collector.fetch", None) as traced:
            traced.set("collector.rows", 1)
    return (time.perf_counter() - start) / calls * 1e9


async def main(requests: int, sources: int) -> None:
    collector = Collector([InstantSource(f"s{i}", i * 100) for i in range(sources)], 2.0)
    await per_collection(collector, requests // 10)  # warm up
    figures: dict[str, list[float]] = {"off": [], "on, dropped": [], "on, in-memory": []}
    for _ in range(ROUNDS):
        figures["off"].append(await per_collection(collector, requests))
        for label, exporting in (("on, dropped", False), ("on, in-memory", True)):
            remove = sdk(exporting)
            try:
                figures[label].append(await per_collection(collector, requests))
            finally:
                remove()
    noop = no_op_span_ns()
    spans = 2 * sources  # a source span and a fetch span per source (+1 per HTTP request)
    print(f"{requests} collections x {ROUNDS} rounds, {sources} instant sources\n")
    print(f"{'tracing':<15} {'us/collection (median)':>24} {'min':>8} {'max':>8}")
    for label, values in figures.items():
        print(
            f"{label:<15} {statistics.median(values):24.1f} {min(values):8.1f} {max(values):8.1f}"
        )
    print(
        f"\nno-op span (with + one attribute): {noop:.0f} ns; {spans} spans per collection"
        f" = {spans * noop / 1000:.2f} us"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--sources", type=int, default=3)
    args = parser.parse_args()
    trio.run(main, args.requests, args.sources)
