"""The data routes: ``/collect-data`` (list, page, envelope or stream) and one id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from http import HTTPStatus
from typing import Protocol

import trio
from quart import Response, request
from werkzeug.routing import PathConverter

from service.core import Answer, Collector, Query
from service.logs import request_fields
from service.web import formats, negotiation, problems
from service.web.admission import Admission
from service.web.bodycache import BodyCache
from service.web.params import ParamError, parse_id, parse_query, query_for_id
from service.web.problems import Reply

#: Rows per server-side cursor batch when streaming: memory is bounded by the
#: number of sources times this, while each batch is large enough that the
#: round trip to the database is amortised over many rows.
STREAM_BATCH = 5000


class Collect(Protocol):
    """Answers a query: the collector's ``collect``, or the coalescer's in front of it."""

    async def __call__(self, query: Query, *, seconds_left: float | None = None) -> Answer:
        """The answer, every source given at most ``seconds_left`` (None: its timeout)."""
        ...


class AnySegment(PathConverter):
    """Everything after the prefix, control characters included.

    Werkzeug's ``path`` pattern stops at a newline, so ``/collect-data/%0a1`` would
    be an unknown path (a generic 404) rather than the bad id it is (a 400).
    """

    regex = "(?s:.+)"


def note_wait(prefs: formats.Preferences) -> None:
    """Tell the access line (and the request's span) the client's ``Prefer: wait``."""
    fields = request_fields.get()
    if fields is not None and prefs.wait is not None:
        fields["wait"] = prefs.wait


def report(collection: Answer) -> None:
    """Tell the access line how complete the answer was."""
    fields = request_fields.get()
    if fields is not None:
        fields["complete"] = collection.complete
        fields["missing"] = list(collection.missing)
        if replicas := formats.replicas_answered(collection):
            fields["replicas"] = replicas


class DataRoutes:
    """The handlers of the data endpoints, with what they need passed in.

    ``collect`` answers a query (the collector's, or the coalescer's in front of
    it); ``collector`` streams; ``admission`` caps the requests in progress.
    """

    def __init__(
        self,
        collector: Collector,
        collect: Collect,
        admission: Admission,
        *,
        bodies: BodyCache | None = None,
        draining: trio.Event | None = None,
    ) -> None:
        self.collector = collector
        self.collect = collect
        self.admission = admission
        self.bodies = bodies or BodyCache()
        self.draining = draining
        self.source_names = frozenset(s.name for s in collector.sources)

    async def collect_data(self) -> Reply | Response:
        """Every row of every source that answered, or a page of them, or a stream."""
        try:
            query = parse_query(request.args.items(multi=True), self.source_names)
        except ParamError as error:
            return problems.bad_param(error)
        media_type = negotiation.negotiate(request, formats.NDJSON)
        if media_type is None:
            return problems.not_acceptable(request.path, negotiation.offered(formats.NDJSON))
        prefs = negotiation.preferences(request)
        note_wait(prefs)
        if media_type == formats.NDJSON:
            if not self.admission.enter():
                return problems.overloaded(self.admission.limit)
            return self.ndjson_response(query, prefs)
        collection = await self.admitted_collect(query, prefs.wait)
        if collection is None:
            return problems.overloaded(self.admission.limit)
        headers = formats.collection_headers(collection)
        if collection.next is not None and query.limit is not None:
            link = formats.next_href(request.path, query.limit, collection.next)
            headers["Link"] = f'<{link}>; rel="next"'
        strict = negotiation.strict_problem(prefs, collection, headers)
        if strict is not None:
            return strict
        if media_type == formats.ENVELOPE_JSON:
            body = formats.envelope_json(collection, query.limit, request.path)
        else:
            body = self.bodies.rows_json(collection)
        headers["Content-Type"] = media_type
        return body, HTTPStatus.OK, headers

    async def collect_one(self, row_id: str) -> Reply:
        """The row with one id, asking only the sources whose declared ranges hold it."""
        try:
            wanted = parse_id(row_id)
        except ParamError as error:
            return problems.bad_param(error)
        if request.args:
            return problems.bad_param(ParamError(next(iter(request.args)), "unknown parameter"))
        media_type = negotiation.negotiate(request)
        if media_type is None:
            return problems.not_acceptable(request.path, negotiation.offered())
        prefs = negotiation.preferences(request)
        note_wait(prefs)
        collection = await self.admitted_collect(query_for_id(wanted), prefs.wait)
        if collection is None:
            return problems.overloaded(self.admission.limit)
        headers = formats.collection_headers(collection)
        strict = negotiation.strict_problem(prefs, collection, headers)
        if strict is not None:
            return strict
        if not collection.rows:
            body, code, problem_headers = problems.absent_row(wanted, collection)
            return body, code, {**headers, **problem_headers}
        if media_type == formats.ENVELOPE_JSON:
            found = formats.envelope_json(collection, None, request.path)
        else:
            found = formats.row_json(collection.rows[0])
        headers["Content-Type"] = media_type
        return found, HTTPStatus.OK, headers

    async def admitted_collect(self, query: Query, wait: float | None) -> Answer | None:
        """The collection, or None when the admission cap is reached (answer 503).

        ``wait`` is the client's ``Prefer: wait``: each source gets at most that long,
        counted from now (the request arrived a moment ago, its head just parsed).
        """
        if not self.admission.enter():
            return None
        try:
            collection = await self.collect(query, seconds_left=wait)
        finally:
            self.admission.leave()
        report(collection)
        return collection

    def ndjson_response(self, query: Query, prefs: formats.Preferences) -> Response:
        """The streamed answer; the admission taken by the caller ends with the stream.

        A stream honours ``wait`` (every batch's deadline is at most N seconds), not
        ``handling=strict`` (its status is sent before anyone knows whether it will
        be complete), so only ``wait`` is listed as applied.
        """
        headers = {"Vary": negotiation.VARY, "Cache-Control": "no-store"}
        applied = prefs.applied(strict=False)
        if applied is not None:
            headers["Preference-Applied"] = applied
        response = Response(
            self.ndjson_lines(query, request.path, prefs.wait),
            status=HTTPStatus.OK,
            content_type=formats.NDJSON,
            headers=headers,
        )
        # Quart would cut the body at RESPONSE_TIMEOUT, mid-stream and without the
        # summary; a stream runs as long as its client reads (the write guard
        # disconnects a client that stops) and every batch has its own deadline.
        response.timeout = None
        return response

    async def ndjson_lines(
        self, query: Query, path: str, wait: float | None = None
    ) -> AsyncIterator[bytes]:
        """Rows batch by batch, then the summary line; leaves the admission at the end."""
        fields = request_fields.get()
        try:
            stream = self.collector.stream(
                query, STREAM_BATCH, stop=self.draining, batch_seconds=wait
            )
            async with aclosing(stream) as items:
                async for item in items:
                    if isinstance(item, Answer):
                        if fields is not None:
                            fields["complete"] = item.complete
                            fields["interrupted"] = item.interrupted
                            if replicas := formats.replicas_answered(item):
                                fields["replicas"] = replicas
                        yield formats.stream_summary(item, query.limit, path)
                    else:
                        yield formats.ndjson_rows(item)
        finally:
            self.admission.leave()
