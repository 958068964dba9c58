"""Serving starts with the garbage collector tuned for many short-lived objects."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from service.runtime.heap import GC_YOUNG_THRESHOLD, settle_heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    """Put the collector back as it was, for the tests that follow."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_settled_heap_hides_start_up_objects_and_collects_young_ones_less_often(
    restored_gc: None,
) -> None:
    built_at_start_up = [[] for _ in range(1000)]
    older = gc.get_threshold()[1:]
    settle_heap()
    assert gc.get_freeze_count() >= len(built_at_start_up)
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *older)
