"""The Quart-Trio application: routes, content negotiation, request telemetry.

Routes::

    GET /collect-data        every row of every source that answered, sorted by id;
                             a page of them (limit, after); or an NDJSON stream
    GET /collect-data/{id}   the row with that id, from the sources that can hold it
    GET /livez          the process is alive (no dependency is checked)
    GET /readyz         per-source status and ids state; 503 when no source is ok
    GET /metrics        Prometheus text format
    GET /openapi.json   the OpenAPI description; GET /docs renders it (offline)

Every error the client can cause is answered with an RFC 9457 problem document;
nothing the client sends can produce a stack trace.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import aclosing
from http import HTTPStatus
from typing import Any

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope
from quart import Response, request
from quart_trio import QuartTrio
from swagger_ui_bundle import swagger_ui_path
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import PathConverter

from service.config import DEFAULT_MAX_CONCURRENT_REQUESTS, DEFAULT_RESPONSE_TIMEOUT
from service.core import Collection, Collector, Query
from service.core.coalesce import Coalescer
from service.logs import request_fields, request_id
from service.memory import MemoryReleaser
from service.web import formats, openapi
from service.web.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from service.web.metrics import Metrics
from service.web.params import ParamError, cursor_params, parse_id, parse_query
from service.writeguard import connection_writes

log = logging.getLogger("collector.http")
access_log = logging.getLogger("collector.access")

REQUEST_ID_HEADER = "X-Request-Id"
#: Rows per server-side cursor batch when streaming: memory is bounded by the
#: number of sources times this, while each batch is large enough that the
#: round trip to the database is amortised over many rows.
STREAM_BATCH = 5000
# A client's request id is echoed only if it is short and harmless in a log line.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

Reply = tuple[str | bytes, int, dict[str, str]]


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
    collect = coalescer.collect if coalescer is not None else collector.collect
    metrics.watch_breakers(collector.breaker_states)
    metrics.watch_ids(collector.declared.states)
    collector.add_observer(metrics.observe)
    app = QuartTrio("collector")
    app.config["RESPONSE_TIMEOUT"] = response_timeout
    app.extensions["metrics"] = metrics
    # Werkzeug would answer "//" in a path with a redirect whose Location is built
    # from the client's Host header; such a path is simply not one of ours.
    app.url_map.merge_slashes = False
    app.url_map.converters["segment"] = AnySegment

    source_names = frozenset(s.name for s in collector.sources)
    bodies = BodyCache()
    admission = Admission(max_concurrent)
    expected = api_token.encode() if api_token else None

    @app.before_request
    async def authenticate() -> Reply | None:
        """Data endpoints and metrics need the bearer token, when one is configured."""
        if expected is None or not needs_token(request.path):
            return None
        scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(offered.encode(), expected):
            return None
        body, status, headers = formats.problem(
            HTTPStatus.UNAUTHORIZED, "This endpoint needs 'Authorization: Bearer <token>'."
        )
        headers["WWW-Authenticate"] = 'Bearer realm="collector"'
        return body, status, headers

    spec = openapi.openapi_document([s.name for s in collector.sources])

    @app.get("/collect-data")
    async def collect_data() -> Reply | Response:
        """Every row of every source that answered, or a page of them, or a stream."""
        try:
            query = parse_query(request.args.items(multi=True), source_names)
        except ParamError as error:
            return bad_param(error)
        media_type = negotiate(formats.NDJSON)
        if media_type is None:
            return not_acceptable(formats.NDJSON)
        if media_type == formats.NDJSON:
            if not admission.enter():
                return overloaded()
            return ndjson_response(query)
        collection = await admitted_collect(query)
        if collection is None:
            return overloaded()
        headers = formats.collection_headers(collection)
        if collection.next is not None and query.limit is not None:
            link = f"{request.path}?{cursor_params(query.limit, collection.next)}"
            headers["Link"] = f'<{link}>; rel="next"'
        strict = strict_problem(collection, headers)
        if strict is not None:
            return strict
        if media_type == formats.ENVELOPE_JSON:
            body = formats.envelope_json(collection, query.limit, request.path)
        else:
            body = bodies.rows_json(collection)
        headers["Content-Type"] = media_type
        return body, HTTPStatus.OK, headers

    @app.get("/collect-data/<segment:row_id>")
    async def collect_one(row_id: str) -> Reply:
        """The row with one id, asking only the sources whose declared ranges hold it."""
        try:
            wanted = parse_id(row_id)
        except ParamError as error:
            return bad_param(error)
        if request.args:
            return bad_param(ParamError(next(iter(request.args)), "unknown parameter"))
        media_type = negotiate()
        if media_type is None:
            return not_acceptable()
        collection = await admitted_collect(Query(after=wanted - 1, until=wanted))
        if collection is None:
            return overloaded()
        headers = formats.collection_headers(collection)
        strict = strict_problem(collection, headers)
        if strict is not None:
            return strict
        if not collection.rows:
            if collection.complete:
                status, detail = HTTPStatus.NOT_FOUND, f"No source holds a row with id {wanted}."
            else:
                status = HTTPStatus.SERVICE_UNAVAILABLE
                detail = (
                    f"No row with id {wanted} was found, but "
                    f"{', '.join(collection.missing)} did not answer and may hold it."
                )
            body, code, problem_headers = formats.problem(
                status,
                detail,
                sources=[formats.outcome_json(o) for o in collection.outcomes],
            )
            return body, code, {**headers, **problem_headers}
        if media_type == formats.ENVELOPE_JSON:
            found = formats.envelope_json(collection, None, request.path)
        else:
            found = formats.row_json(collection.rows[0])
        headers["Content-Type"] = media_type
        return found, HTTPStatus.OK, headers

    def negotiate(*extra: str) -> str | None:
        """The media type to answer with, from the Accept header (None: none fits)."""
        if not request.headers.get("Accept"):  # no Accept header means anything goes
            return formats.JSON
        offered = [formats.JSON, formats.ENVELOPE_JSON, *extra]
        return request.accept_mimetypes.best_match(offered)

    def not_acceptable(*extra: str) -> Reply:
        offered = ", ".join([formats.JSON, formats.ENVELOPE_JSON, *extra])
        return formats.problem(
            HTTPStatus.NOT_ACCEPTABLE, f"{request.path} can answer with: {offered}."
        )

    def overloaded() -> Reply:
        body, status, headers = formats.problem(
            HTTPStatus.SERVICE_UNAVAILABLE,
            f"Too many requests in progress (at most {max_concurrent}); retry shortly.",
        )
        headers["Retry-After"] = "1"
        return body, status, headers

    def bad_param(error: ParamError) -> Reply:
        return formats.problem(
            HTTPStatus.BAD_REQUEST,
            f"Invalid parameter {error.name!r}: {error.reason}.",
            invalid_params=[{"name": error.name, "reason": error.reason}],
        )

    async def admitted_collect(query: Query) -> Collection | None:
        """The collection, or None when the admission cap is reached (answer 503)."""
        if not admission.enter():
            return None
        try:
            collection = await collect(query)
        finally:
            admission.leave()
        fields = request_fields.get()  # what the access line reports
        if fields is not None:
            fields["complete"] = collection.complete
            fields["missing"] = list(collection.missing)
        return collection

    def strict_problem(collection: Collection, headers: dict[str, str]) -> Reply | None:
        headers["Vary"] = "Accept, Prefer"
        if not formats.wants_strict(request.headers.getlist("Prefer")):
            return None
        headers["Preference-Applied"] = "handling=strict"
        if collection.complete:
            return None
        body, status, problem_headers = formats.incomplete_problem(collection)
        return body, status, {**headers, **problem_headers}

    def ndjson_response(query: Query) -> Response:
        limit = query.limit
        path = request.path

        fields = request_fields.get()

        async def lines() -> AsyncIterator[bytes]:
            try:
                stream = collector.stream(query, STREAM_BATCH, stop=draining)
                async with aclosing(stream) as items:
                    async for item in items:
                        if isinstance(item, Collection):
                            if fields is not None:
                                fields["complete"] = item.complete
                                fields["interrupted"] = item.interrupted
                            yield formats.stream_summary(item, limit, path)
                        else:
                            yield formats.ndjson_rows(item)
            finally:
                admission.leave()

        response = Response(
            lines(),
            status=HTTPStatus.OK,
            content_type=formats.NDJSON,
            headers={"Vary": "Accept, Prefer", "Cache-Control": "no-store"},
        )
        # Quart would cut the body at RESPONSE_TIMEOUT, mid-stream and without the
        # summary; a stream runs as long as its client reads (the write guard
        # disconnects a client that stops) and every batch has its own deadline.
        response.timeout = None
        return response

    @app.get("/livez")
    async def livez() -> Reply:
        """The process is alive and serving HTTP; no dependency is consulted."""
        return json.dumps({"status": "alive"}), HTTPStatus.OK, {"Content-Type": formats.JSON}

    @app.get("/readyz")
    async def readyz() -> Reply:
        """Ready while at least one source answers and is not skipped; lists each one.

        Each ping has the short probe deadline, so a black-holed source cannot
        hold the answer longer than a readiness probe waits.
        """
        probes = await collector.probe()
        ready = any(p.reachable for p in probes)
        body = {
            "status": "ready" if ready else "unavailable",
            "sources": [formats.probe_json(p) for p in probes],
        }
        status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
        return json.dumps(body), status, {"Content-Type": formats.JSON}

    @app.get("/openapi.json")
    async def openapi_json() -> Reply:
        """The OpenAPI description of this API."""
        return json.dumps(spec), HTTPStatus.OK, {"Content-Type": formats.JSON}

    @app.get("/docs")
    async def docs() -> Reply:
        """Interactive docs (Swagger UI), with every asset served from here."""
        return openapi.DOCS_HTML, HTTPStatus.OK, {"Content-Type": "text/html; charset=utf-8"}

    @app.get("/docs/init.js")
    async def docs_init() -> Reply:
        return openapi.DOCS_INIT_JS, HTTPStatus.OK, {"Content-Type": "text/javascript"}

    @app.get("/docs/<name>")
    async def docs_asset(name: str) -> Reply:
        if name not in openapi.DOCS_ASSETS:
            return formats.problem(HTTPStatus.NOT_FOUND, f"No docs asset {name[:64]!r}.")
        content = (swagger_ui_path / name).read_bytes()
        headers = {"Content-Type": openapi.DOCS_ASSETS[name], "Cache-Control": "max-age=86400"}
        return content, HTTPStatus.OK, headers

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

    app.asgi_app = RequestTelemetry(  # type: ignore[method-assign]
        app.asgi_app, metrics, releaser or MemoryReleaser.for_platform()
    )
    return app


class AnySegment(PathConverter):
    """Everything after the prefix, control characters included.

    Werkzeug's ``path`` pattern stops at a newline, so ``/collect-data/%0a1`` would
    be an unknown path (a generic 404) rather than the bad id it is (a 400).
    """

    regex = "(?s:.+)"


def needs_token(path: str) -> bool:
    """Data and metrics need the token; probes, the API description and docs do not.

    /livez and /readyz must answer the orchestrator's probes, which carry no
    token; /readyz reveals only source names and reachability.
    """
    return path == "/collect-data" or path.startswith("/collect-data/") or path == "/metrics"


class Admission:
    """Counts data requests in progress; beyond the cap they are refused, not queued."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_progress = 0

    def enter(self) -> bool:
        """Admit one more request if under the cap."""
        if self.in_progress >= self.limit:
            return False
        self.in_progress += 1
        return True

    def leave(self) -> None:
        """An admitted request has finished."""
        self.in_progress -= 1


class BodyCache:
    """Encodes each collection's body once, however many requests share it.

    Coalesced requests receive the very same Collection object; the cache holds
    the last few by identity (a collection is never mutated once made). It is
    bounded by bytes, not only by count: an entry keeps its collection's rows
    alive, so a large answer is never kept, and the small ones it is for (a
    coalesced group shares one body) stay within ``MAX_BYTES`` in all.
    """

    SIZE = 8
    #: Largest body kept. Coalescing pays off for the many small, identical
    #: answers of a busy service; a large answer is encoded once per request.
    MAX_BODY = 64 * 1024
    #: Bodies kept in all (their rows take a few times as much again).
    MAX_BYTES = 256 * 1024

    def __init__(self) -> None:
        self._entries: deque[tuple[Collection, bytes]] = deque()
        self._bytes = 0

    def rows_json(self, collection: Collection) -> bytes:
        """The bare-list body of ``collection``."""
        for cached, body in self._entries:
            if cached is collection:
                return body
        body = formats.rows_json(collection.rows)
        if len(body) <= self.MAX_BODY:
            self._entries.append((collection, body))
            self._bytes += len(body)
            while len(self._entries) > self.SIZE or self._bytes > self.MAX_BYTES:
                self._bytes -= len(self._entries.popleft()[1])
        return body

    @property
    def held_bytes(self) -> int:
        """Bytes of the bodies kept now."""
        return self._bytes


#: Bytes the request line and headers of one request may take together. Hypercorn's
#: h11 limit only applies to a head that arrives in pieces, so it is enforced here.
MAX_REQUEST_HEAD = 16 * 1024


def request_head_size(scope: HTTPScope) -> int:
    """Roughly the size of the request line and headers as they came in."""
    size = len(scope["raw_path"] or b"") + len(scope["query_string"] or b"") + 16
    return size + sum(len(name) + len(value) + 4 for name, value in scope["headers"])


async def send_problem(send: Any, status: HTTPStatus, detail: str) -> None:
    """Answer with a problem document straight through ASGI (before the app runs)."""
    body, code, headers = formats.problem(status, detail)
    encoded = body.encode()
    await send(
        {
            "type": "http.response.start",
            "status": code,
            "headers": [
                (b"content-type", headers["Content-Type"].encode()),
                (b"content-length", str(len(encoded)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": encoded})


def response_outcome(finished: bool, fields: dict[str, object]) -> str:
    """How the answer ended, for the access line.

    ``sent`` (the whole body), ``interrupted`` (a stream ended early at shutdown,
    its summary saying so), ``stalled`` (the client accepted nothing for the
    idle limit and was disconnected), ``shutdown`` (a write still blocked when the
    shutdown grace ended was abandoned) or ``disconnected`` (the client went away).
    """
    writes = connection_writes.get()
    if writes is not None and writes.cut is not None:
        return writes.cut
    if finished:
        return "interrupted" if fields.get("interrupted") else "sent"
    return "disconnected"


class RequestTelemetry:
    """ASGI middleware: request id, in-flight gauge, response counter, one access line.

    It wraps the whole app rather than using request hooks so that the in-flight
    gauge is decremented even when the client disconnects and Hypercorn cancels
    the request, which skips Quart's after-request hooks.
    """

    def __init__(self, app: Any, metrics: Metrics, releaser: MemoryReleaser) -> None:
        self._app = app
        self._metrics = metrics
        self._releaser = releaser

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
        finished = False
        sent = 0

        async def send_with_id(message: Any) -> None:
            nonlocal code, finished, sent
            if message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            if message["type"] == "http.response.start":
                code = message["status"]
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", []),
                        (REQUEST_ID_HEADER.lower().encode(), rid.encode()),
                    ],
                }
            # Hypercorn finishes the request inside this call: after the last body
            # chunk it queues http.disconnect for the app, then closes the socket
            # (Connection: close, HTTP/1.0) or re-arms the keep-alive timer. Quart-Trio
            # cancels the request as soon as it reads that disconnect, which would
            # abort the rest of this call at its next checkpoint and leave the socket
            # open until the client closes it. Hypercorn shields the socket write
            # itself, so the shield adds no wait that could not end.
            with trio.CancelScope(shield=True):
                await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                finished = True

        self._metrics.in_flight.inc()
        try:
            if request_head_size(scope) > MAX_REQUEST_HEAD:
                await send_problem(
                    send_with_id,
                    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                    f"The request line and headers exceed {MAX_REQUEST_HEAD} bytes.",
                )
            else:
                await self._app(scope, receive, send_with_id)
        finally:
            self._metrics.in_flight.dec()
            if code:
                self._metrics.responses.labels(str(code)).inc()
            outcome = response_outcome(finished, fields)
            access_log.info(
                "%s %s %s%s",
                scope["method"],
                scope["path"],
                code or "disconnected",
                "" if outcome == "sent" or not code else f" {outcome}",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status_code": code or None,
                    "outcome": outcome,
                    "duration_ms": round((trio.current_time() - start) * 1000, 1),
                    **fields,
                },
            )
            request_fields.reset(fields_token)
            request_id.reset(token)
            await self._releaser.answered(sent)  # the app has returned: the body is freed
