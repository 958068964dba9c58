"""The Quart-Trio application, wired from the rooms of this package.

Routes::

    GET /collect-data        every row of every source that answered, sorted by id;
                             a page of them (limit, after); or an NDJSON stream
    GET /collect-data/{id}   the row with that id, from the sources that can hold it
    GET /livez          the process is alive (no dependency is checked)
    GET /readyz         per-source status and ids state; 503 when no source is ok
    GET /metrics        Prometheus text format
    GET /openapi.json   the OpenAPI description; GET /docs renders it (offline)

Every error the client can cause is answered with an RFC 9457 problem document;
nothing the client sends can produce a stack trace. The handlers live in
routes_data.py and routes_ops.py; this module only connects them.
"""

from __future__ import annotations

import trio
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from service.config import DEFAULT_MAX_CONCURRENT_REQUESTS, DEFAULT_RESPONSE_TIMEOUT
from service.core import Collector
from service.core.coalesce import Coalescer
from service.runtime.memory import MemoryReleaser
from service.web import openapi, problems
from service.web.admission import Admission
from service.web.auth import BearerAuth
from service.web.metrics import Metrics
from service.web.middleware import MAX_REQUEST_HEAD, RequestTelemetry
from service.web.routes_data import AnySegment, DataRoutes
from service.web.routes_ops import OperationRoutes

__all__ = ["MAX_REQUEST_HEAD", "create_app"]


def create_app(
    collector: Collector,
    metrics: Metrics | None = None,
    coalescer: Coalescer | None = None,
    *,
    api_token: str | None = None,
    max_concurrent: int = DEFAULT_MAX_CONCURRENT_REQUESTS,
    response_timeout: float = DEFAULT_RESPONSE_TIMEOUT,
    draining: trio.Event | None = None,
    releaser: MemoryReleaser | None = None,
) -> QuartTrio:
    """The ASGI app serving ``collector``; it owns no connections of its own.

    With a ``coalescer``, identical queries arriving together share one fan-out.
    With an ``api_token``, data endpoints and metrics require it as a bearer token.
    At most ``max_concurrent`` data requests are served at once; more get 503.
    A non-streamed answer may take ``response_timeout`` seconds to send; streams
    have no such limit (they end when ``draining`` is set, at shutdown).
    After a large answer, ``releaser`` (by default the platform's) gives freed
    memory back to the operating system.
    """
    metrics = metrics or Metrics()
    watch(collector, metrics)
    app = QuartTrio("collector")
    app.config["RESPONSE_TIMEOUT"] = response_timeout
    app.extensions["metrics"] = metrics
    # Werkzeug would answer "//" in a path with a redirect whose Location is built
    # from the client's Host header; such a path is simply not one of ours.
    app.url_map.merge_slashes = False
    app.url_map.converters["segment"] = AnySegment
    app.before_request(BearerAuth(api_token).check)

    collect = coalescer.collect if coalescer is not None else collector.collect
    data = DataRoutes(collector, collect, Admission(max_concurrent), draining=draining)
    app.get("/collect-data")(data.collect_data)
    app.get("/collect-data/<segment:row_id>")(data.collect_one)

    spec = openapi.openapi_document([s.name for s in collector.sources])
    ops = OperationRoutes(collector, metrics, spec)
    app.get("/livez")(ops.livez)
    app.get("/readyz")(ops.readyz)
    app.get("/metrics")(ops.metrics_text)
    app.get("/openapi.json")(ops.openapi_json)
    app.get("/docs")(ops.docs)
    app.get("/docs/init.js")(ops.docs_init)
    app.get("/docs/<name>")(ops.docs_asset)

    app.errorhandler(HTTPException)(problems.http_error)
    app.errorhandler(Exception)(problems.unexpected_error)
    app.asgi_app = RequestTelemetry(  # type: ignore[method-assign]
        app.asgi_app, metrics, releaser or MemoryReleaser.for_platform()
    )
    return app


def watch(collector: Collector, metrics: Metrics) -> None:
    """Let the metrics follow the collector's breakers, declared ids and outcomes."""
    metrics.watch_breakers(collector.breaker_states)
    metrics.watch_ids(collector.declared.states)
    collector.add_observer(metrics.observe)
    collector.add_replica_observer(metrics.observe_replica)
