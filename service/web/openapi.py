"""The OpenAPI 3.0 description of the HTTP API, and the offline docs page.

Written by hand, from small pieces (schemas, parameters, responses, one function
per operation), so that it says exactly what the routes do: the parameter bounds
are the validator's own constants, and a schemathesis run in the test suite
checks the server against it. The docs page is Swagger UI from the
``swagger-ui-bundle`` package, served by this app: it works without internet.

Not generated with quart-schema: its code is loop-agnostic Quart (nothing in it
ties it to asyncio), but neither its documentation nor its tests cover
Quart-Trio, and what it would generate is the smaller part of this contract. It
derives a document from pydantic models of JSON bodies, while this API's
contract is mostly elsewhere: the Collection-* and Server-Timing headers, Link,
the Prefer preference, NDJSON and problem+json media types. It would also
replace the app's JSON provider and wrap every response on the hot path, and
its docs page loads Swagger UI from a CDN by default.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from service.web import formats
from service.web.params import MAX_ID, MAX_LIMIT, MIN_ID

#: A fragment of the document (JSON: the values are of every kind).
Json = dict[str, Any]

#: Swagger UI's files that the docs page loads; everything else is not served.
DOCS_ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
}

DOCS_HTML = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>collector API</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script src="/docs/init.js"></script>
</body>
</html>
"""

DOCS_INIT_JS = 'window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});\n'


def ref(schema: str) -> Json:
    """A reference to one of the named schemas under components."""
    return {"$ref": f"#/components/schemas/{schema}"}


def string(description: str | None = None) -> Json:
    """A plain string schema, with what it holds."""
    schema: Json = {"type": "string"}
    if description is not None:
        schema["description"] = description
    return schema


def integer(minimum: int, maximum: int) -> Json:
    """An integer schema with inclusive bounds."""
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


def parameter(name: str, where: str, schema: Json, description: str | None = None) -> Json:
    """One parameter; only path parameters are required."""
    param: Json = {"name": name, "in": where, "required": where == "path"}
    if description is not None:
        param["description"] = description
    param["schema"] = schema
    return param


def header(description: str, schema: Json | None = None) -> Json:
    """One response header."""
    return {"description": description, "schema": schema or string()}


def content(schemas: dict[str, Json]) -> Json:
    """The ``content`` of a response: a schema per media type."""
    return {media_type: {"schema": schema} for media_type, schema in schemas.items()}


def problem(description: str) -> Json:
    """A response whose body is an RFC 9457 problem document."""
    return {"description": description, "content": content({formats.PROBLEM_JSON: ref("Problem")})}


def plain(description: str) -> Json:
    """A response described in words only."""
    return {"description": description}


_ROW = {
    "type": "object",
    "required": ["id", "name"],
    "properties": {
        "id": {"type": "integer", "format": "int64"},
        "name": {"type": "string", "nullable": True, "maxLength": 255},
    },
}
_RANGES = {
    "type": "array",
    "nullable": True,
    "items": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
    "description": "Inclusive id ranges [first, last]; null when unknown.",
}
_STATUS = {"type": "string", "enum": ["ok", "timeout", "error", "skipped", "pruned"]}
_OUTCOME = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "status": _STATUS,
        "rows": {"type": "integer"},
        "duration_ms": {"type": "number"},
        "error": {"type": "string", "nullable": True},
        "breaker": {"type": "string", "enum": ["closed", "half_open", "open"]},
        "missing_ids": _RANGES,
        "out_of_range": {"type": "integer"},
        "replica": {
            "type": "string",
            "nullable": True,
            "description": "Which replica answered (0: dsn, then replicas in order); "
            "null for a source with one server or without an answer.",
        },
    },
}
_NEXT = {
    "type": "object",
    "nullable": True,
    "description": "Where the next page starts; null when nothing is left.",
    "properties": {
        "after": {"type": "integer", "nullable": True},
        "behind": {"type": "object", "additionalProperties": {"type": "integer", "nullable": True}},
        "href": {"type": "string", "nullable": True},
    },
}
_ENVELOPE = {
    "type": "object",
    "properties": {
        "data": {"type": "array", "items": {"$ref": "#/components/schemas/Row"}},
        "complete": {"type": "boolean"},
        "missing_ids": _RANGES,
        "sources": {"type": "array", "items": {"$ref": "#/components/schemas/Outcome"}},
        "next": _NEXT,
    },
}
_PROBLEM = {
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
    "additionalProperties": True,
}
_COLLECTION_HEADERS = {
    "Server-Timing": header('One entry per source: <source>;dur=<ms>;desc="<status>".'),
    "Collection-Complete": header(
        "RFC 8941 boolean: ?1 if every source answered, else ?0.",
        {"type": "string", "enum": ["?1", "?0"]},
    ),
    "Collection-Missing": header('Sources whose rows are absent: "name";status=<status>, ...'),
    "Preference-Applied": header(
        "The Prefer preferences honoured (RFC 7240): handling=strict, wait=N, comma-separated."
    ),
}
_LINK = header("<...>; rel=next, for a page with more.")
_PREFER = parameter(
    "Prefer",
    "header",
    string(),
    "RFC 7240 preferences. handling=strict turns an incomplete answer into 503. wait=N"
    " (seconds, fractions allowed): every source gets at most what is left of N since the"
    " request arrived (a stream: each batch at most N), so the answer comes within N; a"
    " malformed or non-positive wait is ignored. Both are listed in Preference-Applied.",
)
_NOT_ACCEPTABLE = problem("The Accept header allows none of the media types.")
SCHEMAS = {"Row": _ROW, "Outcome": _OUTCOME, "Envelope": _ENVELOPE, "Problem": _PROBLEM}


def behind_pattern(sources: Sequence[str]) -> str:
    """The pattern of ``behind``: the configured source names, each with an optional id."""
    name = "|".join(re.escape(source) for source in sources) or "[A-Za-z0-9_.-]{1,64}"
    entry = f"({name})(:-?[0-9]{{1,18}})?"
    return f"^({entry}(,{entry})*)?$"


def collect_data_parameters(sources: Sequence[str]) -> list[Json]:
    """limit, after, behind (naming ``sources``) and Prefer."""
    behind = (
        "Sources lagging behind after, from a next link: name[:id],... (each source at most once)"
    )
    return [
        parameter("limit", "query", integer(1, MAX_LIMIT)),
        parameter("after", "query", integer(MIN_ID, MAX_ID)),
        parameter(
            "behind", "query", {"type": "string", "pattern": behind_pattern(sources)}, behind
        ),
        _PREFER,
    ]


def collect_data(sources: Sequence[str]) -> Json:
    """GET /collect-data: the list, a page, the envelope or the stream."""
    rows = {
        formats.JSON: {"type": "array", "items": ref("Row")},
        formats.ENVELOPE_JSON: ref("Envelope"),
        formats.NDJSON: string("One row per line, then a summary line."),
    }
    ok = {
        "description": "The rows (a partial answer says so in headers).",
        "headers": {**_COLLECTION_HEADERS, "Link": _LINK},
        "content": content(rows),
    }
    return {
        "summary": "Every row of every source that answered, sorted by id",
        "description": (
            "With limit, a page: follow the Link rel=next header (or the envelope's next) "
            "to the next one. Any unknown or repeated parameter is rejected with 400."
        ),
        "parameters": collect_data_parameters(sources),
        "responses": {
            "200": ok,
            "400": problem("A parameter is invalid or unknown."),
            "406": _NOT_ACCEPTABLE,
            "503": problem("Prefer: handling=strict, and some source is missing."),
        },
    }


def collect_one() -> Json:
    """GET /collect-data/{id}: one row, 404 only when its absence is certain."""
    ok = {
        "description": "The row.",
        "headers": _COLLECTION_HEADERS,
        "content": content({formats.JSON: ref("Row"), formats.ENVELOPE_JSON: ref("Envelope")}),
    }
    return {
        "summary": "The row with one id, from the sources that can hold it",
        "parameters": [parameter("id", "path", integer(MIN_ID + 1, MAX_ID)), _PREFER],
        "responses": {
            "200": ok,
            "400": problem("The id is not an integer."),
            "404": problem("Every source that can hold the id answered: no row."),
            "406": _NOT_ACCEPTABLE,
            "503": problem("A source that can hold the id did not answer."),
        },
    }


def operations() -> dict[str, Json]:
    """The paths for the orchestrator and the scraper."""
    return {
        "/livez": {
            "get": {"summary": "The process is alive", "responses": {"200": plain("Alive.")}}
        },
        "/readyz": {
            "get": {
                "summary": "Per-source status (probe deadline); ready while any source is ok",
                "responses": {
                    "200": plain("At least one source answered its ping."),
                    "503": plain("No source is ok (down, timed out or skipped)."),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": plain("Text exposition format.")},
            }
        },
    }


INFO = {
    "title": "collector",
    "version": "1",
    "description": (
        "Every row from all sources, sorted by id, within a deadline. Partial "
        "answers are never silent: see the Collection-* headers."
    ),
}


def openapi_document(sources: Sequence[str] = ()) -> Json:
    """The OpenAPI 3.0 document served at /openapi.json, naming the configured sources."""
    return {
        "openapi": "3.0.3",
        "info": INFO,
        "paths": {
            "/collect-data": {"get": collect_data(sources)},
            "/collect-data/{id}": {"get": collect_one()},
            **operations(),
        },
        "components": {"schemas": SCHEMAS},
    }
