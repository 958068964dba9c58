from __future__ import annotations

import pytest

from service.core import Cursor, Query
from service.web.params import MAX_LIMIT, ParamError, cursor_params, parse_id, parse_query

SOURCES = {"source_1", "source_2"}


def test_no_parameters_ask_for_everything() -> None:
    assert parse_query([], SOURCES) == Query()


def test_page_parameters_are_parsed() -> None:
    query = parse_query(
        [("limit", "10"), ("after", "-5"), ("behind", "source_2:3,source_1")], SOURCES
    )
    assert query == Query(after=-5, limit=10, behind=(("source_2", 3), ("source_1", None)))


@pytest.mark.parametrize(
    ("pairs", "name", "reason"),
    [
        ([("limit", "0")], "limit", f"must be between 1 and {MAX_LIMIT}"),
        ([("limit", str(MAX_LIMIT + 1))], "limit", "must be between"),
        ([("limit", "ten")], "limit", "must be an integer"),
        ([("limit", "1.5")], "limit", "must be an integer"),
        ([("limit", " 1")], "limit", "must be an integer"),
        ([("after", "")], "after", "must be an integer"),
        ([("after", "9" * 25)], "after", "must be an integer"),
        ([("after", str(2**63))], "after", "must be between"),
        ([("after", "١٢")], "after", "must be an integer"),
        ([("limit", "1"), ("limit", "2")], "limit", "given more than once"),
        ([("behind", "nope:1")], "behind", "unknown source 'nope'"),
        ([("behind", "source_1:x")], "behind", "must be an integer"),
        ([("behind", "source_1:1,source_1:2")], "behind", "named twice"),
        ([("sort", "id")], "sort", "unknown parameter"),
    ],
)
def test_bad_parameters_are_named_with_a_reason(
    pairs: list[tuple[str, str]], name: str, reason: str
) -> None:
    with pytest.raises(ParamError) as caught:
        parse_query(pairs, SOURCES)
    assert caught.value.name == name
    assert reason in caught.value.reason


def test_ids_in_paths_are_validated() -> None:
    assert parse_id("42") == 42
    with pytest.raises(ParamError, match="must be an integer"):
        parse_id("4x")


def test_cursor_becomes_the_next_query_string() -> None:
    cursor = Cursor(after=25, behind=(("source_2", 20), ("source_1", None)))
    assert cursor_params(10, cursor) == "limit=10&after=25&behind=source_2:20,source_1"
    assert parse_query(
        [tuple(p.split("=")) for p in cursor_params(10, cursor).split("&")],  # type: ignore[misc]
        SOURCES,
    ) == Query(after=25, limit=10, behind=cursor.behind)


@pytest.mark.parametrize(
    "pairs",
    [
        [("after", "1; DROP TABLE data_1")],
        [("after", "1 OR 1=1")],
        [("limit", "1 UNION SELECT 1, current_user")],
        [("behind", "source_1:1' OR '1'='1")],
        [("behind", 'source_1"; DROP TABLE data_1; --')],
    ],
)
def test_injection_attempts_in_parameters_are_rejected(pairs: list[tuple[str, str]]) -> None:
    with pytest.raises(ParamError):
        parse_query(pairs, SOURCES)
