"""The replica, hedging and probe keys: defaults, accepted values, one-line refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import load_config
from service.web.metrics import Metrics
from tests.support.configs import load_error

BASE = """
[[sources]]
name = "source_1"
dsn = "postgresql://user:secret@127.0.0.1:5432/source_1"
table = "data_1"
access = "raw"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "collector.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_one_server_auto_delay_a_tenth_and_probes_every_second(
    tmp_path: Path,
) -> None:
    config = load_config(write(tmp_path, BASE))
    (source,) = config.sources
    assert source.replicas == ()
    assert (source.hedge_delay, source.hedge_budget) == (None, 0.1)
    assert config.probe_interval == 1.0


def test_replicas_and_hedging_are_read(tmp_path: Path) -> None:
    text = (
        "probe_interval = 0\n"
        + BASE
        + (
            'replicas = ["postgresql://user:other@10.0.0.2:5432/source_1"]\n'
            "hedge_delay = 0.02\nhedge_budget = 0.05\n"
        )
    )
    config = load_config(write(tmp_path, text))
    (source,) = config.sources
    assert source.replicas == ("postgresql://user:other@10.0.0.2:5432/source_1",)
    assert (source.hedge.delay, source.hedge.budget) == (0.02, 0.05)
    assert config.probe_interval == 0.0
    assert set(source.secrets) == {"secret", "other"}  # both passwords are masked
    assert "other" not in repr(source)


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ('replicas = "postgresql://h/db"', "replicas must be a list of DSN strings"),
        ('replicas = ["mysql://h/db"]', "replicas[0]"),
        (
            'replicas = ["postgresql://user:secret@127.0.0.1:5432/source_1"]',
            "repeats a server already listed",
        ),
        ('hedge_delay = "soon"', 'hedge_delay must be "auto" or a number of seconds > 0'),
        ("hedge_delay = 0", 'hedge_delay must be "auto" or a number of seconds > 0'),
        ("hedge_budget = 1.5", "hedge_budget must be a number from 0 to 1"),
        ("hedge_budget = true", "hedge_budget must be a number"),
    ],
)
def test_bad_replica_keys_are_refused_in_one_line(tmp_path: Path, extra: str, reason: str) -> None:
    message = load_error(write(tmp_path, BASE + extra + "\n"))
    assert reason in message
    assert "secret" not in message


def test_a_negative_probe_interval_is_refused(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, "probe_interval = -1\n" + BASE))
    assert "'probe_interval' must be a number of seconds from 0 to 3600" in message


def test_replica_events_are_counted_per_replica() -> None:
    metrics = Metrics()
    for event in ("fetch", "fetch", "hedge", "hedge_win"):
        metrics.observe_replica("source_1", "1", event)
    text = metrics.render().decode()
    assert 'collector_replica_fetches_total{replica="1",source="source_1"} 2.0' in text
    assert 'collector_replica_hedges_total{replica="1",source="source_1"} 1.0' in text
    assert 'collector_replica_hedge_wins_total{replica="1",source="source_1"} 1.0' in text
