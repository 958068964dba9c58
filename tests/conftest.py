"""Fixtures shared by every test layer."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import pytest_timeout
import trio

from service.config import Config
from service.sources.aioloop import open_loop
from service.sources.bridge import AsyncioBridge
from tests.support import pg
from tests.support.faultproxy import ProxyFactory
from tests.support.pg import proxy_factory

# A trio test still running after `timeout` (pyproject.toml; `@pytest.mark.timeout(N)` for
# one test) wall-clock seconds is cancelled and fails. Wall clock, not trio's clock, so a
# test on autojump_clock may still skip through hours of virtual time. pytest-timeout's
# thread method stays armed this much longer as a backstop for a hang trio cannot cancel
# (a blocking call outside a checkpoint): it dumps every stack and ends the process, so
# CI stops instead of waiting forever.
BACKSTOP_GRACE_SECONDS = 15.0


def _limit(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    return float(item.config.getini("timeout"))


def _cancel_soon(token: trio.lowlevel.TrioToken, scope: trio.CancelScope) -> None:
    # The run may have ended between the timer firing and this call.
    try:
        token.run_sync_soon(scope.cancel)
    except trio.RunFinishedError:
        pass


async def _within(limit: float, test: Callable[[], Awaitable[Any]]) -> Any:
    token = trio.lowlevel.current_trio_token()
    with trio.CancelScope() as scope:
        timer = threading.Timer(limit, _cancel_soon, (token, scope))
        timer.daemon = True
        timer.start()
        try:
            return await test()
        except BaseException as exc:
            # Once cancelled, whatever comes out (Cancelled, or a fixture's complaint
            # about being cancelled) is the limit's doing; name the limit instead.
            if not scope.cancel_called:
                raise
            failure = exc
        finally:
            timer.cancel()
    message = f"trio test still running after {limit:g} s of wall-clock time"
    raise pytest.fail.Exception(message) from failure


def _guarded_run(limit: float) -> Callable[..., Any]:
    def run(test: Callable[[], Awaitable[Any]], **options: Any) -> Any:
        return trio.run(_within, limit, test, **options)

    return run


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run every trio test under a wall-clock limit, so a broken deadline fails, not hangs.

    Why here: pytest-timeout's own methods cannot stop a trio test cleanly; "signal" raises
    inside trio's scheduler and corrupts the next test's run, "thread" ends the process.
    """
    for item in items:
        if item.get_closest_marker("trio") is not None:
            item.add_marker(pytest.mark.trio(run=_guarded_run(_limit(item))), append=False)


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: pytest_timeout.Settings) -> bool | None:
    """Arm pytest-timeout's backstop later than the trio limit, so the clean failure wins."""
    if item.get_closest_marker("trio") is None:
        return None
    backstop = settings._replace(timeout=settings.timeout + BACKSTOP_GRACE_SECONDS)
    timer = threading.Timer(backstop.timeout, pytest_timeout.timeout_timer, (item, backstop))
    timer.daemon = True

    def cancel() -> None:
        timer.cancel()
        timer.join()

    item.cancel_timeout = cancel  # type: ignore[attr-defined]
    timer.start()
    return True


@pytest.fixture
async def asyncio_bridge() -> AsyncIterator[AsyncioBridge]:
    """A trio-asyncio loop for the drivers, opened for one test."""
    async with open_loop() as loop:
        yield AsyncioBridge(loop)


@pytest.fixture(scope="session")
def postgres_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A DSN for a real PostgreSQL server (see tests/support/pg.py for which one)."""
    with (
        pg.postgres_server(tmp_path_factory.mktemp("postgres")) as dsn,
        pg.reader_role_cleanup(dsn),
    ):
        yield dsn


@pytest.fixture(scope="session")
def reference_config(postgres_dsn: str) -> Iterator[Config]:
    """Three freshly created and seeded reference sources on the test server."""
    with pg.reference_databases(postgres_dsn) as config:
        yield config


@pytest.fixture
def fault_proxy(nursery: trio.Nursery) -> ProxyFactory:
    """Make a fault proxy in front of a source's server; returns it and the proxied DSN."""
    return proxy_factory(nursery)
