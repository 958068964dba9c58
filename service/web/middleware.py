"""ASGI middleware around the whole app: request id, head-size limit, telemetry.

It wraps the ASGI callable rather than using Quart's request hooks so that the
in-flight gauge is decremented and the access line written even when the client
disconnects and Hypercorn cancels the request, which skips after-request hooks.
"""

from __future__ import annotations

import logging
import re
import uuid
from http import HTTPStatus

import trio
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    ASGISendEvent,
    HTTPResponseStartEvent,
    HTTPScope,
    Scope,
)

from service.core import tracing
from service.core.tracing import Tracer
from service.logs import request_fields, request_id
from service.runtime.memory import MemoryReleaser
from service.runtime.writeguard import connection_writes
from service.web import formats
from service.web.metrics import Metrics

access_log = logging.getLogger("collector.access")

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID_NAME = REQUEST_ID_HEADER.lower().encode()
# A client's request id is echoed only if it is short and harmless in a log line.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

#: Bytes the request line and headers of one request may take together. Hypercorn's
#: h11 limit only applies to a head that arrives in pieces, so it is enforced here.
MAX_REQUEST_HEAD = 16 * 1024


def request_head_size(scope: HTTPScope) -> int:
    """Roughly the size of the request line and headers as they came in."""
    size = len(scope["raw_path"] or b"") + len(scope["query_string"] or b"") + 16
    return size + sum(len(name) + len(value) + 4 for name, value in scope["headers"])


def client_request_id(scope: HTTPScope) -> str:
    """The client's X-Request-Id if it is safe to log, else a fresh one."""
    offered = dict(scope["headers"]).get(_REQUEST_ID_NAME, b"").decode("latin-1")
    return offered if _CLIENT_REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex


async def send_problem(send: ASGISendCallable, status: HTTPStatus, detail: str) -> None:
    """Answer with a problem document straight through ASGI (before the app runs)."""
    body, code, headers = formats.problem(status, detail)
    encoded = body.encode()
    content_type = headers["Content-Type"].encode()
    await send(
        {
            "type": "http.response.start",
            "status": code,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(encoded)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": encoded, "more_body": False})


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


class Exchange:
    """One request's answer as it goes out: its status, bytes sent, whether it ended."""

    def __init__(self, send: ASGISendCallable, rid: str) -> None:
        self._send = send
        self.rid = rid
        self.code = 0
        self.sent = 0
        self.finished = False

    async def send(self, message: ASGISendEvent) -> None:
        """Pass ``message`` on, adding the request id to the response head."""
        if message["type"] == "http.response.start":
            self.code = message["status"]
            message = with_request_id(message, self.rid)
        elif message["type"] == "http.response.body":
            self.sent += len(message.get("body", b""))
        # Hypercorn finishes the request inside this call: after the last body
        # chunk it queues http.disconnect for the app, then closes the socket
        # (Connection: close, HTTP/1.0) or re-arms the keep-alive timer. Quart-Trio
        # cancels the request as soon as it reads that disconnect, which would
        # abort the rest of this call at its next checkpoint and leave the socket
        # open until the client closes it. Hypercorn shields the socket write
        # itself, so the shield adds no wait that could not end.
        with trio.CancelScope(shield=True):
            await self._send(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            self.finished = True


def with_request_id(message: HTTPResponseStartEvent, rid: str) -> HTTPResponseStartEvent:
    """The response head with ``X-Request-Id`` added."""
    headers = [*message.get("headers", []), (_REQUEST_ID_NAME, rid.encode())]
    return {**message, "headers": headers}


class RequestTelemetry:
    """ASGI middleware: request id, in-flight gauge, response counter, one access line."""

    def __init__(self, app: ASGIFramework, metrics: Metrics, releaser: MemoryReleaser) -> None:
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
        exchange = Exchange(send, client_request_id(scope))
        token = request_id.set(exchange.rid)
        fields: dict[str, object] = {}
        fields_token = request_fields.set(fields)
        start = trio.current_time()
        self._metrics.in_flight.inc()
        tracer = tracing.active()
        try:
            if tracer is None:
                await self._serve(scope, receive, exchange)
            else:
                await self._traced(tracer, scope, receive, exchange, fields)
        finally:
            self._metrics.in_flight.dec()
            if exchange.code:
                self._metrics.responses.labels(str(exchange.code)).inc()
            log_access(scope, exchange, fields, trio.current_time() - start)
            request_fields.reset(fields_token)
            request_id.reset(token)
            await self._releaser.answered(exchange.sent)  # the app returned: body freed

    async def _traced(
        self,
        tracer: Tracer,
        scope: HTTPScope,
        receive: ASGIReceiveCallable,
        exchange: Exchange,
        fields: dict[str, object],
    ) -> None:
        """``_serve`` inside the request's span, whose parent is the client's ``traceparent``."""
        carrier = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        attributes = {
            "http.request.method": scope["method"],
            "url.path": scope["path"],
            "http.route": route_of(scope["path"]),
            "collector.request_id": exchange.rid,
        }
        name = f"{scope['method']} {attributes['http.route']}"
        with tracer.span(name, attributes, carrier=carrier, server=True) as traced:
            try:
                await self._serve(scope, receive, exchange)
            finally:
                if exchange.code:
                    traced.set("http.response.status_code", exchange.code)
                    if exchange.code >= HTTPStatus.INTERNAL_SERVER_ERROR:
                        traced.fail(str(exchange.code))
                traced.set("collector.outcome", response_outcome(exchange.finished, fields))
                for key in ("complete", "wait"):
                    value = fields.get(key)
                    if isinstance(value, (bool, float)):
                        traced.set(f"collector.{key}", value)
                missing = fields.get("missing")
                if isinstance(missing, list) and missing:
                    traced.set("collector.missing", ",".join(map(str, missing)))

    async def _serve(
        self, scope: HTTPScope, receive: ASGIReceiveCallable, exchange: Exchange
    ) -> None:
        """The app's answer, unless the request head is too large to be served."""
        if request_head_size(scope) > MAX_REQUEST_HEAD:
            await send_problem(
                exchange.send,
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"The request line and headers exceed {MAX_REQUEST_HEAD} bytes.",
            )
        else:
            await self._app(scope, receive, exchange.send)


#: The routes, for span names: a path with an id in it must not name a span of its own.
ROUTES = ("/collect-data", "/livez", "/readyz", "/metrics", "/openapi.json", "/docs")


def route_of(path: str) -> str:
    """The route template a path belongs to (``/collect-data/{id}``), or ``other``."""
    if path in ROUTES:
        return path
    if path.startswith("/collect-data/"):
        return "/collect-data/{id}"
    if path.startswith("/docs/"):
        return "/docs/{name}"
    return "other"


def log_access(
    scope: HTTPScope, exchange: Exchange, fields: dict[str, object], duration: float
) -> None:
    """The one access line of a request, with how its answer ended."""
    code = exchange.code
    outcome = response_outcome(exchange.finished, fields)
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
            "duration_ms": round(duration * 1000, 1),
            **fields,
        },
    )
