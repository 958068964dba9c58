from __future__ import annotations

import json
import re

from quart_trio import QuartTrio

from service.core import Collector
from service.web import create_app
from tests.unit.fakes import FakeSource, rows

TIMING_ENTRY = re.compile(r'^(?P<name>[\w.-]+);dur=(?P<dur>\d+\.\d);desc="(?P<desc>\w+)"$')


def app_with(*sources: FakeSource, timeout: float = 2.0) -> QuartTrio:
    return create_app(Collector(sources, timeout))


def timing(header: str) -> list[tuple[str, float, str]]:
    entries = []
    for part in header.split(", "):
        match = TIMING_ENTRY.match(part)
        assert match, part
        entries.append((match["name"], float(match["dur"]), match["desc"]))
    return entries


async def test_collect_data_returns_the_sorted_union_as_a_json_list() -> None:
    app = app_with(FakeSource("a", rows(3, 1)), FakeSource("b", rows(2)))
    response = await app.test_client().get("/collect-data")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert json.loads(await response.get_data()) == [
        {"id": 1, "name": "Test 1"},
        {"id": 2, "name": "Test 2"},
        {"id": 3, "name": "Test 3"},
    ]


async def test_every_source_has_a_server_timing_entry(autojump_clock: object) -> None:
    app = app_with(
        FakeSource("fast", rows(1), delay=0.25),
        FakeSource("slow", rows(2), delay=9.0),
        FakeSource("broken", error=OSError("down")),
        timeout=2.0,
    )
    response = await app.test_client().get("/collect-data")
    assert response.status_code == 200
    assert timing(response.headers["Server-Timing"]) == [
        ("fast", 250.0, "ok"),
        ("slow", 2000.0, "timeout"),
        ("broken", 0.0, "error"),
    ]
    assert json.loads(await response.get_data()) == [{"id": 1, "name": "Test 1"}]


async def test_all_sources_failing_is_still_200_with_an_empty_list() -> None:
    app = app_with(FakeSource("a", error=RuntimeError("x")), FakeSource("b", error=OSError()))
    response = await app.test_client().get("/collect-data")
    assert response.status_code == 200
    assert json.loads(await response.get_data()) == []


async def test_null_name_is_served_as_json_null() -> None:
    source = FakeSource("a")
    source.result = [*rows(1)]
    source.result.append(type(source.result[0])(2, None))
    response = await app_with(source).test_client().get("/collect-data")
    assert json.loads(await response.get_data())[1] == {"id": 2, "name": None}


async def test_unknown_query_parameter_gets_a_problem_document() -> None:
    response = await app_with(FakeSource("a")).test_client().get("/collect-data?limt=5")
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    body = json.loads(await response.get_data())
    assert body["status"] == 400
    assert body["title"] == "Bad Request"
    assert "'limt'" in body["detail"]
    assert body["invalid_params"] == [{"name": "limt", "reason": "unknown parameter"}]


async def test_unknown_path_gets_a_problem_document() -> None:
    response = await app_with(FakeSource("a")).test_client().get("/collect")
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    assert json.loads(await response.get_data())["title"] == "Not Found"


async def test_wrong_method_gets_405_with_allow_header() -> None:
    response = await app_with(FakeSource("a")).test_client().post("/collect-data")
    assert response.status_code == 405
    assert response.mimetype == "application/problem+json"
    assert "GET" in response.headers["Allow"]
