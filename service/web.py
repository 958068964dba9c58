"""HTTP layer: the Quart-Trio application and its wire formats.

Routes::

    GET /collect-data   every row of every source that answered, sorted by id

Every error the client can cause is answered with an RFC 9457 problem document
(``application/problem+json``); nothing the client sends can produce a stack trace.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import Any

from quart import request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from service.core import Collector, Outcome, Row

log = logging.getLogger("collector.http")

PROBLEM_JSON = "application/problem+json"
JSON = "application/json"

ResponseTuple = tuple[str, int, dict[str, str]]


def create_app(collector: Collector) -> QuartTrio:
    """The ASGI app serving ``collector``; it owns no resources of its own."""
    app = QuartTrio("collector")

    @app.get("/collect-data")
    async def collect_data() -> ResponseTuple:
        """Every row of every source that answered within the deadline."""
        unknown = sorted(request.args.keys())
        if unknown:
            return problem(
                HTTPStatus.BAD_REQUEST,
                f"Unknown query parameter {unknown[0]!r}: /collect-data takes no parameters.",
                invalid_params=[{"name": name, "reason": "unknown parameter"} for name in unknown],
            )
        collection = await collector.collect()
        headers = {"Content-Type": JSON, "Server-Timing": server_timing(collection.outcomes)}
        return rows_json(collection.rows), HTTPStatus.OK, headers

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> ResponseTuple:
        status = HTTPStatus(error.code or HTTPStatus.INTERNAL_SERVER_ERROR)
        response = problem(status, error.description or status.phrase)
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            response[2]["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(Exception)
    async def unexpected_error(error: Exception) -> ResponseTuple:
        log.exception("unhandled error while serving %s %s", request.method, request.path)
        return problem(HTTPStatus.INTERNAL_SERVER_ERROR, "The request could not be completed.")

    return app


def rows_json(rows: Iterable[Row]) -> str:
    """The response body the product promises: ``[{"id": 1, "name": "Test 1"}, ...]``."""
    return json.dumps([{"id": row.id, "name": row.name} for row in rows], separators=(",", ":"))


def server_timing(outcomes: Sequence[Outcome]) -> str:
    """A W3C Server-Timing value with one metric per source (duration in ms)."""
    return ", ".join(
        f'{o.source};dur={o.duration * 1000:.1f};desc="{o.status.value}"' for o in outcomes
    )


def problem(status: HTTPStatus, detail: str, **extensions: Any) -> ResponseTuple:
    """An RFC 9457 problem response."""
    body = {"type": "about:blank", "title": status.phrase, "status": int(status), "detail": detail}
    body.update(extensions)
    return json.dumps(body), int(status), {"Content-Type": PROBLEM_JSON}
