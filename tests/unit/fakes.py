"""Fake sources for the core and HTTP tests: behaviour chosen per test, no I/O."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from service.core import Row, Window


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
        self.windows: list[Window] = []
        self.cancelled = 0
        self.reachable = error is None

    @property
    def name(self) -> str:
        return self._name

    async def fetch(self, window: Window | None = None) -> list[Row]:
        """The rows in ``window``, as a database would push it down."""
        window = window or Window()
        self.calls += 1
        self.windows.append(window)
        try:
            await trio.sleep(self.delay)
        except trio.Cancelled:
            self.cancelled += 1
            raise
        if self.error is not None:
            raise self.error
        rows = [
            row
            for row in self.result
            if (window.after is None or row.id > window.after)
            and (window.until is None or row.id <= window.until)
        ]
        return rows[: window.limit]

    async def ping(self) -> None:
        if not self.reachable:
            raise ConnectionRefusedError(111, "Connection refused")
