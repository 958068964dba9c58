"""The OpenAPI 3.0 description of the HTTP API, and the offline docs page.

Written out by hand so that it says exactly what the routes do (the parameter
bounds are the validator's own constants); a schemathesis run in the test suite
checks the server against it. The docs page is Swagger UI from the
``swagger-ui-bundle`` package, served by this app: it works without internet.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from service.web import formats
from service.web.params import MAX_ID, MAX_LIMIT, MIN_ID

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
    "Server-Timing": {
        "description": 'One entry per source: <source>;dur=<ms>;desc="<status>".',
        "schema": {"type": "string"},
    },
    "Collection-Complete": {
        "description": "RFC 8941 boolean: ?1 if every source answered, else ?0.",
        "schema": {"type": "string", "enum": ["?1", "?0"]},
    },
    "Collection-Missing": {
        "description": 'Sources whose rows are absent: "name";status=<status>, ...',
        "schema": {"type": "string"},
    },
}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {formats.PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def openapi_document(sources: Sequence[str] = ()) -> dict[str, Any]:
    """The OpenAPI 3.0 document served at /openapi.json, naming the configured sources."""
    name = "|".join(re.escape(source) for source in sources) or "[A-Za-z0-9_.-]{1,64}"
    entry = f"({name})(:-?[0-9]{{1,18}})?"
    prefer = {
        "name": "Prefer",
        "in": "header",
        "required": False,
        "description": "handling=strict turns an incomplete answer into 503 (RFC 7240).",
        "schema": {"type": "string"},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "collector",
            "version": "1",
            "description": (
                "Every row from all sources, sorted by id, within a deadline. Partial "
                "answers are never silent: see the Collection-* headers."
            ),
        },
        "paths": {
            "/collect-data": {
                "get": {
                    "summary": "Every row of every source that answered, sorted by id",
                    "description": (
                        "With limit, a page: follow the Link rel=next header (or the "
                        "envelope's next) to the next one. Any unknown or repeated "
                        "parameter is rejected with 400."
                    ),
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                        },
                        {
                            "name": "after",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": MIN_ID, "maximum": MAX_ID},
                        },
                        {
                            "name": "behind",
                            "in": "query",
                            "required": False,
                            "description": (
                                "Sources lagging behind after, from a next link: name[:id],... "
                                "(each source at most once)"
                            ),
                            "schema": {"type": "string", "pattern": f"^({entry}(,{entry})*)?$"},
                        },
                        prefer,
                    ],
                    "responses": {
                        "200": {
                            "description": "The rows (a partial answer says so in headers).",
                            "headers": {
                                **_COLLECTION_HEADERS,
                                "Link": {
                                    "description": "<...>; rel=next, for a page with more.",
                                    "schema": {"type": "string"},
                                },
                            },
                            "content": {
                                formats.JSON: {
                                    "schema": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Row"},
                                    }
                                },
                                formats.ENVELOPE_JSON: {
                                    "schema": {"$ref": "#/components/schemas/Envelope"}
                                },
                                formats.NDJSON: {
                                    "schema": {
                                        "type": "string",
                                        "description": "One row per line, then a summary line.",
                                    }
                                },
                            },
                        },
                        "400": _problem("A parameter is invalid or unknown."),
                        "406": _problem("The Accept header allows none of the media types."),
                        "503": _problem("Prefer: handling=strict, and some source is missing."),
                    },
                }
            },
            "/collect-data/{id}": {
                "get": {
                    "summary": "The row with one id, from the sources that can hold it",
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "schema": {
                                "type": "integer",
                                "minimum": MIN_ID + 1,
                                "maximum": MAX_ID,
                            },
                        },
                        prefer,
                    ],
                    "responses": {
                        "200": {
                            "description": "The row.",
                            "headers": _COLLECTION_HEADERS,
                            "content": {
                                formats.JSON: {"schema": {"$ref": "#/components/schemas/Row"}},
                                formats.ENVELOPE_JSON: {
                                    "schema": {"$ref": "#/components/schemas/Envelope"}
                                },
                            },
                        },
                        "400": _problem("The id is not an integer."),
                        "404": _problem("Every source that can hold the id answered: no row."),
                        "406": _problem("The Accept header allows none of the media types."),
                        "503": _problem("A source that can hold the id did not answer."),
                    },
                }
            },
            "/livez": {
                "get": {
                    "summary": "The process is alive",
                    "responses": {"200": {"description": "Alive."}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Per-source status (probe deadline); ready while any source is ok",
                    "responses": {
                        "200": {"description": "At least one source answered its ping."},
                        "503": {"description": "No source is ok (down, timed out or skipped)."},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "Text exposition format."}},
                }
            },
        },
        "components": {
            "schemas": {
                "Row": _ROW,
                "Outcome": _OUTCOME,
                "Envelope": _ENVELOPE,
                "Problem": _PROBLEM,
            }
        },
    }
