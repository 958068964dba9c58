"""The tuned trio-asyncio loop keeps asyncio's semantics and Trio's fairness."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
import sniffio
import trio
import trio.testing

from service.sources.aioloop import PURGE_MIN_CANCELLED, open_loop, tune

T = TypeVar("T")


async def settle(loop: asyncio.AbstractEventLoop) -> None:
    """Wait until every callback queued so far has run."""
    done = trio.Event()
    loop.call_soon(done.set)
    await done.wait()


async def test_callbacks_run_in_the_order_they_were_queued() -> None:
    ran: list[int] = []
    async with open_loop() as loop:
        for n in range(500):
            loop.call_soon(ran.append, n)
        await settle(loop)
    assert ran == list(range(500))


async def test_timers_fire_in_time_order_never_early_and_cancelled_ones_never(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fired: list[tuple[str, float]] = []
    async with open_loop() as loop:
        start = loop.time()

        def record(name: str) -> None:
            fired.append((name, loop.time() - start))

        loop.call_later(3.0, record, "third")
        loop.call_later(1.0, record, "first")
        loop.call_later(2.0, record, "cancelled").cancel()
        loop.call_later(2.0, record, "second")
        await trio.sleep(5)
    assert [name for name, _ in fired] == ["first", "second", "third"]
    assert [when for _, when in fired] == [pytest.approx(1.0), pytest.approx(2.0), 3.0]
    assert all(when >= delay for (_, when), delay in zip(fired, (1.0, 2.0, 3.0), strict=True))


async def test_cancelled_timers_do_not_pile_up(autojump_clock: trio.testing.MockClock) -> None:
    # asyncpg arms a long timer per statement and per release and cancels it soon
    # after; a cancelled timer must not stay in the heap until its time comes.
    fired: list[str] = []
    async with open_loop() as loop:
        keeper = loop.call_later(3600, fired.append, "kept")
        for _ in range(10 * PURGE_MIN_CANCELLED):
            timer = loop.call_later(3600, fired.append, "cancelled")
            await settle(loop)  # the timer is in the heap now
            timer.cancel()
        timers: list[Any] = loop._timers  # type: ignore[attr-defined]
        assert len(timers) <= 2 * PURGE_MIN_CANCELLED + 2
        assert keeper in timers
        await trio.sleep(3601)
    assert fired == ["kept"]


async def test_a_callback_that_keeps_rescheduling_itself_does_not_starve_trio() -> None:
    turns = 0
    async with open_loop() as loop:
        spinning = True

        def spin() -> None:
            nonlocal turns
            turns += 1
            if spinning:
                loop.call_soon(spin)

        loop.call_soon(spin)
        before = turns
        for _ in range(10):
            await trio.lowlevel.checkpoint()
        spinning = False
        await settle(loop)
    # Each Trio checkpoint let at most a turn or two of the spinner run.
    assert 0 < turns - before <= 30


async def test_a_failing_callback_is_reported_and_the_loop_goes_on() -> None:
    reported: list[dict[str, Any]] = []
    ran: list[str] = []

    def fail() -> None:
        raise ValueError("boom")

    async with open_loop() as loop:
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        loop.call_soon(fail)
        loop.call_soon(ran.append, "after")
        await settle(loop)
    assert [type(c["exception"]) for c in reported] == [ValueError]
    assert ran == ["after"]


async def test_asyncio_tasks_and_sniffio_see_asyncio() -> None:
    async def which_library() -> str:
        await asyncio.sleep(0)
        return sniffio.current_async_library()

    async with open_loop() as loop:
        task = asyncio.ensure_future(which_library(), loop=loop)
        done = trio.Event()
        task.add_done_callback(lambda _task: done.set())
        await done.wait()
        assert task.result() == "asyncio"
        assert sniffio.current_async_library() == "trio"


async def test_work_queued_before_exit_still_runs() -> None:
    ran: list[int] = []
    async with open_loop() as loop:
        for n in range(100):
            loop.call_soon(ran.append, n)
    assert ran == list(range(100))


def test_a_loop_of_unknown_make_is_left_as_it_is(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.SelectorEventLoop()
    try:
        call_soon = loop.call_soon
        assert tune(loop) is False
        assert loop.call_soon == call_soon
    finally:
        loop.close()
    assert "untuned" in caplog.text


async def test_timers_cancelled_before_reaching_the_heap_are_not_counted() -> None:
    # Only timers in the heap count towards a purge; counting the others would make
    # the loop rebuild its heap far more often than needed.
    async with open_loop() as loop:
        await settle(loop)  # the turn that was waiting when the loop was tuned is over
        dispatcher: Any = loop._main_loop_one.__self__  # type: ignore[attr-defined]
        for _ in range(10 * PURGE_MIN_CANCELLED):
            loop.call_later(3600, print).cancel()
        assert dispatcher._cancelled_timers == 0
        await settle(loop)
        assert loop._timers == []  # type: ignore[attr-defined]


async def test_only_timers_still_in_the_heap_count_towards_a_purge(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Counting timers that already fired, or one timer twice, would make the loop
    # rebuild its heap far more often than needed.
    async with open_loop() as loop:
        dispatcher: Any = loop._main_loop_one.__self__  # type: ignore[attr-defined]
        fired = [loop.call_later(1, print) for _ in range(10)]
        pending = [loop.call_later(3600, print) for _ in range(10)]
        await trio.sleep(2)
        for timer in fired + pending + pending:
            timer.cancel()
        assert dispatcher._cancelled_timers == len(pending)


async def test_a_timer_set_while_the_loop_waits_wakes_it_in_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_loop() as loop:
        await settle(loop)
        await trio.sleep(1)  # the loop has nothing to do and waits with no deadline
        fired = trio.Event()
        start = trio.current_time()
        loop.call_later(5, fired.set)
        await fired.wait()
        assert trio.current_time() - start == pytest.approx(5)


async def run_on(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """Run an asyncio coroutine on ``loop`` as a task and return its result."""
    task = asyncio.ensure_future(coro, loop=loop)
    done = trio.Event()
    task.add_done_callback(lambda _task: done.set())
    await done.wait()
    return task.result()


def io_tasks(loop: asyncio.AbstractEventLoop) -> list[str]:
    """The Trio tasks trio-asyncio runs to watch a file descriptor (one per reader or writer)."""
    nursery: trio.Nursery = loop._nursery  # type: ignore[attr-defined]
    return [t.name for t in nursery.child_tasks if "_io_task" in t.name]


async def test_readers_run_while_their_socket_is_readable_until_removed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    received: list[bytes] = []
    got_data = trio.Event()
    left, right = socket.socketpair()
    with left, right:
        left.setblocking(False)

        def read() -> None:
            received.append(left.recv(100))
            got_data.set()

        async with open_loop() as loop:
            loop.add_reader(left.fileno(), read)
            right.send(b"ping")
            await got_data.wait()
            assert loop.remove_reader(left.fileno())
            right.send(b"unread")
            for _ in range(5):
                await settle(loop)
                await trio.sleep(0.01)
            assert io_tasks(loop) == []
    assert received == [b"ping"]


async def test_writers_run_when_their_socket_is_writable() -> None:
    writable = trio.Event()
    left, right = socket.socketpair()
    with left, right:
        async with open_loop() as loop:
            loop.add_writer(left.fileno(), writable.set)
            with trio.fail_after(5):
                await writable.wait()
            assert loop.remove_writer(left.fileno())


async def test_asyncio_streams_talk_over_tcp_and_leave_no_socket_watcher_behind() -> None:
    size = 1_000_000  # more than a socket buffer: writes wait for the writer callback

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(size))
        await writer.drain()
        writer.close()

    async def round_trips() -> list[bytes]:
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        answers = []
        async with server:
            for n in range(5):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(bytes([n]) * size)
                answers.append(await reader.readexactly(size))
                writer.close()
                await writer.wait_closed()
        return answers

    async with open_loop() as loop:
        answers = await run_on(loop, round_trips())
        assert io_tasks(loop) == []
    assert answers == [bytes([n]) * size for n in range(5)]


async def test_a_callback_queued_from_another_thread_wakes_the_loop() -> None:
    ran = trio.Event()
    async with open_loop() as loop:
        await settle(loop)
        with trio.fail_after(5):
            await trio.to_thread.run_sync(loop.call_soon_threadsafe, ran.set)
            await ran.wait()
