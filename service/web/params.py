"""Query parameters of /collect-data: parsing and validation, one rule per name.

    limit   rows per page, 1 to MAX_LIMIT; absent means every row
    after   only ids greater than this (a 64-bit integer); absent means from the start
    behind  sources that lag behind ``after``, as returned in a next-page cursor:
            ``name:id`` or ``name`` (from the start), comma-separated

Any other parameter, and any parameter given twice, is rejected with 400: a typo
such as ``limt`` must not silently return every row.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from urllib.parse import urlencode

from service.core import Cursor, Query

#: The largest page a client may ask for; bigger answers should be streamed.
MAX_LIMIT = 10_000
MIN_ID = -(2**63)
MAX_ID = 2**63 - 1
KNOWN = ("limit", "after", "behind")


class ParamError(Exception):
    """A bad parameter; ``name`` and ``reason`` go into the problem document."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def parse_query(pairs: Iterable[tuple[str, str]], sources: Collection[str]) -> Query:
    """The Query that /collect-data's parameters ask for."""
    values: dict[str, str] = {}
    for name, value in pairs:
        if name not in KNOWN:
            raise ParamError(name, f"unknown parameter (known: {', '.join(KNOWN)})")
        if name in values:
            raise ParamError(name, "given more than once")
        values[name] = value
    limit = None
    if "limit" in values:
        limit = parse_int("limit", values["limit"], 1, MAX_LIMIT)
    after = None
    if "after" in values:
        after = parse_int("after", values["after"], MIN_ID, MAX_ID)
    behind = parse_behind(values["behind"], sources) if "behind" in values else ()
    return Query(after=after, limit=limit, behind=behind)


def parse_id(text: str) -> int:
    """The id in /collect-data/{id}."""
    return parse_int("id", text, MIN_ID + 1, MAX_ID)


def query_for_id(wanted: int) -> Query:
    """The query for exactly one id: the window ``(wanted - 1, wanted]``.

    Sources prune by window, so only those whose declared ranges hold the id are
    asked; ``parse_id``'s lower bound keeps ``wanted - 1`` a 64-bit integer.
    """
    return Query(after=wanted - 1, until=wanted)


def parse_int(name: str, text: str, low: int, high: int) -> int:
    """An integer in ``[low, high]``, written in plain decimal."""
    stripped = text[1:] if text.startswith("-") else text
    if not stripped.isdecimal() or not stripped.isascii() or len(stripped) > 20:
        raise ParamError(name, f"must be an integer, got {text[:40]!r}")
    value = int(text)
    if not low <= value <= high:
        raise ParamError(name, f"must be between {low} and {high}")
    return value


def parse_behind(text: str, sources: Collection[str]) -> tuple[tuple[str, int | None], ...]:
    """``name[:id],...`` into (source, position) pairs; empty means none."""
    entries: list[tuple[str, int | None]] = []
    if not text:
        return ()
    for item in text.split(","):
        name, colon, position = item.partition(":")
        if name not in sources:
            raise ParamError("behind", f"unknown source {name[:64]!r}")
        if any(name == seen for seen, _ in entries):
            raise ParamError("behind", f"source {name!r} named twice")
        entries.append((name, parse_int("behind", position, MIN_ID, MAX_ID) if colon else None))
    return tuple(entries)


def cursor_params(limit: int | None, cursor: Cursor) -> str:
    """The query string of the next page (or of the rest of a stream: no limit)."""
    pairs: list[tuple[str, str]] = [] if limit is None else [("limit", str(limit))]
    if cursor.after is not None:
        pairs.append(("after", str(cursor.after)))
    if cursor.behind:
        behind = ",".join(n if p is None else f"{n}:{p}" for n, p in cursor.behind)
        pairs.append(("behind", behind))
    return urlencode(pairs, safe=":,")
