"""Wire formats: bodies, headers and problem documents, free of any framework.

Completeness headers (RFC 8941 structured fields)::

    Collection-Complete: ?1                    every source answered
    Collection-Complete: ?0                    some rows are missing
    Collection-Missing: "source_2";status=timeout, "source_3";status=skipped

``Collection-Missing`` is a list of strings (source names) each with a ``status``
token parameter; it is present only when ``Collection-Complete`` is ``?0``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson

from service.core import Answer, Cursor, IdRanges, Outcome, Probe, Row
from service.web.params import cursor_params

JSON = "application/json"
PROBLEM_JSON = "application/problem+json"
#: Media type of the envelope form of /collect-data (asked for with ``Accept``).
ENVELOPE_JSON = "application/vnd.collector.envelope+json"
#: Media type of the streamed form: one row per line, then one summary line.
NDJSON = "application/x-ndjson"

COMPLETE_HEADER = "Collection-Complete"
MISSING_HEADER = "Collection-Missing"

Headers = dict[str, str]


# Rows are encoded with a byte template and orjson for the name only: the id is
# an int (checked when the row was read) and the name is the only part that needs
# JSON escaping. Measured here, that is ~0.25 us a row against ~3.5 us for
# orjson.dumps of a whole row object per NDJSON line.
_dumps = orjson.dumps


def row_json(row: Row) -> bytes:
    """One row as a JSON object: ``{"id":1,"name":"Test 1"}``."""
    return b'{"id":%d,"name":%b}' % (row.id, _dumps(row.name))


def rows_json(rows: Iterable[Row]) -> bytes:
    """The body the product promises: ``[{"id":1,"name":"Test 1"},...]``."""
    return b"[" + b",".join([b'{"id":%d,"name":%b}' % (i, _dumps(n)) for i, n in rows]) + b"]"


def ndjson_rows(rows: Iterable[Row]) -> bytes:
    """Rows as NDJSON: one object per line."""
    return b"".join([b'{"id":%d,"name":%b}\n' % (i, _dumps(n)) for i, n in rows])


def next_json(cursor: Cursor | None, limit: int | None, path: str) -> dict[str, Any] | None:
    """The next-page cursor as the envelope and the stream summary report it."""
    if cursor is None:
        return None
    return {
        "after": cursor.after,
        "behind": {name: position for name, position in cursor.behind},
        "href": next_href(path, limit, cursor) if limit is not None else None,
    }


def next_href(path: str, limit: int | None, cursor: Cursor) -> str:
    """The one place a next link is built: a page of ``limit``, or (None) the rest as a stream."""
    query = cursor_params(limit, cursor)
    return f"{path}?{query}" if query else path


def envelope_json(collection: Answer, limit: int | None = None, path: str = "") -> bytes:
    """The rows together with every source's outcome, for clients that want details."""
    rows = orjson.Fragment(rows_json(collection.rows))
    return orjson.dumps({"data": rows, **summary(collection, limit, path)})


def stream_summary(collection: Answer, limit: int | None, path: str) -> bytes:
    """The last line of an NDJSON stream: completeness per source, where to resume.

    ``interrupted`` says why a stream ended before its rows did (``"shutdown"``);
    ``next.href`` then resumes it as a stream of the rest.
    """
    body = summary(collection, limit, path)
    body["interrupted"] = collection.interrupted
    if collection.next is not None and body["next"]["href"] is None:
        body["next"]["href"] = next_href(path, None, collection.next)
    return orjson.dumps(body, option=orjson.OPT_APPEND_NEWLINE)


def summary(collection: Answer, limit: int | None, path: str) -> dict[str, Any]:
    """What the envelope and a stream's last line both say about a collection."""
    return {
        "complete": collection.complete,
        "missing_ids": ranges_json(collection.missing_ids),
        "sources": [outcome_json(outcome) for outcome in collection.outcomes],
        "next": next_json(collection.next, limit, path),
    }


def outcome_json(outcome: Outcome) -> dict[str, Any]:
    """One source's part of the envelope."""
    return {
        "name": outcome.source,
        "status": outcome.status.value,
        "rows": outcome.rows,
        "duration_ms": round(outcome.duration * 1000, 1),
        "error": outcome.error,
        "breaker": outcome.breaker.value,
        "missing_ids": ranges_json(outcome.missing_ids),
        "out_of_range": outcome.out_of_range,
        "replica": outcome.replica,
    }


def probe_json(probe: Probe) -> dict[str, Any]:
    """One source's part of the readiness report."""
    return {
        "name": probe.source,
        "status": probe.status.value,
        "reachable": probe.reachable,
        "duration_ms": round(probe.duration * 1000, 1),
        "error": probe.error,
        "breaker": probe.breaker.value,
        "ids": None if probe.ids is None else probe.ids.value,
    }


def ranges_json(ranges: IdRanges | None) -> list[list[int]] | None:
    """Id ranges as JSON pairs ``[[first, last], ...]``."""
    return None if ranges is None else [[first, last] for first, last in ranges]


def collection_headers(collection: Answer) -> Headers:
    """Server-Timing and the completeness headers for a collection."""
    headers = {
        "Server-Timing": server_timing(collection.outcomes),
        COMPLETE_HEADER: "?1" if collection.complete else "?0",
    }
    missing = [o for o in collection.outcomes if not o.status.answered]
    if missing:
        headers[MISSING_HEADER] = ", ".join(
            f"{sf_string(o.source)};status={o.status.value}" for o in missing
        )
    return headers


def server_timing(outcomes: Sequence[Outcome]) -> str:
    """A W3C Server-Timing value with one metric per source (duration in ms).

    A source with replicas names the one that answered in a ``replica`` parameter
    (its index: 0 for ``dsn``, then ``replicas`` in order), after ``desc``.
    """
    return ", ".join(
        f'{o.source};dur={o.duration * 1000:.1f};desc="{o.status.value}"'
        + ("" if o.replica is None else f";replica={o.replica}")
        for o in outcomes
    )


def replicas_answered(collection: Answer) -> dict[str, str]:
    """Which replica answered, for each source with replicas that answered (access line)."""
    return {o.source: o.replica for o in collection.outcomes if o.replica is not None}


def sf_string(text: str) -> str:
    """An RFC 8941 string item (source names never hold characters needing more)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


#: A ``wait`` value we honour: seconds, in plain decimal, fractions allowed (RFC 7240
#: writes whole seconds; ``wait=0.5`` is too useful to refuse).
_WAIT_VALUE = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9})?")


@dataclass(frozen=True, slots=True)
class Preferences:
    """What the client's ``Prefer`` headers (RFC 7240) ask for, of what we honour.

    ``strict``: ``handling=strict``, an incomplete answer becomes a 503.
    ``wait``: ``wait=N``, every source's deadline becomes at most what is left of N
    seconds; ``wait_text`` is N as the client wrote it, echoed when applied.
    """

    strict: bool = False
    wait: float | None = None
    wait_text: str | None = None

    def applied(self, *, strict: bool = True) -> str | None:
        """The ``Preference-Applied`` value (None: nothing applied); ``strict`` if it can be."""
        applied = []
        if strict and self.strict:
            applied.append("handling=strict")
        if self.wait_text is not None:
            applied.append(f"wait={self.wait_text}")
        return ", ".join(applied) or None


NO_PREFERENCES = Preferences()


def preferences(prefer_headers: Iterable[str]) -> Preferences:
    """The preferences we honour in ``Prefer`` headers; the first of each name counts.

    RFC 7240 section 2: a preference given twice is taken at its first instance. A
    ``wait`` that is not a positive number of seconds is ignored, as RFC 7240 says
    of a preference a server does not understand: the answer is as without it.
    """
    seen: dict[str, str] = {}
    for header in prefer_headers:
        for preference in header.split(","):
            token, _, value = preference.split(";")[0].strip().partition("=")
            name = token.strip().lower()
            if name and name not in seen:
                seen[name] = value.strip().strip('"')
    if not seen:
        return NO_PREFERENCES
    strict = seen.get("handling", "").lower() == "strict"
    text = seen.get("wait")
    if text is None or not _WAIT_VALUE.fullmatch(text) or float(text) <= 0:
        return Preferences(strict=strict) if strict else NO_PREFERENCES
    return Preferences(strict=strict, wait=float(text), wait_text=text)


def wants_strict(prefer_headers: Iterable[str]) -> bool:
    """Whether ``Prefer`` (RFC 7240) asks for ``handling=strict``."""
    return preferences(prefer_headers).strict


def incomplete_problem(collection: Answer) -> tuple[str, int, Headers]:
    """The 503 answer to a strict request whose result is incomplete."""
    failed = [o for o in collection.outcomes if not o.status.answered]
    listing = ", ".join(f"{o.source} ({o.status.value})" for o in failed)
    return problem(
        HTTPStatus.SERVICE_UNAVAILABLE,
        f"{len(failed)} of {len(collection.outcomes)} sources did not answer: {listing}",
        sources=[{"name": o.source, "status": o.status.value, "error": o.error} for o in failed],
        missing_ids=ranges_json(collection.missing_ids),
    )


def problem(status: HTTPStatus, detail: str, **extensions: Any) -> tuple[str, int, Headers]:
    """An RFC 9457 problem response: body, status code and headers."""
    body = {"type": "about:blank", "title": status.phrase, "status": int(status), "detail": detail}
    body.update(extensions)
    return json.dumps(body), int(status), {"Content-Type": PROBLEM_JSON}
