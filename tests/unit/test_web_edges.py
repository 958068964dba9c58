"""The HTTP contract at its edges: range bounds, token comparison, stray parameters,
the stream's framing and the spelling of ``Prefer``."""

from __future__ import annotations

import json

import pytest
from quart_trio import QuartTrio

from service.core import Collector, Member
from service.core.declared import IdsState
from service.web import create_app
from tests.unit.fakes import FakeSource, rows

TOKEN = "a-long-enough-secret-token"
LAYOUT = {
    "source_1": ((1, 10), (31, 40)),
    "source_2": ((11, 20), (41, 50)),
    "source_3": ((21, 30), (51, 60)),
}


def verified_app(**broken: FakeSource) -> QuartTrio:
    """Three sources holding exactly their declared ids, verified so that they prune."""
    members = []
    for name, ranges in LAYOUT.items():
        ids = [i for first, last in ranges for i in range(first, last + 1)]
        members.append(Member(broken.get(name) or FakeSource(name, rows(*ids)), ids=ranges))
    collector = Collector(members, timeout=2.0)
    for name in LAYOUT:
        collector.declared.record(name, IdsState.VERIFIED)
    return create_app(collector)


@pytest.mark.parametrize("wanted", [1, 10, 11, 20, 21, 30, 31, 40, 41, 50, 51, 60])
async def test_an_id_at_either_edge_of_a_declared_range_is_found(wanted: int) -> None:
    response = await verified_app().test_client().get(f"/collect-data/{wanted}")
    assert response.status_code == 200, wanted
    assert json.loads(await response.get_data()) == {"id": wanted, "name": f"Test {wanted}"}


@pytest.mark.parametrize(
    "authorization",
    ["Bearer " + TOKEN[:-1], "Bearer " + TOKEN[:1], "Bearer ", "Bearer", "", TOKEN],
)
async def test_a_prefix_of_the_token_or_none_at_all_is_refused(authorization: str) -> None:
    app = create_app(Collector([FakeSource("a", rows(1))], 2.0), api_token=TOKEN)
    headers = {"Authorization": authorization} if authorization else {}
    response = await app.test_client().get("/collect-data", headers=headers)
    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"


async def test_the_whole_token_longer_than_expected_is_refused() -> None:
    app = create_app(Collector([FakeSource("a", rows(1))], 2.0), api_token=TOKEN)
    headers = {"Authorization": f"Bearer {TOKEN}x"}
    assert (await app.test_client().get("/metrics", headers=headers)).status_code == 401


async def test_a_parameter_on_one_id_is_a_bad_request_with_a_problem_body() -> None:
    response = await verified_app().test_client().get("/collect-data/42?x=1")
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    problem = json.loads(await response.get_data())
    assert problem["status"] == 400
    assert problem["invalid_params"] == [{"name": "x", "reason": "unknown parameter"}]


async def test_the_stream_summary_is_a_whole_line() -> None:
    response = (
        await verified_app()
        .test_client()
        .get("/collect-data", headers={"Accept": "application/x-ndjson"})
    )
    body = await response.get_data()
    assert body.endswith(b"}\n")
    lines = body.split(b"\n")
    assert lines[-1] == b""
    assert json.loads(lines[-2])["complete"] is True
    assert len(lines) == 60 + 2  # sixty rows, the summary, nothing after its newline


@pytest.mark.parametrize(
    "prefer",
    ['handling="strict"', 'Handling="STRICT"', "HANDLING=Strict", 'wait=5, handling="Strict"'],
)
async def test_the_strict_preference_is_honoured_however_it_is_spelled(prefer: str) -> None:
    app = verified_app(source_2=FakeSource("source_2", error=OSError("down")))
    response = await app.test_client().get("/collect-data", headers={"Prefer": prefer})
    assert response.status_code == 503, prefer
    applied = "handling=strict, wait=5" if "wait" in prefer else "handling=strict"
    assert response.headers["Preference-Applied"] == applied
