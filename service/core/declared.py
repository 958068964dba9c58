"""Whether each source's declared ``ids`` can be trusted for pruning.

A declaration is a promise made by an operator, and the table may break it (a row
inserted outside the ranges). Pruning on a broken promise silently drops rows from
pages and lookups, so a source may be pruned only once its rows have been checked
against its declaration and none lay outside. Each declared source has a state::

    unknown   not checked yet, or the last check failed: never pruned
    verified  the last check found no row outside the ranges: may be pruned
    violated  the last check found a row outside: never pruned

The check is one indexed query per source (``Source.lowest_outside``), run at
start-up and then every ``ids_check_interval`` seconds. Only transitions are
logged, never each check.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from enum import StrEnum
from typing import NoReturn, Protocol

import trio

log = logging.getLogger("collector.declared")

#: The bounds of a BIGINT: no id of an INT or BIGINT column lies beyond them.
LOWEST_ID = -(2**63)
HIGHEST_ID = 2**63 - 1
#: Longest failure reason kept for the log line.
MAX_REASON_LENGTH = 200

Ranges = tuple[tuple[int, int], ...]


class IdsState(StrEnum):
    """What is known about a source's rows against its declared ranges."""

    UNKNOWN = "unknown"
    VERIFIED = "verified"
    VIOLATED = "violated"


class Checkable(Protocol):
    """A source that can find its lowest id outside given ranges."""

    @property
    def name(self) -> str:
        """The source's configured name."""
        ...

    async def lowest_outside(self, ranges: Ranges) -> int | None:
        """The lowest id in the table outside the inclusive ``ranges``; None if none."""
        ...


def gaps(ranges: Ranges) -> Ranges:
    """The inclusive id ranges between and around sorted, disjoint ``ranges``.

    Querying the gaps (a bounded index scan each) rather than ``NOT (... OR ...)``
    lets the primary key answer without reading the rows inside the ranges.
    """
    found: list[tuple[int, int]] = []
    low = LOWEST_ID
    for first, last in ranges:
        if first > low:
            found.append((low, first - 1))
        low = max(low, last + 1)
    if low <= HIGHEST_ID:
        found.append((low, HIGHEST_ID))
    return tuple(found)


class DeclaredIds:
    """The ids state of every source that declares ranges; checks them on demand."""

    def __init__(self, declared: Sequence[tuple[Checkable, Ranges]], timeout: float) -> None:
        self._declared = tuple(declared)
        self._timeout = timeout
        self._states = {source.name: IdsState.UNKNOWN for source, _ in self._declared}

    def state(self, name: str) -> IdsState | None:
        """The source's state; None when it declares no ranges."""
        return self._states.get(name)

    def states(self) -> dict[str, IdsState]:
        """Every declared source's state as of now."""
        return dict(self._states)

    def prunable(self, name: str) -> bool:
        """Whether the source's declaration may be used to skip it: only when verified."""
        return self._states.get(name) is IdsState.VERIFIED

    async def check(self) -> None:
        """Check every declared source at once, each within the source deadline."""
        async with trio.open_nursery() as nursery:
            for source, ranges in self._declared:
                nursery.start_soon(self._check_one, source, ranges)

    async def watch(self, interval: float, *, checked: bool = False) -> NoReturn:
        """Check every ``interval`` seconds until cancelled; at once unless ``checked``."""
        if not checked:
            await self.check()
        while True:
            await trio.sleep(interval)
            await self.check()

    async def _check_one(self, source: Checkable, ranges: Ranges) -> None:
        lowest: int | None = None
        reason: str | None = f"no answer within {self._timeout:g} s"
        with trio.move_on_after(self._timeout):
            try:
                lowest = await source.lowest_outside(ranges)
            except Exception as exc:  # any failure only means "not known"
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:MAX_REASON_LENGTH]
            else:
                reason = None
        if reason is not None:
            self.record(source.name, IdsState.UNKNOWN, reason=reason)
        elif lowest is None:
            self.record(source.name, IdsState.VERIFIED)
        else:
            self.record(source.name, IdsState.VIOLATED, lowest=lowest)

    def record(
        self, name: str, state: IdsState, *, lowest: int | None = None, reason: str | None = None
    ) -> None:
        """Set a source's state, logging one line when it changes."""
        before = self._states[name]
        self._states[name] = state
        if state is before:
            return
        fields = {"source": name, "ids_state": str(state), "previous": str(before)}
        if state is IdsState.VIOLATED:
            log.warning(
                "source %s holds id %d outside its declared ids: it is no longer pruned",
                name,
                lowest,
                extra={**fields, "lowest_outside": lowest},
            )
        elif state is IdsState.VERIFIED:
            log.info("source %s holds only its declared ids: pruned by them", name, extra=fields)
        else:
            log.warning(
                "source %s: declared ids could not be checked (%s): not pruned",
                name,
                reason,
                extra={**fields, "reason": reason},
            )
