"""What one MariaDB source read costs in CPU, per driver: asyncmy against aiomysql.

Run from the repository root (not part of the test suite; aiomysql is not a
dependency, so it is added for the run):

    uv run --with aiomysql python bench/mysql_drivers.py [--reads 2000] [--dsn mysql://...]

Creates a scratch database (``collector_my_bench_*``, dropped afterwards) on the
MariaDB at 127.0.0.1:3306 with 1000 rows, then times one source read as the service
makes it (pool checkout, the window select, rows checked, connection returned), one
at a time, on plain asyncio, for a 20-row and a 1000-row answer, raw (the driver and
SQL) and through SQLAlchemy's matching async dialect (a session per read). CPU time
per read is process time over the reads, after a warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from service.sources.base import checked_rows
from service.sources.mysql.dsn import connect_kwargs

WARM_UP = 200
ROWS = 1000
QUERY = "SELECT id, name FROM bench WHERE id > %s AND id <= %s ORDER BY id LIMIT %s"
Read = Callable[[int], Awaitable[object]]


async def raw_read(module: Any, kwargs: dict[str, Any]) -> tuple[Read, Callable[[], Any]]:
    """A read over the driver's own pool; and what closes the pool."""
    pool = await module.create_pool(minsize=1, maxsize=2, **kwargs)

    async def read(limit: int) -> object:
        async with pool.acquire() as connection, connection.cursor() as cursor:
            await cursor.execute(QUERY, (0, 2**62, limit))
            return checked_rows(await cursor.fetchall())

    async def close() -> None:
        pool.close()
        await pool.wait_closed()

    return read, close


async def orm_read(dialect: str, kwargs: dict[str, Any]) -> tuple[Read, Callable[[], Any]]:
    """A read through an AsyncSession on SQLAlchemy's dialect for the driver."""
    url = (
        f"mysql+{dialect}://{kwargs['user']}:{kwargs.get('password', '')}"
        f"@{kwargs['host']}:{kwargs['port']}/{kwargs['database']}"
    )
    engine = create_async_engine(
        url, pool_size=2, isolation_level="AUTOCOMMIT", skip_autocommit_rollback=True
    )
    sessions = async_sessionmaker(engine)
    statement = text(QUERY.replace("%s", ":a", 1).replace("%s", ":b", 1).replace("%s", ":c", 1))

    async def read(limit: int) -> object:
        async with sessions() as session:
            result = await session.execute(statement, {"a": 0, "b": 2**62, "c": limit})
            return checked_rows(result.all())

    return read, engine.dispose


async def cpu_per_read(read: Read, limit: int, count: int) -> float:
    """Microseconds of process CPU per read."""
    for _ in range(WARM_UP):
        await asyncio.ensure_future(read(limit))  # a task per read, as the bridge makes
    start = time.process_time()
    for _ in range(count):
        await asyncio.ensure_future(read(limit))
    return (time.process_time() - start) / count * 1e6


async def measure(dsn: str, count: int) -> None:
    import aiomysql
    import asyncmy

    admin = connect_kwargs(dsn)
    database = f"collector_my_bench_{uuid.uuid4().hex[:8]}"
    setup = await asyncmy.connect(**admin)
    async with setup.cursor() as cursor:
        await cursor.execute(f"CREATE DATABASE `{database}`")
        await cursor.execute(
            f"CREATE TABLE `{database}`.bench (id INT PRIMARY KEY, name VARCHAR(255))"
        )
        values = ", ".join(f"({i}, 'Row {i}')" for i in range(1, ROWS + 1))
        await cursor.execute(f"INSERT INTO `{database}`.bench VALUES {values}")
    await setup.commit()
    kwargs = {**admin, "database": database, "autocommit": True}
    try:
        candidates: dict[str, Callable[[], Awaitable[tuple[Read, Callable[[], Any]]]]] = {
            "raw asyncmy": lambda: raw_read(asyncmy, kwargs),
            "raw aiomysql": lambda: raw_read(aiomysql, _aiomysql_kwargs(kwargs)),
            "orm mysql+asyncmy": lambda: orm_read("asyncmy", kwargs),
            "orm mysql+aiomysql": lambda: orm_read("aiomysql", kwargs),
        }
        print(f"\nCPU per source read on plain asyncio, us ({count} reads, after {WARM_UP})\n")
        print(f"| {'driver':<20} | {'20 rows':>8} | {'1000 rows':>9} |")
        print(f"|{'-' * 22}|{'-' * 10}|{'-' * 11}|")
        for name, make in candidates.items():
            read, close = await make()
            try:
                small = await cpu_per_read(read, 20, count)
                large = await cpu_per_read(read, 1000, max(1, count // 5))
            finally:
                await close()
            print(f"| {name:<20} | {small:8.0f} | {large:9.0f} |")
    finally:
        async with setup.cursor() as cursor:
            await cursor.execute(f"DROP DATABASE IF EXISTS `{database}`")
        setup.close()


def _aiomysql_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """aiomysql names the database ``db``."""
    renamed = {k: v for k, v in kwargs.items() if k != "database"}
    return {**renamed, "db": kwargs["database"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--dsn", default="mysql://root@127.0.0.1:3306/")
    args = parser.parse_args()
    asyncio.run(measure(args.dsn, args.reads))


if __name__ == "__main__":
    main()
