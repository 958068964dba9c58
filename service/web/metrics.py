"""Prometheus metrics, each instance in its own registry (no process-global state).

collector_source_fetch_seconds{source}            histogram of fetch durations
collector_source_outcomes_total{source,status}    outcomes: ok, timeout, error, skipped
collector_breaker_state{source}                   0 closed, 1 half-open, 2 open
collector_source_ids_state{source}                0 verified, 1 unknown, 2 violated
collector_server_connections{server,state}        open, in_use, waiting, limit (the budget)
collector_requests_in_flight                      HTTP requests being served
collector_http_responses_total{code}              responses sent, by status code
collector_replica_fetches_total{source,replica}   attempts sent to each replica (any reason)
collector_replica_hedges_total{source,replica}    of those, hedges (sent after the hedge delay)
collector_replica_hedge_wins_total{source,replica} hedges that answered first

With several worker processes every worker writes its values to files in one
shared directory (prometheus-client's multiprocess mode) and a scrape, whichever
worker answers it, reads them all: counters and histograms are summed over the
workers (the dead ones included, so counters never go down), in-flight requests
are summed over the live workers, and a breaker's state is the worst (highest)
over the live workers, each as of its last fetch of that source or scrape. A
source's ids state is likewise the worst over the live workers (each checks on
its own), as of each one's last check or scrape. A server's connections are
summed over the live workers (each holds its share of the budget), as of each
one's last scrape.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as MetricsCollector

from service.core import Outcome
from service.core.breaker import BreakerState
from service.core.declared import IdsState

#: Bucket bounds in seconds: fine-grained where healthy sources answer, and around
#: the 2 s default deadline where timeouts land.
FETCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 5.0)
BREAKER_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
#: Higher is worse, as for breakers, so the multiprocess maximum is the worst worker.
IDS_STATE_VALUES = {IdsState.VERIFIED: 0, IdsState.UNKNOWN: 1, IdsState.VIOLATED: 2}
IDS_STATE_NAME = "collector_source_ids_state"
IDS_STATE_HELP = "Declared ids per source: 0 verified, 1 unknown (not pruned), 2 violated."
BREAKER_NAME = "collector_breaker_state"
BREAKER_HELP = "Circuit breaker state per source: 0 closed, 1 half-open, 2 open."
CONNECTIONS_NAME = "collector_server_connections"
CONNECTIONS_HELP = (
    "Connections per database server: open, in_use (lent or being opened), "
    "waiting (fetches waiting for one), limit (the budget)."
)
CONNECTION_STATES = ("open", "in_use", "waiting", "limit")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: prometheus-client reads this variable when it is first imported: set, every
#: value lives in a file under that directory, shared by the worker processes.
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


class ConnectionUsage(Protocol):
    """One database server's connections, as the sources' budgets report them."""

    @property
    def server(self) -> str:
        """The server, as ``host:port``."""
        ...

    @property
    def open(self) -> int:
        """Connections open, idle or lent."""
        ...

    @property
    def in_use(self) -> int:
        """Connections lent, or being opened for a fetch."""
        ...

    @property
    def waiting(self) -> int:
        """Fetches waiting for a connection."""
        ...

    @property
    def limit(self) -> int:
        """The budget: open never exceeds it."""
        ...


#: A gauge's values by label values, read when it is scraped.
Readings = Callable[[], Mapping[tuple[str, ...], float]]


class _ScrapeGauge(MetricsCollector):
    """A gauge read at scrape time, so it is never stale (one process only)."""

    def __init__(self, name: str, doc: str, labels: list[str], read: Readings) -> None:
        self._name, self._doc, self._labels, self._read = name, doc, labels, read

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(self._name, self._doc, labels=self._labels)
        for labels, value in self._read().items():
            gauge.add_metric(list(labels), value)
        yield gauge


class Metrics:
    """The service's metrics; ``observe`` is the collector's outcome observer.

    ``shared_dir`` is the multiprocess directory of a run with several workers;
    without it the values live in this process alone.
    """

    def __init__(self, shared_dir: Path | None = None) -> None:
        if shared_dir is not None and not getattr(values.ValueClass, "_multiprocess", False):
            raise RuntimeError(
                f"${MULTIPROCESS_DIR_ENV} must be set before prometheus_client is imported"
            )
        self._shared_dir = shared_dir
        self._breaker_states: Callable[[], Mapping[str, BreakerState]] = dict
        self._ids_states: Callable[[], Mapping[str, IdsState]] = dict
        self._usage: Callable[[], Iterable[ConnectionUsage]] = list
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
            "collector_requests_in_flight",
            "HTTP requests being served.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.breaker_state = Gauge(
            BREAKER_NAME,
            BREAKER_HELP,
            ["source"],
            registry=None,  # exported only in multiprocess mode; see watch_breakers
            multiprocess_mode="livemax",
        )
        self.ids_state = Gauge(
            IDS_STATE_NAME,
            IDS_STATE_HELP,
            ["source"],
            registry=None,  # exported only in multiprocess mode; see watch_ids
            multiprocess_mode="livemax",
        )
        self.connections = Gauge(
            CONNECTIONS_NAME,
            CONNECTIONS_HELP,
            ["server", "state"],
            registry=None,  # exported only in multiprocess mode; see watch_connections
            multiprocess_mode="livesum",
        )
        self.responses = Counter(
            "collector_http_responses",
            "HTTP responses by status code.",
            ["code"],
            registry=self.registry,
        )
        self.replica_events = {
            event: Counter(
                f"collector_replica_{metric}",
                help_text,
                ["source", "replica"],
                registry=self.registry,
            )
            for event, metric, help_text in (
                ("fetch", "fetches", "Attempts sent to each replica of a source."),
                ("hedge", "hedges", "Hedged attempts (sent after the hedge delay) per replica."),
                ("hedge_win", "hedge_wins", "Hedged attempts that answered first, per replica."),
            )
        }

    def observe_replica(self, source: str, replica: str, event: str) -> None:
        """Count one replica event: ``fetch``, ``hedge`` or ``hedge_win``."""
        self.replica_events[event].labels(source, replica).inc()

    def watch_breakers(self, states: Callable[[], Mapping[str, BreakerState]]) -> None:
        """Export the breaker states that ``states`` reports.

        In one process they are read at scrape time, so the gauge is never stale;
        with several workers each writes its states to the shared files instead.
        """
        self._breaker_states = states
        if self._shared_dir is None:
            self.registry.register(
                _ScrapeGauge(BREAKER_NAME, BREAKER_HELP, ["source"], self._breaker_readings)
            )
        else:
            self._write_breakers()

    def watch_ids(self, states: Callable[[], Mapping[str, IdsState]]) -> None:
        """Export the declared-ids states that ``states`` reports (as for breakers)."""
        self._ids_states = states
        if self._shared_dir is None:
            self.registry.register(
                _ScrapeGauge(IDS_STATE_NAME, IDS_STATE_HELP, ["source"], self._ids_readings)
            )
        else:
            self._write_ids()

    def watch_connections(self, usage: Callable[[], Iterable[ConnectionUsage]]) -> None:
        """Export each database server's connections (open, in use, waiting, budget)."""
        self._usage = usage
        if self._shared_dir is None:
            self.registry.register(
                _ScrapeGauge(
                    CONNECTIONS_NAME, CONNECTIONS_HELP, ["server", "state"], self._connections
                )
            )
        else:
            self._write_connections()

    def _breaker_readings(self) -> dict[tuple[str, ...], float]:
        return {(s,): BREAKER_VALUES[state] for s, state in self._breaker_states().items()}

    def _ids_readings(self) -> dict[tuple[str, ...], float]:
        return {(s,): IDS_STATE_VALUES[state] for s, state in self._ids_states().items()}

    def _connections(self) -> dict[tuple[str, ...], float]:
        readings: dict[tuple[str, ...], float] = {}
        for usage in self._usage():
            for state in CONNECTION_STATES:
                readings[(usage.server, state)] = getattr(usage, state)
        return readings

    def observe(self, outcome: Outcome) -> None:
        """Record one source outcome."""
        self.fetch_seconds.labels(outcome.source).observe(outcome.duration)
        self.outcomes.labels(outcome.source, outcome.status.value).inc()
        if self._shared_dir is not None:
            self.breaker_state.labels(outcome.source).set(BREAKER_VALUES[outcome.breaker])

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (of every worker)."""
        if self._shared_dir is None:
            return generate_latest(self.registry)
        self._write_breakers()
        self._write_ids()
        self._write_connections()
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=str(self._shared_dir))  # type: ignore[no-untyped-call]
        return generate_latest(merged)

    def _write_breakers(self) -> None:
        for source, state in self._breaker_states().items():
            self.breaker_state.labels(source).set(BREAKER_VALUES[state])

    def _write_connections(self) -> None:
        for labels, value in self._connections().items():
            self.connections.labels(*labels).set(value)

    def _write_ids(self) -> None:
        for source, state in self._ids_states().items():
            self.ids_state.labels(source).set(IDS_STATE_VALUES[state])


@contextmanager
def shared_metrics_dir() -> Iterator[Path]:
    """The multiprocess directory for one run of several workers, empty at start.

    An operator's ``$PROMETHEUS_MULTIPROC_DIR`` is used (and emptied) when set;
    otherwise a private temporary directory is made and removed afterwards. The
    variable is set here so that the worker processes, started afterwards,
    inherit it before they first import prometheus-client.
    """
    chosen = os.environ.get(MULTIPROCESS_DIR_ENV)
    directory = Path(chosen) if chosen else Path(tempfile.mkdtemp(prefix="collector-metrics-"))
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()  # a previous run's values would be added to this one's
    os.environ[MULTIPROCESS_DIR_ENV] = str(directory)
    try:
        yield directory
    finally:
        if chosen:
            os.environ[MULTIPROCESS_DIR_ENV] = chosen
        else:
            os.environ.pop(MULTIPROCESS_DIR_ENV, None)
            shutil.rmtree(directory, ignore_errors=True)


def worker_exited(directory: Path, pid: int) -> None:
    """Drop an exited worker from the live gauges (its counters stay counted)."""
    multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
