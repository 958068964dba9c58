"""The per-test time limit, run on a small suite of its own (pytester, a subprocess)."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

HANGING = """
import pytest
import trio


async def test_hangs():
    await trio.sleep_forever()


async def test_virtual_hours_on_autojump_clock_are_fine(autojump_clock):
    await trio.sleep(24 * 3600)


@pytest.mark.timeout(30)
async def test_marker_raises_the_limit():
    await trio.sleep(1.5)


async def test_runs_after_a_cancelled_one():
    await trio.sleep(0)
"""


def test_a_hung_trio_test_fails_at_the_limit_and_the_run_goes_on(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_inner=HANGING)
    result = pytester.runpytest_subprocess(
        "-p",
        "tests.support.time_limit",
        "-o",
        "trio_mode=true",
        "-o",
        "timeout=1",
        "-o",
        "timeout_method=thread",
    )
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*test_hangs*trio test still running after 1 s*"])
