"""Freed memory is handed back to the OS after a large answer, once and off the loop."""

from __future__ import annotations

import os
import threading

import pytest
import trio

from service.core import Collector
from service.runtime.memory import MemoryReleaser, glibc_malloc_trim
from service.web import create_app
from tests.unit.fakes import FakeSource, rows


class RecordingTrim:
    """A trim that notes the thread it ran on."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def __call__(self) -> None:
        self.threads.append(threading.current_thread())


async def test_a_large_answer_is_followed_by_a_trim_off_the_event_loop() -> None:
    trim = RecordingTrim()
    releaser = MemoryReleaser(trim, threshold=1_000)
    source = FakeSource("a", rows(*range(1, 201)))  # a body of about 5 kB
    client = create_app(Collector([source], 2.0), releaser=releaser).test_client()

    response = await client.get("/collect-data")
    assert len(await response.get_data()) > 1_000
    assert releaser.trims == 1
    assert trim.threads != [threading.main_thread()]  # it ran on a worker thread

    small = await client.get("/collect-data?limit=1")
    assert len(await small.get_data()) < 1_000
    assert releaser.trims == 1  # a small answer frees too little to trim for


async def test_trims_never_overlap_and_an_answer_during_one_gets_another() -> None:
    started, release = threading.Event(), threading.Event()
    running = []

    def slow_trim() -> None:
        running.append(1)
        assert len(running) == 1
        started.set()
        release.wait(10)
        running.pop()

    releaser = MemoryReleaser(slow_trim, threshold=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(releaser.answered, 10)
        await trio.to_thread.run_sync(started.wait, 10)
        await releaser.answered(10)  # returns at once: the running one will trim again
        await releaser.answered(10)
        release.set()
    assert releaser.trims == 2


async def test_a_cancelled_request_still_finishes_its_trim() -> None:
    trim = RecordingTrim()
    releaser = MemoryReleaser(trim, threshold=1)
    with trio.CancelScope() as scope:
        scope.cancel()
        await releaser.answered(10)
    assert releaser.trims == 1


async def test_without_a_trim_function_nothing_happens() -> None:
    releaser = MemoryReleaser(None, threshold=1)
    await releaser.answered(10**9)
    assert releaser.trims == 0


def test_glibc_trim_is_found_only_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    trim = glibc_malloc_trim()
    try:
        on_glibc = bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (AttributeError, ValueError):
        on_glibc = False
    assert (trim is not None) == on_glibc
    if trim is not None:
        assert trim() in (0, 1)  # malloc_trim reports whether it released anything

    def no_such_name(name: str) -> str:
        raise ValueError(name)

    monkeypatch.setattr(os, "confstr", no_such_name)
    assert glibc_malloc_trim() is None
