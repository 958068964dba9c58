"""The body cache shares an encoded answer among coalesced requests, within bytes."""

from __future__ import annotations

from service.core import Answer, Row
from service.web.bodycache import BodyCache


def collection_of(rows: int, name: str = "x") -> Answer:
    return Answer([Row(i, name) for i in range(rows)], ())


def test_the_same_collection_is_encoded_once() -> None:
    cache = BodyCache()
    shared = collection_of(10)
    first = cache.rows_json(shared)
    assert cache.rows_json(shared) is first
    assert cache.held_bytes == len(first)


def test_a_large_answer_is_not_kept() -> None:
    cache = BodyCache()
    large = collection_of(20_000)  # a body of about 500 kB
    body = cache.rows_json(large)
    assert len(body) > BodyCache.MAX_BODY
    assert cache.held_bytes == 0
    assert cache.rows_json(large) is not body  # encoded again: nothing was held


def test_kept_bodies_stay_within_the_byte_bound() -> None:
    cache = BodyCache()
    for _ in range(50):
        body = cache.rows_json(collection_of(1_000, "a fairly long name for a row"))
        assert len(body) <= BodyCache.MAX_BODY
        assert cache.held_bytes <= BodyCache.MAX_BYTES
    assert cache.held_bytes > 0
