"""Which PostgreSQL the embedded default runs on a data directory, and stale handles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.embedded import (
    HANDLES_FILE,
    SHIPPED_VERSIONS,
    EmbeddedError,
    forget_dead_handles,
    server_version,
)


def test_a_new_directory_gets_the_newest_shipped_version(tmp_path: Path) -> None:
    assert server_version(tmp_path / "pgdata") == SHIPPED_VERSIONS[0] == 18


def test_a_directory_of_the_old_default_keeps_its_version(tmp_path: Path) -> None:
    (tmp_path / "PG_VERSION").write_text("16\n")
    assert server_version(tmp_path) == 16


@pytest.mark.parametrize("content", ["15\n", "17\n", "garbage"])
def test_a_directory_the_package_cannot_run_is_refused_in_one_line(
    tmp_path: Path, content: str
) -> None:
    (tmp_path / "PG_VERSION").write_text(content)
    with pytest.raises(EmbeddedError) as caught:
        server_version(tmp_path)
    assert "\n" not in str(caught.value)
    assert str(tmp_path) in str(caught.value)


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_handles_of_dead_processes_are_forgotten(tmp_path: Path) -> None:
    import os

    gone = dead_pid()
    (tmp_path / HANDLES_FILE).write_text(json.dumps([gone, os.getpid()]))
    forget_dead_handles(tmp_path)
    assert json.loads((tmp_path / HANDLES_FILE).read_text()) == [os.getpid()]


def test_a_missing_or_unreadable_handle_list_is_left_alone(tmp_path: Path) -> None:
    forget_dead_handles(tmp_path)
    assert not (tmp_path / HANDLES_FILE).exists()
    (tmp_path / HANDLES_FILE).write_text("{not json")
    forget_dead_handles(tmp_path)
    assert (tmp_path / HANDLES_FILE).read_text() == "{not json"


def test_a_pid_known_to_be_gone_is_forgotten_even_if_it_still_answers(tmp_path: Path) -> None:
    import os

    # The watchdog sees its service's pipe close before the service is reaped.
    (tmp_path / HANDLES_FILE).write_text(json.dumps([os.getpid()]))
    forget_dead_handles(tmp_path, gone=os.getpid())
    assert json.loads((tmp_path / HANDLES_FILE).read_text()) == []
