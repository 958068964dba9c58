"""The same service on plain asyncio: the yardstick ``bench/load.py`` measures us against.

Not part of the product. It is what a careful plain-asyncio build of
``GET /collect-data`` looks like, so that the load benchmark can show both on the
same machine, in the same run:

- Quart on Hypercorn's asyncio worker (the same framework and server as ours,
  minus Trio and trio-asyncio);
- an ``asyncio.TaskGroup`` per request, each source under ``asyncio.timeout``;
  a failing source is left out, as in ours;
- asyncpg pools for the raw sources (prepared statements, no reset query) and a
  SQLAlchemy ``AsyncSession`` column select for the ORM source, in autocommit;
- the answer sorted by id, encoded with orjson.

It has none of our request ids, access log, metrics, breakers, completeness
headers or admission cap, which flatters it a little. Run by ``bench/load.py``:

    python bench/reference_asyncio.py CONFIG.toml PORT
"""

from __future__ import annotations

import asyncio
import sys
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from quart import Quart
from sqlalchemy import BigInteger, String, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

Fetch = Callable[[], Awaitable[list[tuple[int, str | None]]]]


def raw_fetch(pool: asyncpg.Pool, table: str) -> Fetch:
    query = f'SELECT id, name FROM "{table}" ORDER BY id'

    async def fetch() -> list[tuple[int, str | None]]:
        async with pool.acquire() as connection:
            return [tuple(r) for r in await connection.fetch(query)]  # type: ignore[misc]

    return fetch


def orm_fetch(dsn: str, table: str, size: int) -> tuple[Fetch, Any]:
    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = table
        id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
        name: Mapped[str | None] = mapped_column(String(255))

    url = make_url(dsn).set(drivername="postgresql+asyncpg")
    engine = create_async_engine(
        url, isolation_level="AUTOCOMMIT", pool_reset_on_return=None, pool_size=size
    )
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    statement = select(Item.id, Item.name).order_by(Item.id)

    async def fetch() -> list[tuple[int, str | None]]:
        async with sessions() as session:
            return [tuple(r) for r in await session.execute(statement)]  # type: ignore[misc]

    return fetch, engine


async def main(config: dict[str, Any], port: int) -> None:
    timeout = float(config.get("timeout", 2.0))
    fetches: list[Fetch] = []
    closers: list[Callable[[], Awaitable[object]]] = []

    async def keep(session: object) -> None:
        """No reset query on release: these sessions only SELECT."""

    for source in config["sources"]:
        size = source.get("pool_size", 10)
        if source["access"] == "raw":
            pool = await asyncpg.create_pool(source["dsn"], min_size=0, max_size=size, reset=keep)
            fetches.append(raw_fetch(pool, source["table"]))
            closers.append(pool.close)
        else:
            fetch, engine = orm_fetch(source["dsn"], source["table"], size)
            fetches.append(fetch)
            closers.append(engine.dispose)

    app = Quart(__name__)

    async def guarded(fetch: Fetch) -> list[tuple[int, str | None]]:
        try:
            async with asyncio.timeout(timeout):
                return await fetch()
        except Exception:  # a failing source is missing data, never a failed request
            return []

    @app.get("/collect-data")
    async def collect_data() -> tuple[bytes, int, dict[str, str]]:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(guarded(fetch)) for fetch in fetches]
        rows = sorted((row for task in tasks for row in task.result()), key=lambda r: r[0])
        body = orjson.dumps([{"id": i, "name": n} for i, n in rows])
        return body, 200, {"Content-Type": "application/json"}

    @app.get("/livez")
    async def livez() -> tuple[bytes, int, dict[str, str]]:
        return b'{"status": "alive"}', 200, {"Content-Type": "application/json"}

    hconfig = HypercornConfig()
    hconfig.bind = [f"127.0.0.1:{port}"]
    hconfig.accesslog = None
    print(f"reference: serving http://127.0.0.1:{port}/collect-data", flush=True)
    try:
        await serve(app, hconfig)  # type: ignore[arg-type]
    finally:
        for close in closers:
            await close()


if __name__ == "__main__":
    asyncio.run(main(tomllib.loads(Path(sys.argv[1]).read_text()), int(sys.argv[2])))
