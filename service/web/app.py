"""The Quart-Trio application: routes, content negotiation, request telemetry.

Routes::

    GET /collect-data   every row of every source that answered, sorted by id
    GET /livez          the process is alive (no dependency is checked)
    GET /readyz         per-source reachability; 503 only when no source answers
    GET /metrics        Prometheus text format

Every error the client can cause is answered with an RFC 9457 problem document;
nothing the client sends can produce a stack trace.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from http import HTTPStatus
from typing import Any

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from quart import request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from service.core import Collector
from service.logs import request_fields, request_id
from service.web import formats
from service.web.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from service.web.metrics import Metrics

log = logging.getLogger("collector.http")
access_log = logging.getLogger("collector.access")

REQUEST_ID_HEADER = "X-Request-Id"
# A client's request id is echoed only if it is short and harmless in a log line.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

Reply = tuple[str | bytes, int, dict[str, str]]


def create_app(collector: Collector, metrics: Metrics | None = None) -> QuartTrio:
    """The ASGI app serving ``collector``; it owns no connections of its own."""
    metrics = metrics or Metrics()
    metrics.watch_breakers(collector.breaker_states)
    collector.add_observer(metrics.observe)
    app = QuartTrio("collector")
    app.extensions["metrics"] = metrics

    @app.get("/collect-data")
    async def collect_data() -> Reply:
        """Every row of every source that answered within the deadline."""
        unknown = sorted(request.args.keys())
        if unknown:
            return formats.problem(
                HTTPStatus.BAD_REQUEST,
                f"Unknown query parameter {unknown[0]!r}: /collect-data takes no parameters.",
                invalid_params=[{"name": name, "reason": "unknown parameter"} for name in unknown],
            )
        media_type: str | None = formats.JSON
        if request.headers.get("Accept"):  # no Accept header means anything goes
            media_type = request.accept_mimetypes.best_match([formats.JSON, formats.ENVELOPE_JSON])
        if media_type is None:
            return formats.problem(
                HTTPStatus.NOT_ACCEPTABLE,
                f"/collect-data can answer with {formats.JSON} or {formats.ENVELOPE_JSON}.",
            )
        strict = formats.wants_strict(request.headers.getlist("Prefer"))
        collection = await collector.collect()
        fields = request_fields.get()
        if fields is not None:
            fields["complete"] = collection.complete
            fields["missing"] = list(collection.missing)
        headers = formats.collection_headers(collection)
        headers["Vary"] = "Accept, Prefer"
        if strict:
            headers["Preference-Applied"] = "handling=strict"
            if not collection.complete:
                body, status, problem_headers = formats.incomplete_problem(collection)
                return body, status, {**headers, **problem_headers}
        if media_type == formats.ENVELOPE_JSON:
            body = formats.envelope_json(collection)
        else:
            body = formats.rows_json(collection.rows)
        headers["Content-Type"] = media_type
        return body, HTTPStatus.OK, headers

    @app.get("/livez")
    async def livez() -> Reply:
        """The process is alive and serving HTTP; no dependency is consulted."""
        return json.dumps({"status": "alive"}), HTTPStatus.OK, {"Content-Type": formats.JSON}

    @app.get("/readyz")
    async def readyz() -> Reply:
        """Ready while at least one source answers; lists every source's reachability."""
        probes = await collector.probe()
        ready = any(p.reachable for p in probes)
        body = {
            "status": "ready" if ready else "unavailable",
            "sources": [formats.probe_json(p) for p in probes],
        }
        status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
        return json.dumps(body), status, {"Content-Type": formats.JSON}

    @app.get("/metrics")
    async def metrics_endpoint() -> Reply:
        """Prometheus metrics."""
        return metrics.render(), HTTPStatus.OK, {"Content-Type": METRICS_CONTENT_TYPE}

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Reply:
        status = HTTPStatus(error.code or HTTPStatus.INTERNAL_SERVER_ERROR)
        body, code, headers = formats.problem(status, error.description or status.phrase)
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            headers["Allow"] = ", ".join(error.valid_methods)
        return body, code, headers

    @app.errorhandler(Exception)
    async def unexpected_error(error: Exception) -> Reply:
        log.exception("unhandled error while serving %s %s", request.method, request.path)
        return formats.problem(
            HTTPStatus.INTERNAL_SERVER_ERROR, "The request could not be completed."
        )

    app.asgi_app = RequestTelemetry(app.asgi_app, metrics)  # type: ignore[method-assign]
    return app


class RequestTelemetry:
    """ASGI middleware: request id, in-flight gauge, response counter, one access line.

    It wraps the whole app rather than using request hooks so that the in-flight
    gauge is decremented even when the client disconnects and Hypercorn cancels
    the request, which skips Quart's after-request hooks.
    """

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        """Serve one ASGI connection, measuring it if it is an HTTP request."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        offered = headers.get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
        rid = offered if _CLIENT_REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
        token = request_id.set(rid)
        fields: dict[str, object] = {}
        fields_token = request_fields.set(fields)
        start = trio.current_time()
        code = 0

        async def send_with_id(message: Any) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", []),
                        (REQUEST_ID_HEADER.encode(), rid.encode()),
                    ],
                }
            await send(message)

        self._metrics.in_flight.inc()
        try:
            await self._app(scope, receive, send_with_id)
        finally:
            self._metrics.in_flight.dec()
            if code:
                self._metrics.responses.labels(str(code)).inc()
            access_log.info(
                "%s %s %s",
                scope["method"],
                scope["path"],
                code or "disconnected",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status_code": code or None,
                    "duration_ms": round((trio.current_time() - start) * 1000, 1),
                    **fields,
                },
            )
            request_fields.reset(fields_token)
            request_id.reset(token)
