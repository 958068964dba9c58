"""Throughput of a mixed-engine fan-out against the all-PostgreSQL one, in the same run.

Run from the repository root (not part of the test suite; needs Debian's ``wrk``):

    uv run python bench/mixed.py [--duration 8] [--rounds 3] [--dsn ...] [--mysql-dsn ...]

Creates the reference sources on the local PostgreSQL and on the local MariaDB, then
starts ``collector serve`` (coalescing off, so every request is a real fan-out) on two
configs that differ only in where source_3 lives: PostgreSQL, or MariaDB. Both are
driven by wrk at 32 connections on 127.0.0.1, alternating round after round (the
machine's speed drifts over minutes; a ratio is fair only between neighbours), for
source_3 read raw and through the ORM. Prints throughput, latency, the server's CPU
per request and the mixed/all-PostgreSQL ratio of each round, and why answers were
incomplete, if any were (the servers' per-source failure lines).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import Result, combined, spread, wrk
from service.config import Access, Config
from tests.e2e.conftest import Server, running_server, write_config
from tests.support import mysql, pg

#: Every per-source failure is logged by the core's guard (service/core/guard.py).
FAILED = '"logger": "collector.core"'


def failure_reason(line: str) -> str | None:
    """``source_3 timeout: ...`` from a failure log line, without its varying duration."""
    record = json.loads(line)
    if record.get("status") not in ("timeout", "error"):
        return None
    return f"{record.get('source')} {record.get('status')}: {record.get('reason')}"


def configs(postgres: Config, maria: Config, access: Access) -> dict[str, Config]:
    """The all-PostgreSQL config and the mixed one, with source_3 read in ``access`` mode."""
    third = {
        "all PostgreSQL": pg.source(postgres, "source_3", access=access),
        "mixed (source_3 on MariaDB)": pg.source(maria, "source_3", access=access),
    }
    return {
        label: dataclasses.replace(
            postgres, sources=(*postgres.sources[:2], source), coalesce=False
        )
        for label, source in third.items()
    }


async def measure(postgres: Config, maria: Config, args: argparse.Namespace, workdir: Path) -> None:
    print(
        f"| {'source_3':<5} | {'config':<28} "
        "| req/s | p50 ms | p99 ms | CPU ms/req | errors, incomplete |"
    )
    print(
        "|-------|------------------------------|------:|-------:|-------:|-----------:|-------------------:|"
    )
    for access in (Access.RAW, Access.ORM):
        runs: dict[str, list[Result]] = {}
        async with AsyncExitStack() as stack:
            urls: dict[str, tuple[str, int]] = {}
            servers: dict[str, Server] = {}
            for label, config in configs(postgres, maria, access).items():
                path = write_config(workdir / f"{len(urls)}.toml", config, coalesce=False)
                server = await stack.enter_async_context(running_server(["--config", str(path)]))
                urls[label] = (f"{server.url}/collect-data", server.process.pid)
                servers[label] = server
                runs[label] = []
            for _ in range(args.rounds):
                for label, (url, pid) in urls.items():
                    runs[label].append(await wrk(label, url, 32, args.duration, pid))
            for label, server in servers.items():
                failures = Counter(failure_reason(line) for line in server.output if FAILED in line)
                for reason, count in failures.most_common(3):
                    print(f"  ({access.value}, {label}: {count} x {reason})")
        for label, results in runs.items():
            row = combined(label, results)
            print(
                f"| {access.value:<5} | {label:<28} | {row.rps:5.0f} | {row.p50_ms:6.1f} | "
                f"{row.p99_ms:6.1f} | {row.cpu_ms or 0:10.2f} | {row.errors:>8}, {row.incomplete} |"
            )
        base, mixed = runs.values()
        ratios = [m.rps / b.rps for b, m in zip(base, mixed, strict=True)]
        print(f"|       | mixed / all-PostgreSQL, by round: {spread(ratios)} (median, range) |")
        means = statistics.fmean(m.rps for m in mixed) / statistics.fmean(b.rps for b in base)
        print(f"|       | ratio of means: {means:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per config")
    parser.add_argument("--dsn", default=pg.LOCAL_DSN)
    parser.add_argument("--mysql-dsn", default=mysql.LOCAL_DSN)
    args = parser.parse_args()
    with (
        pg.reference_databases(args.dsn) as postgres,
        mysql.reference_databases(args.mysql_dsn) as maria,
        tempfile.TemporaryDirectory() as workdir,
    ):
        print(f"\n{args.rounds} rounds of {args.duration} s per config, 32 connections\n")
        trio.run(measure, postgres, maria, args, Path(workdir))


if __name__ == "__main__":
    main()
