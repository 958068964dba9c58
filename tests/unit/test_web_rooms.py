"""The web layer's pieces on their own, without building the whole app."""

from __future__ import annotations

import json
import re

from quart_trio import QuartTrio

from service.core import Answer, Collector, Cursor, Outcome, Status
from service.web import problems
from service.web.admission import Admission
from service.web.auth import token_matches
from service.web.formats import next_href
from service.web.openapi import behind_pattern, openapi_document
from service.web.params import query_for_id
from service.web.routes_data import DataRoutes
from tests.unit.fakes import FakeSource, rows


def collection(*statuses: Status) -> Answer:
    outcomes = tuple(Outcome(f"s{i}", s, 0, 0.0) for i, s in enumerate(statuses))
    return Answer([], outcomes)


def test_an_absent_row_is_404_only_when_every_source_answered() -> None:
    assert problems.absent_row(7, collection(Status.OK, Status.PRUNED))[1] == 404
    body, status, _ = problems.absent_row(7, collection(Status.OK, Status.TIMEOUT))
    assert status == 503
    assert json.loads(body)["detail"] == (
        "No row with id 7 was found, but s1 did not answer and may hold it."
    )


def test_one_id_is_the_window_that_ends_at_it() -> None:
    query = query_for_id(11)
    assert (query.after, query.until, query.limit) == (10, 11, None)


def test_only_the_exact_token_matches() -> None:
    assert token_matches("Bearer secret", b"secret")
    assert token_matches("bearer secret", b"secret")
    for header in ("Bearer secre", "Bearer ", "Bearer secrets", "Basic secret", "secret"):
        assert not token_matches(header, b"secret"), header


def test_a_next_link_for_a_page_keeps_its_limit_and_a_stream_may_have_no_query() -> None:
    cursor = Cursor(after=13, behind=(("b", None),))
    assert next_href("/collect-data", 5, cursor) == "/collect-data?limit=5&after=13&behind=b"
    assert next_href("/collect-data", None, Cursor(after=None)) == "/collect-data"


async def test_a_data_handler_answers_inside_a_bare_request_context() -> None:
    collector = Collector([FakeSource("a", rows(1, 2))], 2.0)
    routes = DataRoutes(collector, collector.collect, Admission(1))
    async with QuartTrio("t").test_request_context("/collect-data/2"):
        body, status, headers = await routes.collect_one("2")
    assert (status, json.loads(body)) == (200, {"id": 2, "name": "Test 2"})
    assert headers["Collection-Complete"] == "?1"
    assert routes.admission.in_progress == 0


def test_the_documented_behind_pattern_names_only_the_configured_sources() -> None:
    pattern = re.compile(behind_pattern(["a.b", "c"]))
    assert pattern.match("a.b:-5,c")
    assert pattern.match("")
    assert not pattern.match("axb:5")
    assert not pattern.match("d")


def test_every_referenced_schema_is_defined() -> None:
    text = json.dumps(openapi_document(["a"]))
    defined = set(openapi_document()["components"]["schemas"])
    assert set(re.findall(r"#/components/schemas/(\w+)", text)) == defined
