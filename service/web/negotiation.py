"""Content negotiation: the media type from ``Accept``; strictness and a wait from ``Prefer``."""

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


def preferences(request: Request) -> formats.Preferences:
    """What the request's ``Prefer`` headers ask for (``handling=strict``, ``wait=N``)."""
    return formats.preferences(request.headers.getlist("Prefer"))


def strict_problem(
    prefs: formats.Preferences, collection: Answer, headers: dict[str, str]
) -> Reply | None:
    """The 503 that ``Prefer: handling=strict`` turns an incomplete answer into, if any.

    Marks ``headers`` as varying on Prefer and lists the preferences applied
    (RFC 7240: ``handling=strict``, ``wait=N``), whatever the answer.
    """
    headers["Vary"] = VARY
    applied = prefs.applied()
    if applied is not None:
        headers["Preference-Applied"] = applied
    if not prefs.strict or collection.complete:
        return None
    body, status, problem_headers = formats.incomplete_problem(collection)
    return body, status, {**headers, **problem_headers}
