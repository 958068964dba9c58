"""How often the embedded PostgreSQL outlives ``collector serve`` stopped by its process group.

    uv run python bench/embedded_stop.py --runs 10 --mode term        # SIGTERM to the group
    uv run python bench/embedded_stop.py --runs 10 --mode term-term   # and again during shutdown
    uv run python bench/embedded_stop.py --runs 10 --mode kill        # SIGKILL to the group

Each run starts the service with no config on a fresh data directory, signals
its group as soon as it says it is serving, and counts the PostgreSQL servers
still running on that directory 5 s after the service has gone (then kills them).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

COMMAND = [sys.executable, "-m", "service", "serve", "--port", "0"]


def left_on(data: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name", "cmdline", "status"]):
        if (
            process.info["name"] == "postgres"
            and str(data) in (process.info["cmdline"] or [])
            and process.info["status"] != psutil.STATUS_ZOMBIE
        ):
            found.append(process)
    return found


def one_run(mode: str) -> bool:
    """True when a server was left behind."""
    scratch = Path(tempfile.mkdtemp(prefix="collector-bench-"))
    scratch.chmod(0o755)
    data = scratch / "pgdata"
    env = {**os.environ, "COLLECTOR_DATA_DIR": str(data), "COLLECTOR_CONFIG": ""}
    process = subprocess.Popen(
        COMMAND,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if "serving " in line:
            break
    first = signal.SIGKILL if mode == "kill" else signal.SIGTERM
    os.killpg(process.pid, first)
    if mode == "term-term":
        for line in process.stdout:
            if "shutting down" in line:
                break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    process.stdout.read()
    process.wait(30)
    time.sleep(5)
    left = left_on(data)
    for server in left:
        server.kill()
    shutil.rmtree(scratch, ignore_errors=True)
    return bool(left)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--mode", choices=["term", "term-term", "kill"], default="term")
    args = parser.parse_args()
    leaked = sum(one_run(args.mode) for _ in range(args.runs))
    print(f"{args.mode}: {leaked} of {args.runs} runs left a server behind")


if __name__ == "__main__":
    main()
