"""Cursor algebra: where the page after a partial page starts, for every source.

The cursor keeps a position per source, so a source that missed a page is asked
again from where it stopped: a partial page never makes the client skip ids.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from service.core.model import Cursor, Outcome, Query, Row


def next_cursor(
    query: Query,
    outcomes: Sequence[Outcome],
    batches: Sequence[Sequence[Row]],
    page: Sequence[Row],
) -> Cursor | None:
    """Where the page after ``page`` starts, or None if every source is exhausted.

    Each source gets its own next position: a source that missed the page stays
    where it was (it is asked again from there); a source some of whose rows at
    or below the page's last id did not fit (equal ids cut by the limit) resumes
    after its last row that did; any other source moves to the page's last id,
    or stays ahead if it already was. The cursor names the furthest position as
    ``after`` and lists the sources behind it.
    """
    assert query.limit is not None
    last = page[-1].id if page else None
    used = _rows_taken(batches, page)
    more = False
    positions: list[tuple[str, int | None]] = []
    for index, outcome in enumerate(outcomes):
        own_after = query.window_for(outcome.source).after
        batch, taken = batches[index], used[index]
        if not outcome.status.answered:
            more = True
            position = own_after
        else:
            if taken < len(batch) or len(batch) == query.limit:
                more = True  # rows left over, or a full batch: the source may hold more
            if taken < len(batch) and last is not None and batch[taken].id <= last:
                position = batch[taken - 1].id if taken else own_after
            else:
                position = _furthest(own_after, last)
        positions.append((outcome.source, position))
    return cursor_at(positions) if more else None


def _rows_taken(batches: Sequence[Sequence[Row]], page: Sequence[Row]) -> list[int]:
    """How many rows of each batch the page took, matched by identity (equal ids differ)."""
    used = [0] * len(batches)
    for row in page:
        for index, batch in enumerate(batches):
            if used[index] < len(batch) and batch[used[index]] is row:
                used[index] += 1
                break
    return used


def cursor_at(positions: Sequence[tuple[str, int | None]], done: Collection[str] = ()) -> Cursor:
    """A cursor from per-source positions: the furthest is ``after``, the rest lag.

    Sources in ``done`` have nothing left to give, so they are never listed.
    """
    after: int | None = None
    for _, position in positions:
        after = _furthest(after, position)
    behind = tuple(p for p in positions if p[1] != after and p[0] not in done)
    return Cursor(after=after, behind=behind)


def _furthest(a: int | None, b: int | None) -> int | None:
    """The later of two positions, where None is the very start."""
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)
