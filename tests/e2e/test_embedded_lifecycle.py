"""The embedded PostgreSQL stops whenever ``collector serve`` stops, however it is stopped.

Each test runs the real command with no config in its own process group (as a
supervisor, ``timeout`` or systemd would) and looks for PostgreSQL processes
still running on the test's data directory afterwards.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from service.embedded import HANDLES_FILE
from tests.e2e.conftest import START_TIMEOUT, STOP_TIMEOUT, collector_command

pytestmark = pytest.mark.e2e

#: Seconds the embedded server may take to go once the service has gone.
GONE_WITHIN = 5.0


class Service:
    """``collector serve`` with no config, in a process group of its own."""

    def __init__(self, data: Path) -> None:
        self.process = subprocess.Popen(
            [*collector_command(), "serve", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "COLLECTOR_DATA_DIR": str(data), "COLLECTOR_CONFIG": ""},
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.output.append(line)
            if text in line:
                return
        self.process.kill()
        self.wait()
        pytest.fail(f"no {text!r} from collector serve:\n" + "".join(self.output))

    def signal_group(self, signum: int) -> None:
        os.killpg(self.process.pid, signum)

    def wait(self) -> int:
        """The exit code, once the service is gone (killed if it takes too long)."""
        try:
            return self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        finally:
            self.reader.join(STOP_TIMEOUT)
            while not self.lines.empty():
                self.output.append(self.lines.get())
            assert self.process.stdout is not None
            self.process.stdout.close()


def servers_on(data: Path) -> list[psutil.Process]:
    """PostgreSQL processes running on ``data``."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "postgres" and str(data) in cmdline and _running(process):
            found.append(process)
    return found


def assert_no_server_left(data: Path) -> None:
    deadline = time.monotonic() + GONE_WITHIN
    while servers_on(data) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = servers_on(data)
    for process in left:  # do not leak it into later tests
        process.kill()
    assert not left, f"PostgreSQL still running on {data}: {[p.pid for p in left]}"


def start_and_stop(data: Path) -> None:
    """A later run starts, serves and stops cleanly, leaving no server and no handle."""
    service = Service(data)
    service.wait_for("serving ")
    service.signal_group(signal.SIGTERM)
    assert service.wait() == 0, "".join(service.output)
    assert_no_server_left(data)
    assert json.loads((data / HANDLES_FILE).read_text() or "[]") == []


@pytest.fixture
def data() -> Iterator[Path]:
    """A fresh data directory outside pytest's own (which other runs may lock to 0700:
    the embedded server runs as another user when the tests run as root)."""
    scratch = Path(tempfile.mkdtemp(prefix="collector-e2e-"))
    scratch.chmod(0o755)
    yield scratch / "pgdata"
    for process in servers_on(scratch / "pgdata"):
        process.kill()
    shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.parametrize(
    "signum",
    [signal.SIGTERM, signal.SIGKILL],
    ids=["sigterm", "sigkill"],
)
def test_a_signal_to_the_group_right_after_readiness_stops_the_server(
    data: Path, signum: int
) -> None:
    # SIGTERM: the service stops it; SIGKILL: nothing of the service runs again,
    # and the watchdog must stop it.
    service = Service(data)
    service.wait_for("serving ")
    service.signal_group(signum)
    service.wait()
    assert_no_server_left(data)
    start_and_stop(data)


@pytest.mark.parametrize(
    "signals",
    [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGTERM)],
    ids=["term-term", "int-term"],
)
def test_a_second_signal_during_shutdown_still_stops_the_server(
    data: Path, signals: tuple[int, int]
) -> None:
    service = Service(data)
    service.wait_for("serving ")
    first, second = signals
    service.signal_group(first)
    service.wait_for("shutting down", timeout=STOP_TIMEOUT)
    service.signal_group(second)
    service.wait()
    assert_no_server_left(data)
    start_and_stop(data)


def test_sigterm_while_starting_stops_the_server(data: Path) -> None:
    service = Service(data)
    deadline = time.monotonic() + START_TIMEOUT
    while not servers_on(data) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert servers_on(data), "the embedded server never started"
    service.signal_group(signal.SIGTERM)
    service.wait()
    assert_no_server_left(data)
    start_and_stop(data)


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE  # exited, not yet reaped
    except psutil.NoSuchProcess:
        return False
