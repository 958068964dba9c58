"""The streaming merge: every source's server-side cursor, merged by id a batch at a time.

Memory stays bounded by the number of sources times the batch size: a source's next
batch is fetched only when the merge has used up its previous one.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import AsyncGenerator, Sequence

import trio

from service.core.breaker import Permit
from service.core.guard import Guard, traced_attempt
from service.core.model import Answer, Outcome, Query, Row, Status, Window
from service.core.paging import cursor_at
from service.core.ports import RowStream

#: A source's place in the merge: its next row's id, its index, the row's position.
HeapEntry = tuple[int, int, int]


class StreamState:
    """One source's progress through a streamed collection."""

    def __init__(self, guard: Guard, window: Window) -> None:
        self.guard = guard
        self.window = window
        self.permit: Permit | None = None
        self.stream: RowStream | None = None
        self.batch: list[Row] = []
        self.ids: list[int] = []
        self.status = Status.OK
        self.error: str | None = None
        self.finished = False
        self.delivered = 0
        self.last_id: int | None = None
        self.duration = 0.0
        self.out_of_range = 0
        self.replica: str | None = None

    @property
    def position(self) -> int | None:
        """The id this source's next rows come after."""
        return self.window.after if self.last_id is None else self.last_id

    async def start(self, batch_size: int, batch_seconds: float) -> None:
        """Open the cursor and read its first batch, unless the source is not to be asked."""
        clearance = self.guard.clearance(self.window)
        if isinstance(clearance, tuple):
            (self.status, self.error), self.finished = clearance, True
            return
        self.permit = clearance
        self.stream = self.guard.source.open_stream(self.window, batch_size)
        await self.advance(batch_seconds)

    async def advance(self, batch_seconds: float) -> None:
        """Read the next batch; a failure or an empty batch ends this source."""
        assert self.stream is not None
        start = trio.current_time()
        self.status, batch, self.error = await traced_attempt(
            self.guard.name, "stream.batch", self.stream.next_batch, batch_seconds
        )
        self.replica = getattr(self.stream, "replica", None)  # a replica set's choice
        self.batch, self.ids = list(batch), [row.id for row in batch]
        self.duration += trio.current_time() - start
        self.out_of_range += self.guard.count_stray(self.batch)
        if self.status is not Status.OK or not self.batch:
            self.finished = True
            self.guard.verdict(
                self.permit, self.status, self.error, duration=self.duration, rows=self.delivered
            )
            self.permit = None

    def finish(self) -> None:
        """Close the cursor; a source still giving rows gets no verdict (cut short)."""
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        if self.permit is not None:
            self.guard.breaker.release(self.permit)  # the client stopped reading first
            self.permit = None

    def outcome(self) -> Outcome:
        """What this source contributed to the stream: only ids after its last row are missing."""
        return self.guard.outcome(
            self.status,
            rows=self.delivered,
            duration=self.duration,
            error=self.error,
            out_of_range=self.out_of_range,
            resumes_after=self.position,
            replica=self.replica,
        )


async def merge_streams(
    guards: Sequence[Guard],
    query: Query,
    batch_size: int,
    batch_seconds: float,
    stop: trio.Event | None,
) -> AsyncGenerator[list[Row] | Answer, None]:
    """Yield the merged rows in chunks of ``batch_size``, then the summary."""
    states = [StreamState(guard, query.window_for(guard.name)) for guard in guards]
    chunk: list[Row] = []
    rows_left = query.limit
    interrupted = None
    try:  # from the opening on: a client gone at any point closes every cursor
        async with trio.open_nursery() as nursery:  # open every cursor at once
            for state in states:
                nursery.start_soon(state.start, batch_size, batch_seconds)
        heap = [(st.batch[0].id, i, 0) for i, st in enumerate(states) if st.batch]
        heapq.heapify(heap)
        while heap and (rows_left is None or rows_left > 0):
            if stop is not None and stop.is_set():
                interrupted = "shutdown"
                break
            room = batch_size - len(chunk)
            if rows_left is not None:
                room = min(room, rows_left)
            taken = await _take_run(states, heap, room, batch_seconds)
            chunk.extend(taken)
            if rows_left is not None:
                rows_left -= len(taken)
            if len(chunk) >= batch_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
    finally:
        for state in states:
            state.finish()
    yield summary(states, interrupted)


async def _take_run(
    states: Sequence[StreamState], heap: list[HeapEntry], room: int, batch_seconds: float
) -> list[Row]:
    """Take the lowest source's rows that sort before every other source's next row.

    One slice per run rather than a heap operation per row: with sources holding
    runs of ids, most rows never touch the heap. At most ``room`` rows are taken.
    """
    _, index, position = heapq.heappop(heap)
    state = states[index]
    end = len(state.batch)
    if heap:
        end = max(bisect.bisect_left(state.ids, heap[0][0], position, end), position + 1)
    end = min(end, position + room)
    taken = state.batch[position:end]
    state.delivered += len(taken)
    state.last_id = taken[-1].id
    if end < len(state.batch):
        heapq.heappush(heap, (state.batch[end].id, index, end))
    elif not state.finished:
        await state.advance(batch_seconds)
        if state.batch:
            heapq.heappush(heap, (state.batch[0].id, index, 0))
    return taken


def summary(states: Sequence[StreamState], interrupted: str | None) -> Answer:
    """The stream's last item: every source's outcome and the cursor to resume from."""
    outcomes = [state.outcome() for state in states]
    # Sources that delivered everything they hold can start anywhere.
    done = {st.guard.name for st in states if st.finished and st.status.answered}
    cursor = None
    if len(done) < len(states):
        cursor = cursor_at([(st.guard.name, st.position) for st in states], done)
    return Answer(rows=[], outcomes=tuple(outcomes), next=cursor, interrupted=interrupted)
