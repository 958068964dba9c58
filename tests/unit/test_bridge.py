from __future__ import annotations

import asyncio
import gc

import pytest
import trio
import trio.testing

from service.sources.bridge import AsyncioBridge, DriverCancelledError


async def test_result_crosses_from_asyncio_to_trio(asyncio_bridge: AsyncioBridge) -> None:
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    assert await asyncio_bridge.run(add, 2, b=3) == 5


async def test_exception_crosses_unchanged(asyncio_bridge: AsyncioBridge) -> None:
    async def fail() -> None:
        await asyncio.sleep(0)
        raise ConnectionRefusedError("refused")

    with pytest.raises(ConnectionRefusedError, match="refused"):
        await asyncio_bridge.run(fail)


async def test_cancel_returns_without_waiting_for_asyncio_cleanup(
    asyncio_bridge: AsyncioBridge,
) -> None:
    # A driver whose clean-up after a cancel blocks (like asyncpg waiting on a
    # server that stopped answering) must not hold the Trio side.
    started = trio.Event()
    cleanup_may_finish = asyncio.Event()
    cleaned_up = False

    async def stubborn_driver() -> None:
        nonlocal cleaned_up
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            await cleanup_may_finish.wait()
            cleaned_up = True

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(asyncio_bridge.run, stubborn_driver)
            await started.wait()
            scope.cancel()
    assert scope.cancelled_caught
    assert not cleaned_up
    assert asyncio_bridge.pending == 1

    cleanup_may_finish.set()
    await asyncio_bridge.drain()
    assert cleaned_up
    assert asyncio_bridge.pending == 0


async def test_asyncio_side_cancellation_becomes_an_ordinary_error(
    asyncio_bridge: AsyncioBridge,
) -> None:
    async def cancelled_by_driver() -> None:
        raise asyncio.CancelledError

    with pytest.raises(DriverCancelledError):
        await asyncio_bridge.run(cancelled_by_driver)


async def test_drain_cancels_stragglers_when_its_time_runs_out(
    asyncio_bridge: AsyncioBridge,
) -> None:
    finished = trio.Event()

    async def survives_one_cancel() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass
        try:
            await asyncio.Event().wait()
        finally:
            finished.set()

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(asyncio_bridge.run, survives_one_cancel)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    assert asyncio_bridge.pending == 1
    assert not finished.is_set()
    with trio.CancelScope() as drain_scope:
        drain_scope.cancel()
        await asyncio_bridge.drain()
    await finished.wait()
    await asyncio_bridge.drain()  # the cancelled task has ended: nothing to wait for
    assert asyncio_bridge.pending == 0


async def test_unhandled_asyncio_error_is_logged_not_fatal(
    asyncio_bridge: AsyncioBridge, caplog: pytest.LogCaptureFixture
) -> None:
    # asyncpg leaves such futures behind when a connection dies mid-cancel;
    # trio-asyncio's own handler would re-raise it and tear the service down.
    async def leave_an_unretrieved_error() -> None:
        future = asyncio.get_running_loop().create_future()
        future.set_exception(ConnectionError("unexpected connection_lost() call"))
        del future
        gc.collect()

    await asyncio_bridge.run(leave_an_unretrieved_error)
    await trio.testing.wait_all_tasks_blocked()
    assert "unexpected connection_lost() call" in caplog.text
    assert await asyncio_bridge.run(asyncio.sleep, 0, "still serving") == "still serving"
