"""Replicas, hedged reads and active probes under faults, through the fault proxy.

Run from the repository root (not part of the test suite):

    uv run python bench/replicas.py [--duration 8] [--rounds 2] [--connections 16] [--dsn ...]

It creates the three reference databases on the server (default 127.0.0.1:5432) and
puts two fault proxies in front of each: every source has two replicas (two pools,
two breakers) holding the same rows. For each scenario it starts the real
``collector serve`` (deadline 2 s, default keys unless the scenario says otherwise)
and keeps ``--connections`` keep-alive connections busy for ``--duration`` seconds,
counting complete answers (``Collection-Complete: ?1``) and latency:

- healthy: both replicas of every source pass;
- black-holed: replica 0 of every source accepts and never answers;
- delayed: replica 0 of every source holds every chunk 300 ms (hedge delay "auto",
  then a fixed 20 ms), with hedges and fetches read from /metrics;
- recovery: a single-server source black-holed until its breaker opens, then
  healed: the time to the first complete answer, and how many requests after the
  breaker opened waited the whole deadline.

Everything runs on 127.0.0.1 and stops by itself; the databases are dropped after.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.config import Config, SourceConfig
from tests.e2e.conftest import running_server, write_config
from tests.support import pg
from tests.support.faultproxy import FaultProxy, Mode

DEADLINE = 2.0
DELAY = 0.3
ENVELOPE = {"Accept": "application/vnd.collector.envelope+json"}
_LENGTH = re.compile(rb"content-length: (\d+)", re.I)
_COMPLETE = re.compile(rb"collection-complete: \?1", re.I)
_TIMING = re.compile(rb"server-timing: ([^\r]+)", re.I)
_METRIC = re.compile(r"^(collector_\w+)\{([^}]*)\} ([\d.e+-]+)$", re.M)


@dataclasses.dataclass
class Load:
    """What the connections saw in one scenario."""

    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    incomplete: int = 0
    slowest: tuple[float, str] = (0.0, "")
    """The slowest answer's milliseconds and Server-Timing."""

    def line(self, name: str, seconds: float) -> str:
        times = sorted(self.latencies_ms)
        p50 = times[len(times) // 2]
        p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
        return (
            f"{name:<40} {len(times) / seconds:7.0f} {p50:7.1f} {p99:7.1f} {times[-1]:7.1f} "
            f"{len(times):7d} {self.incomplete:6d}"
        )

    @property
    def p99(self) -> float:
        times = sorted(self.latencies_ms)
        return times[min(len(times) - 1, int(0.99 * len(times)))]


async def one_connection(host: str, port: int, until: float, load: Load) -> None:
    """Requests back to back on one keep-alive connection until ``until``."""
    request = f"GET /collect-data HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    stream = await trio.open_tcp_stream(host, port)
    try:
        while trio.current_time() < until:
            start = trio.current_time()
            await stream.send_all(request)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    stream = await trio.open_tcp_stream(host, port)  # server closed it
                    break
                data += chunk
            else:
                head, _, body = data.partition(b"\r\n\r\n")
                length = _LENGTH.search(head)
                while length is not None and len(body) < int(length[1]):
                    body += await stream.receive_some(65536)
                took = (trio.current_time() - start) * 1000
                load.latencies_ms.append(took)
                if took > load.slowest[0]:
                    timing = _TIMING.search(head)
                    load.slowest = (took, timing[1].decode() if timing else "")
                if not _COMPLETE.search(head):
                    load.incomplete += 1
    finally:
        await stream.aclose()


async def drive(url: str, connections: int, seconds: float) -> Load:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    load = Load()
    until = trio.current_time() + seconds
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(one_connection, host, int(port), until, load)
    return load


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for metric, label_text, value in _METRIC.findall(text):
        if metric != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', label_text))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


@asynccontextmanager
async def serving(config: Config, workdir: Path) -> AsyncIterator[httpx.AsyncClient]:
    path = write_config(workdir / "replicas.toml", config)
    async with (
        running_server(["--config", str(path)]) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
    ):
        for _ in range(20):
            await client.get("/collect-data")  # pools warm on both replicas
        yield client


def replicated(config: Config, proxies: dict[str, list[str]], **changes: object) -> Config:
    sources = tuple(
        dataclasses.replace(
            s,
            dsn=proxies[s.name][0],
            replicas=(proxies[s.name][1],),
            **changes,  # type: ignore[arg-type]
        )
        for s in config.sources
    )
    return Config(sources=sources, timeout=DEADLINE)


async def load_scenarios(config: Config, args: argparse.Namespace, workdir: Path) -> None:
    print(f"{args.connections} connections, {args.duration:g} s each, deadline {DEADLINE:g} s")
    print(
        f"{'scenario':<40} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
        f"{'answers':>7} {'incomp':>6}"
    )
    async with trio.open_nursery() as nursery:
        factory = pg.proxy_factory(nursery)
        proxy_of: dict[str, list[FaultProxy]] = {}
        dsns: dict[str, list[str]] = {}
        for source in config.sources:
            made = [await factory(source.dsn) for _ in range(2)]
            proxy_of[source.name] = [p for p, _ in made]
            dsns[source.name] = [d for _, d in made]
        first_replicas = [pair[0] for pair in proxy_of.values()]

        async def scenario(name: str, cfg: Config, mode: Mode | None) -> tuple[Load, str]:
            async with serving(cfg, workdir) as client:
                if mode is not None:
                    for proxy in first_replicas:
                        await proxy.set_mode(mode, delay=DELAY)
                try:
                    load = await drive(str(client.base_url), args.connections, args.duration)
                finally:
                    for proxy in first_replicas:
                        await proxy.set_mode(Mode.PASS)
                metrics = (await client.get("/metrics")).text
            print(load.line(name, args.duration), flush=True)
            if args.verbose:
                print(f"  slowest: {load.slowest[1]}")
            return load, metrics

        # Rounds alternate the scenarios on the same machine: a shared machine's
        # speed drifts by a factor of two over minutes, and a comparison with the
        # healthy p99 is fair only within one round.
        for round_ in range(1, args.rounds + 1):
            print(f"round {round_}")
            healthy, _ = await scenario("healthy, 2 replicas each", replicated(config, dsns), None)
            hole, _ = await scenario(
                "replica 0 black-holed", replicated(config, dsns), Mode.BLACKHOLE
            )
            delayed = []
            for label, delay in (("auto", None), ("0.02 s", 0.02)):
                cfg = replicated(config, dsns, hedge_delay=delay)
                load, metrics = await scenario(
                    f"replica 0 delayed 300 ms, hedge {label}", cfg, Mode.DELAY
                )
                delayed.append((label, delay, load, metrics))
            report(healthy, hole, delayed)
        nursery.cancel_scope.cancel()


def report(healthy: Load, hole: Load, delayed: list[tuple[str, float | None, Load, str]]) -> None:
    """The round's figures against the targets."""
    print(f"  black-holed: incomplete {hole.incomplete}, p99 {hole.p99:.1f} ms (target < 100)")
    for label, delay, load, metrics in delayed:
        hedges = metric_sum(metrics, "collector_replica_hedges_total")
        wins = metric_sum(metrics, "collector_replica_hedge_wins_total")
        fetches = metric_sum(metrics, "collector_source_outcomes_total")
        # "auto" hedges after the p95 of a source's answers, below the healthy p99
        # of whole requests: that p99 stands in for it as an upper bound.
        hedge_ms = healthy.p99 if delay is None else 1000 * delay
        bound = f"{healthy.p99 + hedge_ms + 20:.1f}"
        print(
            f"  delayed, hedge {label}: p99 {load.p99:.1f} ms (healthy {healthy.p99:.1f}"
            f" + delay + 20 = {bound}); hedges {hedges:.0f} of {fetches:.0f} fetches"
            f" ({100 * hedges / max(fetches, 1):.1f}%), {wins:.0f} won;"
            f" incomplete {load.incomplete}"
        )


async def recovery(config: Config, args: argparse.Namespace, workdir: Path) -> None:
    """A single-server source: black-holed until its breaker opens, then healed."""
    async with trio.open_nursery() as nursery:
        first = config.sources[0]
        proxy, dsn = await pg.proxy_factory(nursery)(first.dsn)
        single: SourceConfig = dataclasses.replace(first, dsn=dsn)
        cfg = Config(sources=(single, *config.sources[1:]), timeout=DEADLINE)
        async with serving(cfg, workdir) as client:
            await proxy.set_mode(Mode.BLACKHOLE)
            full_waits = 0
            while True:  # concurrent requests, as under load, until the breaker opens
                async with trio.open_nursery() as burst:
                    for _ in range(4):
                        burst.start_soon(client.get, "/collect-data")
                body = (await client.get("/collect-data", headers=ENVELOPE)).json()
                if body["sources"][0]["status"] == "skipped":
                    break
            opened = trio.current_time()
            requests = 0
            while trio.current_time() - opened < args.down:  # still down, breaker open
                start = trio.current_time()
                await client.get("/collect-data")
                requests += 1
                full_waits += trio.current_time() - start >= DEADLINE * 0.9
                await trio.sleep(0.02)
            await proxy.set_mode(Mode.PASS)
            healed = trio.current_time()
            while True:
                start = trio.current_time()
                body = (await client.get("/collect-data", headers=ENVELOPE)).json()
                requests += 1
                full_waits += trio.current_time() - start >= DEADLINE * 0.9
                if body["complete"]:
                    break
                await trio.sleep(0.02)
            first_complete = trio.current_time() - healed
        nursery.cancel_scope.cancel()
    print(
        f"\nrecovery (single server, probe_interval 1 s): first complete answer "
        f"{first_complete:.2f} s after the server came back (target <= 1.5 s);\n"
        f"  {requests} requests after the breaker opened ({args.down:g} s down, then polling "
        f"every 20 ms), {full_waits} of them waited the deadline (target 0)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per scenario")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every load scenario")
    parser.add_argument("--down", type=float, default=3.0, help="seconds down after opening")
    parser.add_argument("--verbose", action="store_true", help="the slowest answer's timing")
    parser.add_argument("--dsn", default=pg.LOCAL_DSN, help="server to create the sources on")
    args = parser.parse_args()
    with pg.reference_databases(args.dsn) as config, tempfile.TemporaryDirectory() as workdir:
        trio.run(load_scenarios, config, args, Path(workdir))
        trio.run(recovery, config, args, Path(workdir))


if __name__ == "__main__":
    main()
