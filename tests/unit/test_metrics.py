"""Metrics read at scrape time, and the directory several workers share them in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.sources.pool import BudgetUsage
from service.web.metrics import MULTIPROCESS_DIR_ENV, Metrics, shared_metrics_dir


def test_a_private_directory_is_made_for_the_run_and_removed_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(MULTIPROCESS_DIR_ENV, raising=False)
    with shared_metrics_dir() as directory:
        assert os.environ[MULTIPROCESS_DIR_ENV] == str(directory)
        assert list(directory.iterdir()) == []
    assert not directory.exists()
    assert MULTIPROCESS_DIR_ENV not in os.environ


def test_an_operators_directory_is_emptied_of_a_previous_runs_values(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "counter_123.db").write_bytes(b"old values")
    (tmp_path / "notes.txt").write_text("not ours")
    monkeypatch.setenv(MULTIPROCESS_DIR_ENV, str(tmp_path))
    with shared_metrics_dir() as directory:
        assert directory == tmp_path
        assert sorted(p.name for p in directory.iterdir()) == ["notes.txt"]
    assert tmp_path.exists()
    assert os.environ[MULTIPROCESS_DIR_ENV] == str(tmp_path)


def test_shared_metrics_refuse_a_process_not_in_multiprocess_mode(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=MULTIPROCESS_DIR_ENV):
        Metrics(tmp_path)


def test_each_servers_connections_are_read_at_scrape_time() -> None:
    usage = [BudgetUsage("db.example:5432", limit=64, open=5, in_use=3, waiting=2)]
    metrics = Metrics()
    metrics.watch_connections(lambda: usage)
    text = metrics.render().decode()
    assert 'collector_server_connections{server="db.example:5432",state="open"} 5.0' in text
    assert 'collector_server_connections{server="db.example:5432",state="waiting"} 2.0' in text
    usage[0] = BudgetUsage("db.example:5432", limit=64, open=9, in_use=9, waiting=0)
    assert 'state="open"} 9.0' in metrics.render().decode()
