"""Driving the collector directly in tests: real sources opened, streams read out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

from service.config import Config, SourceConfig
from service.core import Answer, Collector, Query, Row
from service.sources import open_sources
from service.sources.bridge import AsyncioBridge


@asynccontextmanager
async def collector_for(
    bridge: AsyncioBridge,
    sources: tuple[SourceConfig, ...],
    timeout: float = 2.0,
    **settings: Any,
) -> AsyncIterator[Collector]:
    """A collector over ``sources`` opened the way the server opens them.

    As the server does before serving, the declared ids are checked first, so
    sources that hold only their declared ids are pruned. ``settings`` are
    further config keys (``server_connections=3``, say).
    """
    config = Config(sources=sources, timeout=timeout, **settings)
    async with open_sources(config, bridge) as members:
        collector = Collector(members, timeout)
        await collector.declared.check()
        yield collector


async def read_stream(collector: Collector, query: Query, batch: int) -> tuple[list[Row], Answer]:
    """Every streamed row and the summary, checking the chunks on the way."""
    merged: list[Row] = []
    summary = None
    async with aclosing(collector.stream(query, batch)) as items:
        async for item in items:
            if isinstance(item, Answer):
                summary = item
            else:
                assert summary is None, "rows after the summary"
                assert 0 < len(item) <= batch
                merged.extend(item)
    assert summary is not None
    return merged, summary
