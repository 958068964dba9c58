"""What one source read costs in CPU: raw asyncpg and the SQLAlchemy ORM, per loop.

Run from the repository root (not part of the test suite):

    uv run python bench/drivers.py [--reads 3000] [--dsn ...] [--mysql-dsn ...]

Creates the reference databases on the local PostgreSQL (and on the local MariaDB
when it answers: its source read raw over asyncmy and through mysql+asyncmy is
timed beside PostgreSQL's), then times one source read
(pool checkout, the 20-row select, rows checked, connection returned), one read at a
time, as the service does it, on three loops:

- plain asyncio (in a child process: trio-asyncio, once imported, changes asyncio
  for the whole process);
- trio-asyncio as it ships, through the service's bridge;
- trio-asyncio with the service's batching dispatcher (``service/sources/aioloop.py``).

CPU time per read is process time over a few thousand reads, after a warm-up. One
request of ``/collect-data`` makes three reads (two raw, one ORM), so the sum is a
floor under the fan-out's share of a request on any of these loops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.config import Config, SourceConfig
from service.config.secrets import is_mysql
from service.core import Window
from service.sources.base import DriverLimits
from service.sources.pool import Budgets
from service.sources.postgres import database_pool
from service.sources.postgres.orm import OrmSource, create_engine, session_factory
from service.sources.postgres.raw import RawSource

WARM_UP = 200
Read = Callable[[], Awaitable[object]]


async def open_reads(config: Config) -> tuple[dict[str, Read], list[Callable[[], Awaitable[Any]]]]:
    """One read function per access kind, asyncio-flavoured, and what closes them."""
    raw_source, orm_source = (
        next(s for s in config.sources if s.access == kind and not is_mysql(s.dsn))
        for kind in ("raw", "orm")
    )
    reads: dict[str, Read] = {}
    limits = DriverLimits.for_source("bench", config.timeout)
    budgets = Budgets(limit=20, idle_timeout=60.0)
    pool = database_pool(raw_source, limits, budgets)
    raw = RawSource(raw_source.name, raw_source.table, pool, None, limits)  # type: ignore[arg-type]
    engine = create_engine(database_pool(orm_source, limits, budgets), limits, pgbouncer=False)
    orm = OrmSource(orm_source.name, orm_source.table, session_factory(engine), None)  # type: ignore[arg-type]
    window = Window()
    reads["raw (asyncpg)"] = lambda: raw._fetch_on_asyncio(window)
    reads["orm (SQLAlchemy)"] = lambda: orm._fetch_on_asyncio(window)
    closers: list[Callable[[], Awaitable[Any]]] = [engine.dispose, budgets.close]
    maria = next((s for s in config.sources if is_mysql(s.dsn)), None)
    if maria is not None:
        from service.sources.mysql import orm as my_orm
        from service.sources.mysql import raw as my_raw
        from service.sources.mysql.session import SessionSpec

        my_pool, spec = await my_raw.create_pool(maria.dsn, 5, limits)
        my_raw_source = my_raw.MySqlRawSource(maria.name, maria.table, my_pool, spec, None)  # type: ignore[arg-type]
        my_engine = my_orm.create_engine(SessionSpec.for_dsn(maria.dsn, limits), 5)
        sessions = my_orm.session_factory(my_engine)
        my_orm_source = my_orm.MySqlOrmSource(maria.name, maria.table, sessions, spec, None)  # type: ignore[arg-type]
        reads["raw (asyncmy)"] = lambda: my_raw_source._fetch_on_asyncio(window)
        reads["orm (mysql+asyncmy)"] = lambda: my_orm_source._fetch_on_asyncio(window)
        closers += [partial(my_raw.close_pool, my_pool), my_engine.dispose]
    return reads, closers


async def time_reads(run: Callable[[Read], Awaitable[object]], read: Read, count: int) -> float:
    """Microseconds of process CPU per read."""
    for _ in range(WARM_UP):
        await run(read)
    start = time.process_time()
    for _ in range(count):
        await run(read)
    return (time.process_time() - start) / count * 1e6


async def on_plain_asyncio(config: Config, count: int) -> dict[str, float]:
    reads, closers = await open_reads(config)

    async def as_task(read: Read) -> object:
        return await asyncio.ensure_future(read())  # a task per read, as the bridge makes

    try:
        return {name: await time_reads(as_task, read, count) for name, read in reads.items()}
    finally:
        for close in closers:
            await close()


async def on_trio_asyncio(config: Config, count: int, tuned: bool) -> dict[str, float]:
    import trio_asyncio

    from service.sources.aioloop import tune
    from service.sources.bridge import AsyncioBridge

    async with trio_asyncio.open_loop() as loop:
        if tuned:
            tune(loop)
        bridge = AsyncioBridge(loop)
        reads, closers = await bridge.run(open_reads, config)
        try:
            return {name: await time_reads(bridge.run, read, count) for name, read in reads.items()}
        finally:
            for close in closers:
                await bridge.run(close)


def config_from_json(text: str) -> Config:
    sources = tuple(SourceConfig(**s) for s in json.loads(text))
    return Config(sources=sources)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=3000)
    parser.add_argument("--dsn", help="server to create the sources on (default: local)")
    parser.add_argument("--mysql-dsn", help="MariaDB for one more source (default: local)")
    parser.add_argument("--plain-child", help=argparse.SUPPRESS)  # sources as JSON
    args = parser.parse_args()
    if args.plain_child:
        # Measured only if nothing has swapped asyncio's loop for trio-asyncio's.
        assert "trio_asyncio" not in sys.modules
        config = config_from_json(args.plain_child)
        print(json.dumps(asyncio.run(on_plain_asyncio(config, args.reads))))
        return

    import trio

    from tests.support import mysql, pg

    with ExitStack() as stack:
        config = stack.enter_context(pg.reference_databases(args.dsn or pg.LOCAL_DSN))
        maria_dsn = args.mysql_dsn or mysql.LOCAL_DSN
        if pg.answers("127.0.0.1", 3306) or args.mysql_dsn:
            maria = stack.enter_context(mysql.reference_databases(maria_dsn)).sources[0]
            config = Config(sources=(*config.sources, maria))
        sources = json.dumps(
            [
                {"name": s.name, "dsn": s.dsn, "table": s.table, "access": s.access}
                for s in config.sources
            ]
        )
        child = subprocess.run(
            [sys.executable, __file__, "--reads", str(args.reads), "--plain-child", sources],
            capture_output=True,
            text=True,
            check=True,
        )
        rows = {"plain asyncio": json.loads(child.stdout.splitlines()[-1])}
        rows["trio-asyncio, as shipped"] = trio.run(on_trio_asyncio, config, args.reads, False)
        rows["trio-asyncio, tuned"] = trio.run(on_trio_asyncio, config, args.reads, True)
    kinds = list(next(iter(rows.values())))
    print(f"\nCPU per source read, us ({args.reads} reads one at a time, after {WARM_UP})\n")
    widths = [max(16, len(k)) for k in kinds]
    head = " | ".join(f"{k:>{w}}" for k, w in zip(kinds, widths, strict=True))
    print(f"| {'loop':<26} | {head} | 2 raw + 1 orm |")
    print(f"|{'-' * 28}|" + "|".join("-" * (w + 2) for w in widths) + "|---------------|")
    for loop, figures in rows.items():
        fan_out = 2 * figures["raw (asyncpg)"] + figures["orm (SQLAlchemy)"]
        cells = " | ".join(f"{figures[k]:{w}.0f}" for k, w in zip(kinds, widths, strict=True))
        print(f"| {loop:<26} | {cells} | {fan_out:13.0f} |")


if __name__ == "__main__":
    main()
