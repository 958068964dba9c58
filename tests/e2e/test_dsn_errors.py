"""A DSN the driver cannot parse stops the real command with a one-line config error."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import collector_command

pytestmark = pytest.mark.e2e

SECRET = "hunter2-dsn-password"


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["init-db"]])
@pytest.mark.parametrize(
    "dsn",
    [f"postgresql://u:{SECRET}@[::1/db", f"postgresql://u:{SECRET}@127.0.0.1:70000/db"],
)
def test_unparsable_dsn_is_a_config_error_with_exit_2(
    tmp_path: Path, command: list[str], dsn: str
) -> None:
    config_file = tmp_path / "c.toml"
    config_file.write_text(
        f'[[sources]]\nname = "a"\ndsn = "{dsn}"\ntable = "t"\naccess = "orm"\n', encoding="utf-8"
    )
    result = subprocess.run(
        [*collector_command(), *command, "--config", str(config_file)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"collector: config error: {config_file}: source 'a': dsn ")
    assert SECRET not in result.stdout + result.stderr
