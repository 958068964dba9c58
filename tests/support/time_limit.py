"""The per-test time limit: a trio test past it is cancelled and fails; anything else is cut.

pytest-timeout's own methods cannot stop a trio test cleanly: "signal" raises inside
trio's scheduler and corrupts the next test's run, "thread" ends the whole process. So
trio tests get a clean cancellation here, and pytest-timeout stays as the backstop.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import pytest_timeout
import trio

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
    """Run every trio test under a wall-clock limit, so a broken deadline fails, not hangs."""
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
