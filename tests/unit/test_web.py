from __future__ import annotations

import json
import re

import trio
from quart_trio import QuartTrio

from service.core import Collector, Member
from service.core.declared import IdsState
from service.web import create_app
from tests.unit.fakes import FakeSource, rows

ENVELOPE = "application/vnd.collector.envelope+json"
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
    app = app_with(FakeSource("a", rows(1, 3)), FakeSource("b", rows(2)))
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
    assert body["invalid_params"] == [
        {"name": "limt", "reason": "unknown parameter (known: limit, after, behind)"}
    ]


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


def partial_app() -> QuartTrio:
    return create_app(
        Collector(
            [
                Member(FakeSource("source_1", rows(1, 31)), ids=((1, 10), (31, 40))),
                Member(FakeSource("source_2", error=OSError("down")), ids=((11, 20), (41, 50))),
                Member(FakeSource("source_3", delay=9.0), ids=((21, 30), (51, 60))),
            ],
            timeout=2.0,
        )
    )


async def test_complete_answer_says_so_in_its_headers() -> None:
    response = await app_with(FakeSource("a", rows(1))).test_client().get("/collect-data")
    assert response.headers["Collection-Complete"] == "?1"
    assert "Collection-Missing" not in response.headers


async def test_partial_answer_names_the_missing_sources(autojump_clock: object) -> None:
    response = await partial_app().test_client().get("/collect-data")
    assert response.status_code == 200
    assert response.headers["Collection-Complete"] == "?0"
    assert response.headers["Collection-Missing"] == (
        '"source_2";status=error, "source_3";status=timeout'
    )
    assert [row["id"] for row in json.loads(await response.get_data())] == [1, 31]


async def test_every_source_failing_is_an_empty_list_marked_incomplete() -> None:
    app = app_with(FakeSource("a", error=OSError()), FakeSource("b", error=OSError()))
    response = await app.test_client().get("/collect-data")
    assert json.loads(await response.get_data()) == []
    assert response.headers["Collection-Complete"] == "?0"
    assert response.headers["Collection-Missing"] == '"a";status=error, "b";status=error'


async def test_envelope_reports_each_source_and_the_missing_ids(autojump_clock: object) -> None:
    response = (
        await partial_app()
        .test_client()
        .get("/collect-data", headers={"Accept": "application/vnd.collector.envelope+json"})
    )
    assert response.status_code == 200
    assert response.mimetype == "application/vnd.collector.envelope+json"
    body = json.loads(await response.get_data())
    assert body["data"] == [{"id": 1, "name": "Test 1"}, {"id": 31, "name": "Test 31"}]
    assert body["complete"] is False
    assert body["missing_ids"] == [[11, 30], [41, 60]]
    first, second, third = body["sources"]
    assert first == {
        "name": "source_1",
        "status": "ok",
        "rows": 2,
        "duration_ms": 0.0,
        "error": None,
        "breaker": "closed",
        "missing_ids": None,
        "out_of_range": 0,
        "replica": None,
    }
    assert (second["status"], second["error"]) == ("error", "OSError: down")
    assert second["missing_ids"] == [[11, 20], [41, 50]]
    assert (third["status"], third["duration_ms"]) == ("timeout", 2000.0)


async def test_json_is_preferred_when_the_client_accepts_anything() -> None:
    response = (
        await app_with(FakeSource("a", rows(1)))
        .test_client()
        .get("/collect-data", headers={"Accept": "text/html,*/*;q=0.8"})
    )
    assert response.mimetype == "application/json"


async def test_unacceptable_media_type_gets_406() -> None:
    response = (
        await app_with(FakeSource("a"))
        .test_client()
        .get("/collect-data", headers={"Accept": "text/csv"})
    )
    assert response.status_code == 406
    assert response.mimetype == "application/problem+json"


async def test_strict_preference_turns_a_partial_answer_into_503(autojump_clock: object) -> None:
    response = (
        await partial_app()
        .test_client()
        .get("/collect-data", headers={"Prefer": "respond-async, handling=strict"})
    )
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert response.headers["Preference-Applied"] == "handling=strict"
    assert response.headers["Collection-Complete"] == "?0"
    body = json.loads(await response.get_data())
    assert body["detail"] == "2 of 3 sources did not answer: source_2 (error), source_3 (timeout)"
    assert [s["name"] for s in body["sources"]] == ["source_2", "source_3"]
    assert body["missing_ids"] == [[11, 30], [41, 60]]


async def test_strict_preference_leaves_a_complete_answer_alone() -> None:
    response = (
        await app_with(FakeSource("a", rows(1)))
        .test_client()
        .get("/collect-data", headers={"Prefer": "handling=strict"})
    )
    assert response.status_code == 200
    assert json.loads(await response.get_data()) == [{"id": 1, "name": "Test 1"}]


async def test_lenient_or_unknown_preferences_keep_partial_answers_at_200(
    autojump_clock: object,
) -> None:
    client = partial_app().test_client()
    for prefer in ("handling=lenient", "return=minimal", "handling"):
        response = await client.get("/collect-data", headers={"Prefer": prefer})
        assert response.status_code == 200


async def test_livez_answers_without_asking_any_source() -> None:
    source = FakeSource("a", error=OSError())
    response = await app_with(source).test_client().get("/livez")
    assert response.status_code == 200
    assert json.loads(await response.get_data()) == {"status": "alive"}
    assert source.calls == 0


async def test_readyz_is_ready_while_some_source_answers() -> None:
    app = app_with(FakeSource("up"), FakeSource("down", error=OSError()))
    response = await app.test_client().get("/readyz")
    assert response.status_code == 200
    body = json.loads(await response.get_data())
    assert body["status"] == "ready"
    assert [(s["name"], s["reachable"]) for s in body["sources"]] == [
        ("up", True),
        ("down", False),
    ]


async def test_readyz_is_unavailable_when_no_source_answers() -> None:
    app = app_with(FakeSource("a", error=OSError()), FakeSource("b", error=OSError()))
    response = await app.test_client().get("/readyz")
    assert response.status_code == 503
    assert json.loads(await response.get_data())["status"] == "unavailable"


async def test_metrics_count_outcomes_breakers_and_responses(autojump_clock: object) -> None:
    client = partial_app().test_client()
    await client.get("/collect-data")
    response = await client.get("/metrics")
    assert response.status_code == 200
    text = (await response.get_data()).decode()
    assert 'collector_source_outcomes_total{source="source_2",status="error"} 1.0' in text
    assert 'collector_source_outcomes_total{source="source_3",status="timeout"} 1.0' in text
    assert 'collector_source_fetch_seconds_count{source="source_1"} 1.0' in text
    assert 'collector_breaker_state{source="source_1"} 0.0' in text
    assert 'collector_http_responses_total{code="200"} 1.0' in text
    assert "collector_requests_in_flight 1.0" in text  # the /metrics request itself


async def test_every_response_carries_a_request_id() -> None:
    client = app_with(FakeSource("a")).test_client()
    generated = await client.get("/livez")
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["X-Request-Id"])
    echoed = await client.get("/livez", headers={"X-Request-Id": "abc-123"})
    assert echoed.headers["X-Request-Id"] == "abc-123"
    unsafe = await client.get("/livez", headers={"X-Request-Id": "a b\tc"})
    assert unsafe.headers["X-Request-Id"] != "a b\tc"


def reference_app(**broken: FakeSource) -> QuartTrio:
    layout = {
        "source_1": ((1, 10), (31, 40)),
        "source_2": ((11, 20), (41, 50)),
        "source_3": ((21, 30), (51, 60)),
    }
    members = []
    for name, ranges in layout.items():
        ids = [i for first, last in ranges for i in range(first, last + 1)]
        source = broken.get(name) or FakeSource(name, rows(*ids))
        members.append(Member(source, ids=ranges))
    collector = Collector(members, timeout=2.0)
    for name in layout:  # the fakes hold only their declared ids, as a check finds
        collector.declared.record(name, IdsState.VERIFIED)
    return create_app(collector)


async def test_page_links_to_the_next_page() -> None:
    client = reference_app().test_client()
    response = await client.get("/collect-data?limit=5&after=8")
    assert [r["id"] for r in json.loads(await response.get_data())] == [9, 10, 11, 12, 13]
    assert response.headers["Link"] == '</collect-data?limit=5&after=13>; rel="next"'


async def test_last_page_has_no_link() -> None:
    response = await reference_app().test_client().get("/collect-data?limit=10&after=55")
    assert "Link" not in response.headers
    assert response.headers["Server-Timing"].count('desc="pruned"') == 2


async def test_partial_page_links_back_to_the_missing_source() -> None:
    app = reference_app(source_2=FakeSource("source_2", error=OSError("down")))
    response = await app.test_client().get(
        "/collect-data?limit=5&after=8", headers={"Accept": ENVELOPE}
    )
    body = json.loads(await response.get_data())
    assert [r["id"] for r in body["data"]] == [9, 10, 21, 22, 23]
    assert body["next"] == {
        "after": 23,
        "behind": {"source_2": 8},
        "href": "/collect-data?limit=5&after=23&behind=source_2:8",
    }
    assert response.headers["Link"] == f'<{body["next"]["href"]}>; rel="next"'


async def test_one_id_is_answered_by_the_source_that_holds_it() -> None:
    response = await reference_app().test_client().get("/collect-data/42")
    assert response.status_code == 200
    assert json.loads(await response.get_data()) == {"id": 42, "name": "Test 42"}
    assert timing(response.headers["Server-Timing"])[0][2] == "pruned"
    assert [entry[2] for entry in timing(response.headers["Server-Timing"])] == [
        "pruned",
        "ok",
        "pruned",
    ]


async def test_absent_id_is_404_when_its_source_answered() -> None:
    response = await reference_app().test_client().get("/collect-data/61")
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"


async def test_absent_id_is_503_when_its_source_is_down() -> None:
    app = reference_app(source_2=FakeSource("source_2", error=OSError("down")))
    response = await app.test_client().get("/collect-data/42")
    assert response.status_code == 503
    body = json.loads(await response.get_data())
    assert "source_2 did not answer" in body["detail"]


async def test_bad_id_is_400() -> None:
    response = await reference_app().test_client().get("/collect-data/forty-two")
    assert response.status_code == 400
    assert json.loads(await response.get_data())["invalid_params"][0]["name"] == "id"


async def test_ndjson_streams_rows_then_a_summary_line() -> None:
    app = reference_app(source_3=FakeSource("source_3", error=OSError("down")))
    response = await app.test_client().get(
        "/collect-data", headers={"Accept": "application/x-ndjson"}
    )
    assert response.status_code == 200
    assert response.mimetype == "application/x-ndjson"
    lines = [json.loads(line) for line in (await response.get_data()).splitlines()]
    *data, summary = lines
    assert [row["id"] for row in data] == [*range(1, 21), *range(31, 51)]
    assert summary["complete"] is False
    assert [s["status"] for s in summary["sources"]] == ["ok", "ok", "error"]
    assert summary["missing_ids"] == [[21, 30], [51, 60]]


TOKEN = "a-long-enough-secret-token"


async def test_data_endpoints_need_the_token_when_one_is_set() -> None:
    app = create_app(Collector([FakeSource("a", rows(1))], 2.0), api_token=TOKEN)
    client = app.test_client()
    for path in ("/collect-data", "/collect-data/1", "/metrics"):
        denied = await client.get(path)
        assert denied.status_code == 401, path
        assert denied.mimetype == "application/problem+json"
        assert denied.headers["WWW-Authenticate"] == 'Bearer realm="collector"'
        wrong = await client.get(path, headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401
        allowed = await client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert allowed.status_code == 200, path


async def test_probes_and_docs_need_no_token() -> None:
    app = create_app(Collector([FakeSource("a", rows(1))], 2.0), api_token=TOKEN)
    client = app.test_client()
    for path in ("/livez", "/readyz", "/openapi.json", "/docs"):
        assert (await client.get(path)).status_code == 200, path


async def test_requests_beyond_the_cap_get_503_with_retry_after(
    autojump_clock: object,
) -> None:
    slow = FakeSource("a", rows(1), delay=1.0)
    app = create_app(Collector([slow], 2.0), max_concurrent=2)
    client = app.test_client()
    statuses: list[int] = []
    retry_after: list[str] = []

    async def ask() -> None:
        response = await client.get("/collect-data")
        statuses.append(response.status_code)
        if response.status_code == 503:
            retry_after.append(response.headers["Retry-After"])

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(ask)
    assert sorted(statuses) == [200, 200, 503, 503, 503]
    assert retry_after == ["1", "1", "1"]
    assert (await client.get("/collect-data")).status_code == 200  # capacity came back


async def test_doubled_slashes_are_not_redirected_to_the_clients_host() -> None:
    app = app_with(FakeSource("a", rows(42)))
    for path in ("/collect-data//42", "/collect-data///42", "/livez//"):
        response = await app.test_client().get(path, headers={"Host": "evil.example"})
        assert 400 <= response.status_code < 500, path
        assert "Location" not in response.headers, path
        assert response.mimetype == "application/problem+json", path


async def test_an_id_with_control_characters_is_a_bad_id_not_an_unknown_path() -> None:
    app = app_with(FakeSource("a", rows(1)))
    for raw in ("%0a1", "1%0a", "%0d%0a", "%091"):
        response = await app.test_client().get(f"/collect-data/{raw}")
        assert response.status_code == 400, raw
        problem = json.loads(await response.get_data())
        assert "must be an integer" in problem["detail"], raw


async def test_stream_during_shutdown_ends_with_an_interrupted_summary_and_resume_link() -> None:
    draining = trio.Event()
    draining.set()  # shutdown has begun: the stream stops before its first row
    app = create_app(Collector([FakeSource("a", rows(1, 2, 3))], 2.0), draining=draining)
    response = await app.test_client().get(
        "/collect-data", headers={"Accept": "application/x-ndjson"}
    )
    assert response.status_code == 200
    (summary,) = [json.loads(line) for line in (await response.get_data()).splitlines()]
    assert summary["complete"] is False
    assert summary["interrupted"] == "shutdown"
    assert summary["next"]["href"] == "/collect-data"  # from the start, as a stream
