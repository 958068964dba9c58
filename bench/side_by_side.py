"""Two builds of the service, measured side by side under the same machine conditions.

Run from the repository root (not part of the test suite):

    uv run python bench/side_by_side.py OTHER_CHECKOUT [--requests 3000] [--connections 1]

On a shared machine, speed drifts by tens of percent over minutes, so two builds run one
after the other can swap places from one minute to the next. Here both serve at once,
each from its own checkout and environment, with the reference data on the local
PostgreSQL, and the requests alternate between them in rounds (A then B, then B then A):
whatever the machine does, both see it. For each build it prints the server's CPU per
request (from ``/proc``), throughput, median and p99 latency, and the median added
latency over the slowest source (``Server-Timing``), over bare keep-alive sockets.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.measure import Connection, cpu_seconds, get_request
from tests.e2e.conftest import write_config
from tests.support import pg

ROUNDS = 10
WARM_UP = 50
_SERVING = re.compile(rb"serving (http://\S+)/collect-data")


@dataclasses.dataclass
class Build:
    """One running server and what was measured on it."""

    name: str
    url: str
    pid: int
    latencies: list[float] = dataclasses.field(default_factory=list)
    added: list[float] = dataclasses.field(default_factory=list)
    cpu: float = 0.0
    wall: float = 0.0


async def start(checkout: Path, config: Path, nursery: trio.Nursery) -> tuple[str, trio.Process]:
    """``collector serve`` from ``checkout``'s own environment, on a free port."""
    command = ["uv", "run", "--directory", str(checkout), "collector", "serve"]
    command += ["--config", str(config), "--port", "0"]
    run = partial(trio.run_process, command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    process = await nursery.start(run)
    assert process.stdout is not None
    seen = b""
    with trio.fail_after(60):
        while (match := _SERVING.search(seen)) is None:
            chunk = await process.stdout.receive_some()
            if not chunk:
                raise RuntimeError(f"{checkout}: collector serve did not start:\n{seen.decode()}")
            seen += chunk
    nursery.start_soon(drain, process.stdout)
    return match[1].decode(), process


async def drain(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some():
        pass


async def measure(builds: list[Build], requests: int, connections: int, path: str) -> None:
    pools = [[Connection.to(build.url) for _ in range(connections)] for build in builds]
    request = get_request(path)
    for pool in pools:
        for connection in pool:
            for _ in range(WARM_UP):
                await connection.get(request)
    per_client = max(1, requests // ROUNDS // connections)
    for round_ in range(ROUNDS):
        order = (0, 1) if round_ % 2 == 0 else (1, 0)
        for index in order:
            build, pool = builds[index], pools[index]

            async def client(connection: Connection, build: Build = build) -> None:
                for _ in range(per_client):
                    total, added = await connection.get(request)
                    build.latencies.append(total)
                    build.added.append(added)

            before, started = cpu_seconds(build.pid), time.perf_counter()
            async with trio.open_nursery() as nursery:
                for connection in pool:
                    nursery.start_soon(client, connection)
            build.cpu += cpu_seconds(build.pid) - before
            build.wall += time.perf_counter() - started


async def side_by_side(checkouts: list[Path], config: Path, args: argparse.Namespace) -> None:
    async with trio.open_nursery() as nursery:
        builds = []
        for checkout in checkouts:
            url, process = await start(checkout, config, nursery)
            builds.append(Build(str(checkout), url, process.pid))  # CPU counts its children
        try:
            await measure(builds, args.requests, args.connections, args.path)
        finally:
            nursery.cancel_scope.cancel()
    print(f"\n{args.requests} requests per build, {args.connections} connection(s), ", end="")
    print(f"{ROUNDS} rounds")
    for build in builds:
        count = len(build.latencies)
        print(
            f"{build.name}: {count / build.wall:.0f} req/s, CPU {build.cpu / count * 1000:.3f} "
            f"ms/req, p50 {statistics.median(build.latencies):.2f} ms, "
            f"p99 {statistics.quantiles(build.latencies, n=100)[98]:.2f} ms, "
            f"added p50 {statistics.median(build.added):.2f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="the other build's checkout (uv-managed)")
    parser.add_argument("--requests", type=int, default=3000, help="per build")
    parser.add_argument("--connections", type=int, default=1, help="per build")
    parser.add_argument("--path", default="/collect-data")
    parser.add_argument("--coalesce", action="store_true", help="serve with coalescing on")
    parser.add_argument("--dsn", default=pg.LOCAL_DSN)
    args = parser.parse_args()
    here = Path(__file__).resolve().parent.parent
    with pg.reference_databases(args.dsn) as config, tempfile.TemporaryDirectory() as workdir:
        path = write_config(Path(workdir) / "ab.toml", config, coalesce=args.coalesce)
        trio.run(side_by_side, [args.other.resolve(), here], path, args)


if __name__ == "__main__":
    main()
