"""Prometheus metrics, each instance in its own registry (no process-global state).

collector_source_fetch_seconds{source}            histogram of fetch durations
collector_source_outcomes_total{source,status}    outcomes: ok, timeout, error, skipped
collector_breaker_state{source}                   0 closed, 1 half-open, 2 open
collector_requests_in_flight                      HTTP requests being served
collector_http_responses_total{code}              responses sent, by status code
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as MetricsCollector

from service.breaker import BreakerState
from service.core import Outcome

#: Bucket bounds in seconds: fine-grained where healthy sources answer, and around
#: the 2 s default deadline where timeouts land.
FETCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 5.0)
BREAKER_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _BreakerGauge(MetricsCollector):
    """Reads breaker states at scrape time, so the gauge is never stale."""

    def __init__(self, states: Callable[[], Mapping[str, BreakerState]]) -> None:
        self._states = states

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "collector_breaker_state",
            "Circuit breaker state per source: 0 closed, 1 half-open, 2 open.",
            labels=["source"],
        )
        for source, state in self._states().items():
            gauge.add_metric([source], BREAKER_VALUES[state])
        yield gauge


class Metrics:
    """The service's metrics; ``observe`` is the collector's outcome observer."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.fetch_seconds = Histogram(
            "collector_source_fetch_seconds",
            "Time each source took to answer, time out, fail or be skipped.",
            ["source"],
            buckets=FETCH_BUCKETS,
            registry=self.registry,
        )
        self.outcomes = Counter(
            "collector_source_outcomes",
            "Source outcomes by status.",
            ["source", "status"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "collector_requests_in_flight", "HTTP requests being served.", registry=self.registry
        )
        self.responses = Counter(
            "collector_http_responses",
            "HTTP responses by status code.",
            ["code"],
            registry=self.registry,
        )

    def watch_breakers(self, states: Callable[[], Mapping[str, BreakerState]]) -> None:
        """Export the breaker states that ``states`` reports."""
        self.registry.register(_BreakerGauge(states))

    def observe(self, outcome: Outcome) -> None:
        """Record one source outcome."""
        self.fetch_seconds.labels(outcome.source).observe(outcome.duration)
        self.outcomes.labels(outcome.source, outcome.status.value).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
