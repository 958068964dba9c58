"""The drivers' own cost of a fan-out: N fetches on stock asyncio, none of our code.

Run by ``bench/fanout.py`` in a child process (trio-asyncio, once imported, changes
asyncio for the whole process), on the databases that script made:

    python bench/driver_floor.py N DSN

Half the N sources are raw (an asyncpg pool, ``connection.fetch``), half ORM (a
SQLAlchemy engine and session, the mapped columns selected), N fetches at once with
``asyncio.gather`` as a fan-out would make them, over at most 16 warm databases
(N connections for N = 256 would exceed a stock server's ``max_connections``).
Prints the process CPU per fetch, as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import asyncpg

PREFIX = "collector_fanout"
FLOOR_DATABASES = 16
FLOOR_ROUNDS = 60
#: Connections per warm database (fetches beyond that queue in the pool).
FLOOR_POOL = 2


async def floor_child(server_dsn: str, count: int) -> dict[str, float]:
    """N fetches at once, half raw on asyncpg pools, half ORM on SQLAlchemy engines."""
    from sqlalchemy import BigInteger, String, select
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    warm = [
        (f"{PREFIX}_{k}", f"rows_{k}", "raw" if k % 2 == 0 else "orm")
        for k in range(min(count, FLOOR_DATABASES))
    ]
    fetches: list[Any] = []
    closers: list[Any] = []
    for database, table, access in warm:
        dsn = f"{server_dsn.rsplit('/', 1)[0]}/{database}"
        if access == "raw":
            pool = await asyncpg.create_pool(dsn, min_size=0, max_size=FLOOR_POOL)
            query = f"SELECT id, name FROM {table} ORDER BY id"

            async def raw(pool: asyncpg.Pool = pool, query: str = query) -> list[Any]:
                async with pool.acquire() as connection:
                    return list(await connection.fetch(query))

            fetches.append(raw)
            closers.append(pool.close)
        else:

            class Base(DeclarativeBase):
                pass

            model: Any = type(
                f"Row_{table}",
                (Base,),
                {
                    "__tablename__": table,
                    "id": mapped_column(BigInteger, primary_key=True),
                    "name": mapped_column(String(255)),
                    "__annotations__": {"id": Mapped[int], "name": Mapped[str]},
                },
            )
            engine = create_async_engine(
                dsn.replace("postgresql://", "postgresql+asyncpg://"),
                isolation_level="AUTOCOMMIT",
                pool_reset_on_return=None,
                pool_size=FLOOR_POOL,
                max_overflow=0,
            )
            sessions = async_sessionmaker(engine, expire_on_commit=False)
            statement = select(model.id, model.name).order_by(model.id)

            async def orm(sessions: Any = sessions, statement: Any = statement) -> list[Any]:
                async with sessions() as session:
                    return list(await session.execute(statement))

            fetches.append(orm)
            closers.append(engine.dispose)
    # Each of the N sources is one of the warm ones, raw and ORM in the same shares.
    plan = [fetches[k % len(fetches)] for k in range(count)]
    for _ in range(5):
        await asyncio.gather(*(fetch() for fetch in plan))
    start = time.process_time()
    for _ in range(FLOOR_ROUNDS):
        await asyncio.gather(*(fetch() for fetch in plan))
    cpu = time.process_time() - start
    for close in closers:
        await close()
    return {"per_fetch_ms": cpu / (FLOOR_ROUNDS * count) * 1000}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(floor_child(sys.argv[2], int(sys.argv[1])))))
