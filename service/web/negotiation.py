"""Content negotiation: the media type from ``Accept``, strictness from ``Prefer``."""

from __future__ import annotations

from quart import Request

from service.core import Answer
from service.web import formats
from service.web.problems import Reply

#: Media types every data route can answer with; a route may offer more.
MEDIA_TYPES = (formats.JSON, formats.ENVELOPE_JSON)
VARY = "Accept, Prefer"


def offered(*extra: str) -> tuple[str, ...]:
    """The media types a route answers with, preferred first."""
    return (*MEDIA_TYPES, *extra)


def negotiate(request: Request, *extra: str) -> str | None:
    """The media type to answer with, from the Accept header (None: none fits)."""
    if not request.headers.get("Accept"):  # no Accept header means anything goes
        return formats.JSON
    return request.accept_mimetypes.best_match(offered(*extra))


def strict_problem(request: Request, collection: Answer, headers: dict[str, str]) -> Reply | None:
    """The 503 that ``Prefer: handling=strict`` turns an incomplete answer into, if any.

    Marks ``headers`` as varying on Prefer and, when strictness was asked for,
    as having applied it (RFC 7240), whatever the answer.
    """
    headers["Vary"] = VARY
    if not formats.wants_strict(request.headers.getlist("Prefer")):
        return None
    headers["Preference-Applied"] = "handling=strict"
    if collection.complete:
        return None
    body, status, problem_headers = formats.incomplete_problem(collection)
    return body, status, {**headers, **problem_headers}
