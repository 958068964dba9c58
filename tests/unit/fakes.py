"""Fake sources for the core and HTTP tests: behaviour chosen per test, no I/O."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from service.core import Row


def rows(*ids: int) -> list[Row]:
    return [Row(i, f"Test {i}") for i in ids]


class FakeSource:
    """Answers ``result`` after ``delay`` seconds of (virtual) time, or raises ``error``."""

    def __init__(
        self,
        name: str,
        result: Sequence[Row] = (),
        *,
        delay: float = 0.0,
        error: BaseException | None = None,
    ) -> None:
        self._name = name
        self.result = list(result)
        self.delay = delay
        self.error = error
        self.calls = 0
        self.cancelled = 0
        self.reachable = error is None

    @property
    def name(self) -> str:
        return self._name

    async def fetch(self) -> list[Row]:
        self.calls += 1
        try:
            await trio.sleep(self.delay)
        except trio.Cancelled:
            self.cancelled += 1
            raise
        if self.error is not None:
            raise self.error
        return list(self.result)

    async def ping(self) -> None:
        if not self.reachable:
            raise ConnectionRefusedError(111, "Connection refused")
