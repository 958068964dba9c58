"""End-to-end fixtures: the real ``collector`` command, spoken to over HTTP."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio

from service.config import Config, SourceConfig
from service.config.secrets import is_mysql
from service.sources.bridge import AsyncioBridge
from tests.support import mysql, pg
from tests.support.faultproxy import FaultProxy, Mode, ProxyFactory

pytestmark = pytest.mark.e2e

#: Seconds the service may take to start (the embedded server runs initdb once).
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
_SERVING = re.compile(r"serving (?P<url>http://\S+)/collect-data")


def collector_command() -> list[str]:
    """The installed console script, as a user runs it."""
    script = shutil.which("collector", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "service"]


@dataclass
class Server:
    url: str
    process: trio.Process
    output: list[str] = field(default_factory=list)


def write_config(
    path: Path, config: Config, timeout: float | None = None, *, coalesce: bool = True
) -> Path:
    lines = [
        f"timeout = {timeout if timeout is not None else config.timeout}",
        f"coalesce = {'true' if coalesce and config.coalesce else 'false'}",
        f"probe_timeout = {config.probe_timeout}",
        f"ids_check_interval = {config.ids_check_interval}",
    ]
    # Later keys only when set, so that a config for an older build (side-by-side
    # benchmarks) stays one it accepts.
    defaults = Config(sources=config.sources)
    for key in ("server_connections", "idle_connection_timeout", "probe_interval"):
        if getattr(config, key) != getattr(defaults, key):
            lines.append(f"{key} = {getattr(config, key)}")
    for source in config.sources:
        lines += [
            "[[sources]]",
            f'name = "{source.name}"',
            f'dsn = "{source.dsn}"',
            f'table = "{source.table}"',
            f'access = "{source.access}"',
            f"pool_size = {source.pool_size}",
            f"breaker_failures = {source.breaker.failures}",
            f"breaker_cooldown = {source.breaker.cooldown}",
        ]
        if source.pgbouncer:
            lines.append("pgbouncer = true")
        if source.ids is not None:
            lines.append(f"ids = {[list(pair) for pair in source.ids]}")
        if source.replicas:
            lines.append("replicas = [" + ", ".join(f'"{r}"' for r in source.replicas) + "]")
            delay = "auto" if source.hedge_delay is None else source.hedge_delay
            lines += [f'hedge_delay = "{delay}"' if delay == "auto" else f"hedge_delay = {delay}"]
            lines.append(f"hedge_budget = {source.hedge_budget}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@asynccontextmanager
async def running_server(
    args: list[str], env: Mapping[str, str] | None = None
) -> AsyncIterator[Server]:
    """Start ``collector serve`` on a free port; SIGTERM it afterwards and expect exit 0."""
    command = [*collector_command(), "serve", "--port", "0", *args]
    process = await trio.lowlevel.open_process(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    assert process.stdout is not None
    output: list[str] = []
    async with trio.open_nursery() as nursery:
        lines = _lines(process.stdout)
        url = None
        with trio.move_on_after(START_TIMEOUT):
            async for line in lines:
                output.append(line)
                if match := _SERVING.search(line):
                    url = match["url"]
                    break
        if url is None:
            process.kill()
            await process.wait()
            pytest.fail("collector serve did not start:\n" + "".join(output))

        async def keep_reading() -> None:
            async for line in lines:
                output.append(line)

        nursery.start_soon(keep_reading)
        server = Server(url, process, output)
        try:
            yield server
        finally:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_TIMEOUT):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 0, "".join(output)


async def _lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[str]:
    buffer = b""
    while chunk := await stream.receive_some(65536):
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield line.decode(errors="replace") + "\n"
    if buffer:
        yield buffer.decode(errors="replace")


@asynccontextmanager
async def serving(
    config: Config, tmp_path: Path, env: Mapping[str, str] | None = None
) -> AsyncIterator[tuple[Server, httpx.AsyncClient]]:
    """``collector serve`` on ``config``, and an HTTP client pointed at it."""
    config_file = write_config(tmp_path / "collector.toml", config)
    async with (
        running_server(["--config", str(config_file)], env=env) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
    ):
        yield server, client


@dataclass
class ProxiedService:
    """A running ``collector serve`` whose sources sit behind fault proxies."""

    client: httpx.AsyncClient
    proxies: dict[str, FaultProxy]
    config: Config


@asynccontextmanager
async def proxied_service(
    reference_config: Config,
    fault_proxy: ProxyFactory,
    tmp_path: Path,
    *,
    timeout: float,
    proxied: tuple[str, ...] = ("source_1", "source_2", "source_3"),
    coalesce: bool = True,
    **overrides: dict[str, object],
) -> AsyncIterator[ProxiedService]:
    """``collector serve`` with the named sources behind fault proxies."""
    proxies: dict[str, FaultProxy] = {}
    sources: list[SourceConfig] = []
    for source in reference_config.sources:
        changes = dict(overrides.get(source.name, {}))
        if source.name in proxied:
            proxies[source.name], changes["dsn"] = await fault_proxy(source.dsn)
        sources.append(dataclasses.replace(source, **changes))  # type: ignore[arg-type]
    config = Config(sources=tuple(sources), timeout=timeout, coalesce=coalesce)
    config_file = write_config(tmp_path / "collector.toml", config)
    async with (
        running_server(["--config", str(config_file)]) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
    ):
        yield ProxiedService(client, proxies, config)


#: The faults ``fault_on`` injects, by name.
PROXY_FAULTS = {
    "blackhole": Mode.BLACKHOLE,
    "delay": Mode.DELAY,
    "reset": Mode.RESET,
    "refuse": Mode.REFUSE,
}


@asynccontextmanager
async def fault_on(
    fault: str, proxy: FaultProxy, source: SourceConfig, bridge: AsyncioBridge, *, delay: float
) -> AsyncIterator[None]:
    """Break ``source`` for the duration: a proxy fault, or ``lock`` (a table lock)."""
    if fault == "lock":
        lock = mysql.locked_table if is_mysql(source.dsn) else pg.locked_table
        async with lock(bridge, source.dsn, source.table):
            yield
        return
    await proxy.set_mode(PROXY_FAULTS[fault], delay=delay)
    try:
        yield
    finally:
        await proxy.set_mode(Mode.PASS)
