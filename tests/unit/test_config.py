from __future__ import annotations

from pathlib import Path

import pytest

from service.config import DEFAULT_POOL_SIZE, Access, ConfigError, load_config
from service.core.coalesce import DEFAULT_LINGER
from tests.support.configs import load_error

VALID = """
timeout = 1.5
[[sources]]
name = "source_1"
dsn = "postgresql://user:secret@127.0.0.1:5432/source_1"
table = "data_1"
access = "raw"
[[sources]]
name = "source_2"
dsn = "postgres://user@127.0.0.1/source_2"
table = "data_2"
access = "orm"
pool_size = 3
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "collector.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_config_is_loaded_with_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID))
    assert config.timeout == 1.5
    first, second = config.sources
    assert (first.name, first.table, first.access, first.pool_size) == (
        "source_1",
        "data_1",
        Access.RAW,
        DEFAULT_POOL_SIZE,
    )
    assert (second.access, second.pool_size) == (Access.ORM, 3)


def test_coalescing_linger_defaults_and_can_be_turned_off(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, VALID)).coalesce_linger == DEFAULT_LINGER
    config = load_config(write(tmp_path, "coalesce_linger = 0\n" + VALID))
    assert config.coalesce_linger == 0.0
    assert isinstance(config.coalesce_linger, float)


@pytest.mark.parametrize(
    ("key", "default", "value"),
    [
        ("stream_idle_timeout", 30.0, 1.0),
        ("response_timeout", 60.0, 0.5),
        ("probe_timeout", 0.5, 0.25),
        ("ids_check_interval", 60.0, 5.0),
    ],
)
def test_limits_in_seconds_have_defaults_and_can_be_set(
    tmp_path: Path, key: str, default: float, value: float
) -> None:
    assert getattr(load_config(write(tmp_path, VALID)), key) == default
    config = load_config(write(tmp_path, f"{key} = {value:g}\n" + VALID))
    assert getattr(config, key) == value
    assert isinstance(getattr(config, key), float)


def test_timeout_defaults_to_two_seconds(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID.replace("timeout = 1.5", "")))
    assert config.timeout == 2.0


def test_password_never_appears_in_a_source_repr(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID))
    assert "secret" not in repr(config)
    assert config.sources[0].safe_dsn == "postgresql://user:***@127.0.0.1:5432/source_1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("timeout = ", "invalid TOML"),
        ("timeout = 2.0", "missing key 'sources'"),
        ("sources = []", "non-empty array"),
        ("timout = 2.0\n" + VALID, "unknown key 'timout'"),
        (
            VALID.replace("timeout = 1.5", "timeout = 0"),
            "'timeout' must be a number of seconds > 0",
        ),
        (VALID.replace("timeout = 1.5", 'timeout = "2"'), "'timeout' must be a number"),
        (VALID.replace("timeout = 1.5", "timeout = true"), "'timeout' must be a number"),
        (VALID.replace('access = "orm"', 'access = "odbc"'), "unknown access mode 'odbc'"),
        (VALID.replace('table = "data_1"\n', ""), "sources[0]: missing key 'table'"),
        (VALID.replace('name = "source_2"', 'name = "source_1"'), "duplicate source name"),
        (
            VALID.replace("pool_size = 3", "pool_size = 0"),
            "pool_size must be a whole number from 1 to 100",
        ),
        (VALID.replace('access = "raw"', 'access = "raw"\nextra = 1'), "unknown key 'extra'"),
        (VALID.replace('name = "source_1"', 'name = "a b"'), "must be 1-64 characters"),
        (
            VALID.replace("postgres://user@", "oracle://user@"),
            "dsn must start with postgresql://, mysql:// or mariadb://",
        ),
        (
            VALID.replace('table = "data_1"', 'table = "data_1; DROP TABLE data_1"'),
            "is not a plain identifier",
        ),
        (VALID.replace('table = "data_1"', 'table = "data_1\\""'), "is not a plain identifier"),
        ("coalesce_linger = -0.001\n" + VALID, "'coalesce_linger' must be a number"),
        ("coalesce_linger = 0.5\n" + VALID, "from 0 to 0.02"),
        ("coalesce_linger = true\n" + VALID, "'coalesce_linger' must be a number"),
        ("stream_idle_timeout = 0\n" + VALID, "'stream_idle_timeout' must be a number"),
        ("stream_idle_timeout = inf\n" + VALID, "'stream_idle_timeout' must be a number"),
        ('response_timeout = "60"\n' + VALID, "'response_timeout' must be a number"),
        ("probe_timeout = 0\n" + VALID, "'probe_timeout' must be a number of seconds > 0"),
        ("probe_timeout = 'fast'\n" + VALID, "'probe_timeout' must be a number"),
        ("probe_timeout = nan\n" + VALID, "'probe_timeout' must be a number"),
        ("ids_check_interval = -1\n" + VALID, "'ids_check_interval' must be a number"),
        ("ids_check_interval = 1e9\n" + VALID, "<= 86400"),
        ("ids_check_interval = true\n" + VALID, "'ids_check_interval' must be a number"),
    ],
)
def test_bad_config_is_rejected_with_a_one_line_reason(
    tmp_path: Path, text: str, message: str
) -> None:
    reason = load_error(write(tmp_path, text))
    assert message in reason
    assert "secret" not in reason


def test_missing_file_is_reported_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read file"):
        load_config(tmp_path / "nope.toml")
