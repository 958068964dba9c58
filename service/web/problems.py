"""The problem answers (RFC 9457) the routes give, one function per situation.

Each returns a Quart reply tuple, so a route returns it as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus

from quart import request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from service.core import Answer
from service.web import formats
from service.web.params import ParamError

log = logging.getLogger("collector.http")

Reply = tuple[str | bytes, int, dict[str, str]]


def bad_param(error: ParamError) -> Reply:
    """400 naming the parameter and why it was refused."""
    return formats.problem(
        HTTPStatus.BAD_REQUEST,
        f"Invalid parameter {error.name!r}: {error.reason}.",
        invalid_params=[{"name": error.name, "reason": error.reason}],
    )


def not_acceptable(path: str, offered: Sequence[str]) -> Reply:
    """406 listing the media types ``path`` can answer with."""
    return formats.problem(
        HTTPStatus.NOT_ACCEPTABLE, f"{path} can answer with: {', '.join(offered)}."
    )


def overloaded(limit: int) -> Reply:
    """503 with Retry-After: the cap on requests in progress is reached."""
    body, status, headers = formats.problem(
        HTTPStatus.SERVICE_UNAVAILABLE,
        f"Too many requests in progress (at most {limit}); retry shortly.",
    )
    headers["Retry-After"] = "1"
    return body, status, headers


def unauthorized() -> Reply:
    """401 with the challenge that says which scheme is expected."""
    body, status, headers = formats.problem(
        HTTPStatus.UNAUTHORIZED, "This endpoint needs 'Authorization: Bearer <token>'."
    )
    headers["WWW-Authenticate"] = 'Bearer realm="collector"'
    return body, status, headers


def absent_row(wanted: int, collection: Answer) -> Reply:
    """No row with id ``wanted``: 404 if that is certain, 503 if a silent source may hold it.

    A 404 is a claim that the row does not exist; it is only made when every
    source that could hold the id answered.
    """
    if collection.complete:
        status, detail = HTTPStatus.NOT_FOUND, f"No source holds a row with id {wanted}."
    else:
        status = HTTPStatus.SERVICE_UNAVAILABLE
        detail = (
            f"No row with id {wanted} was found, but "
            f"{', '.join(collection.missing)} did not answer and may hold it."
        )
    sources = [formats.outcome_json(o) for o in collection.outcomes]
    return formats.problem(status, detail, sources=sources)


async def http_error(error: HTTPException) -> Reply:
    """Werkzeug's routing errors (404, 405, ...) as problem documents."""
    status = HTTPStatus(error.code or HTTPStatus.INTERNAL_SERVER_ERROR)
    body, code, headers = formats.problem(status, error.description or status.phrase)
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        headers["Allow"] = ", ".join(error.valid_methods)
    return body, code, headers


async def unexpected_error(error: Exception) -> Reply:
    """A bug: logged with its trace, answered with a 500 that reveals nothing."""
    log.exception("unhandled error while serving %s %s", request.method, request.path)
    return formats.problem(HTTPStatus.INTERNAL_SERVER_ERROR, "The request could not be completed.")
