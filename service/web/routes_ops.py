"""The operations routes: probes, metrics, the API description and its docs page."""

from __future__ import annotations

import json
from http import HTTPStatus

from swagger_ui_bundle import swagger_ui_path

from service.core import Collector
from service.web import formats, openapi
from service.web.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from service.web.metrics import Metrics
from service.web.problems import Reply


def json_reply(body: object, status: int = HTTPStatus.OK) -> Reply:
    """A small JSON answer."""
    return json.dumps(body), status, {"Content-Type": formats.JSON}


class OperationRoutes:
    """Handlers for the orchestrator, the scraper and people reading the API."""

    def __init__(self, collector: Collector, metrics: Metrics, spec: openapi.Json) -> None:
        self.collector = collector
        self.metrics = metrics
        self.spec = spec

    async def livez(self) -> Reply:
        """The process is alive and serving HTTP; no dependency is consulted."""
        return json_reply({"status": "alive"})

    async def readyz(self) -> Reply:
        """Ready while at least one source answers and is not skipped; lists each one.

        Each ping has the short probe deadline, so a black-holed source cannot
        hold the answer longer than a readiness probe waits.
        """
        probes = await self.collector.probe()
        ready = any(p.reachable for p in probes)
        body = {
            "status": "ready" if ready else "unavailable",
            "sources": [formats.probe_json(p) for p in probes],
        }
        return json_reply(body, HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE)

    async def metrics_text(self) -> Reply:
        """Prometheus metrics."""
        return self.metrics.render(), HTTPStatus.OK, {"Content-Type": METRICS_CONTENT_TYPE}

    async def openapi_json(self) -> Reply:
        """The OpenAPI description of this API."""
        return json_reply(self.spec)

    async def docs(self) -> Reply:
        """Interactive docs (Swagger UI), with every asset served from here."""
        return openapi.DOCS_HTML, HTTPStatus.OK, {"Content-Type": "text/html; charset=utf-8"}

    async def docs_init(self) -> Reply:
        """The script pointing Swagger UI at /openapi.json (no inline script needed)."""
        return openapi.DOCS_INIT_JS, HTTPStatus.OK, {"Content-Type": "text/javascript"}

    async def docs_asset(self, name: str) -> Reply:
        """One of Swagger UI's own files, from the installed bundle."""
        if name not in openapi.DOCS_ASSETS:
            return formats.problem(HTTPStatus.NOT_FOUND, f"No docs asset {name[:64]!r}.")
        content = (swagger_ui_path / name).read_bytes()
        headers = {"Content-Type": openapi.DOCS_ASSETS[name], "Cache-Control": "max-age=86400"}
        return content, HTTPStatus.OK, headers
