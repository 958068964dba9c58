"""MySQL sources without a server: the DSN as driver arguments, and each session's settings."""

from __future__ import annotations

import pytest

from service.sources.base import DriverLimits
from service.sources.mysql.dsn import connect_kwargs
from service.sources.mysql.session import SessionSpec


def test_dsn_becomes_the_drivers_keyword_arguments() -> None:
    assert connect_kwargs("mysql://app:p%40ss%3Aw@db.internal:3307/source_1") == {
        "host": "db.internal",
        "port": 3307,
        "user": "app",
        "password": "p@ss:w",
        "database": "source_1",
    }
    assert connect_kwargs("mariadb://reader@10.0.0.5/legacy") == {
        "host": "10.0.0.5",
        "port": 3306,
        "user": "reader",
        "password": "",
        "database": "legacy",
    }


def test_driver_timeouts_sit_at_the_deadline_behind_the_cut_just_below_it() -> None:
    spec = SessionSpec.for_dsn("mysql://u@h/db", DriverLimits.for_source("s", 2.0))
    assert spec.limits.timeout == pytest.approx(1.95)
    assert spec.connect["connect_timeout"] == 2.0
    assert "read_timeout" not in spec.connect  # costs a task per packet; ``bounded`` cuts
    assert spec.connect["program_name"] == "collector:s"


@pytest.mark.parametrize(
    ("server", "limit"),
    [
        ("5.5.5-10.11.19-MariaDB-0+deb12u1", "max_statement_time = 2.500"),
        ("11.4.2-MariaDB", "max_statement_time = 2.500"),
        ("8.0.36", "max_execution_time = 2500"),
        ("8.4.0-commercial", "max_execution_time = 2500"),
    ],
)
def test_each_engine_gets_its_own_statement_limit_and_every_session_is_read_only(
    server: str, limit: str
) -> None:
    spec = SessionSpec.for_dsn("mysql://u@h/db", DriverLimits.for_source("s", 2.5))
    assert spec.settings(server) == [
        f"SET SESSION {limit}, SESSION lock_wait_timeout = 3",
        "SET SESSION TRANSACTION READ ONLY",
    ]
