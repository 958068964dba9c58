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
        self.fail_at_batch: int | None = None
        self.streams: list[FakeStream] = []
        self.checks = 0
        self.pings = 0
        self.ping_delay = 0.0
        self.check_delay = 0.0
        self.check_error: BaseException | None = None
        self.error_on_cancel: Exception | None = None
        """Raised instead of the cancellation when a call is cancelled, as a driver
        whose connection is torn down mid-query may do."""

    @property
    def name(self) -> str:
        return self._name

    async def fetch(self, window: Window | None = None) -> list[Row]:
        """The rows in ``window``, as a database would push it down."""
        window = window or Window()
        self.calls += 1
        self.windows.append(window)
        await self.wait(self.delay)
        if self.error is not None:
            raise self.error
        rows = [
            row
            for row in self.result
            if (window.after is None or row.id > window.after)
            and (window.until is None or row.id <= window.until)
        ]
        return rows[: window.limit]

    async def wait(self, delay: float) -> None:
        """Sleep ``delay`` seconds, counting a cancellation (and translating it, if asked)."""
        try:
            await trio.sleep(delay)
        except trio.Cancelled:
            self.cancelled += 1
            if self.error_on_cancel is not None:
                raise self.error_on_cancel from None
            raise

    async def ping(self) -> None:
        self.pings += 1
        await trio.sleep(self.ping_delay)
        if not self.reachable:
            raise ConnectionRefusedError(111, "Connection refused")

    async def lowest_outside(self, ranges: tuple[tuple[int, int], ...]) -> int | None:
        """The lowest id of ``result`` outside ``ranges``, as the indexed query finds it."""
        self.checks += 1
        await trio.sleep(self.check_delay)
        if self.check_error is not None:
            raise self.check_error
        outside = [r.id for r in self.result if not any(a <= r.id <= b for a, b in ranges)]
        return min(outside, default=None)

    def open_stream(self, window: Window, batch_size: int) -> FakeStream:
        self.calls += 1
        self.windows.append(window)
        return FakeStream(self, window, batch_size)


class FakeStream:
    """A fake server-side cursor: batches of the source's rows in the window.

    ``fail_at_batch`` makes that batch (0-based) raise the source's ``error``, or
    stall past any deadline if ``error`` is None.
    """

    def __init__(self, source: FakeSource, window: Window, batch_size: int) -> None:
        self.source = source
        self.rows = [
            row
            for row in source.result
            if (window.after is None or row.id > window.after)
            and (window.until is None or row.id <= window.until)
        ][: window.limit]
        self.batch_size = batch_size
        self.served = 0
        self.batches = 0
        self.closed = False
        source.streams.append(self)

    async def next_batch(self) -> list[Row]:
        await self.source.wait(self.source.delay)
        if self.source.error is not None and self.source.fail_at_batch is None:
            raise self.source.error
        if self.source.fail_at_batch == self.batches:
            if self.source.error is not None:
                raise self.source.error
            await trio.sleep_forever()
        self.batches += 1
        batch = self.rows[self.served : self.served + self.batch_size]
        self.served += len(batch)
        return batch

    def close(self) -> None:
        self.closed = True
