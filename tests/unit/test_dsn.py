"""DSN checks at config load, and redaction of what cannot be parsed."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config.secrets import DsnError, check_dsn, redact_dsn
from tests.support.configs import load_error

SOURCE = '[[sources]]\nname = "a"\ndsn = "{dsn}"\ntable = "t"\naccess = "{access}"\n'


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:pw@127.0.0.1:5432/db",
        "postgres://u@[::1]:5432/db",
        "postgresql://u@h1:5432,h2:5433/db",
        "postgresql:///db?host=/run/postgresql",
        "postgresql://u:@/db?host=/tmp/x&port=5433",
        "mysql://u:pw@127.0.0.1:3306/db",
        "mariadb://u@db.example/source_1",
    ],
)
def test_usable_dsns_pass(dsn: str) -> None:
    check_dsn(dsn)


@pytest.mark.parametrize(
    ("dsn", "reason"),
    [
        ("postgresql://u:pw@[::1/db", "is not a valid URL"),
        ("postgresql://u:pw@h:99999/db", "bad host or port"),
        ("postgresql://u:pw@h:port/db", "bad host or port"),
        ("postgresql://u:pw@h:0/db", "bad port"),
        ("oracle://u:pw@h/db", "must start with postgresql://, mysql:// or mariadb://"),
        ("mysql://u:pw@h:99999/db", "bad host or port"),
        ("mysql://u:pw@h1,h2/db", "must name one host"),
        ("mysql://u:pw@/db", "must name one host"),
        ("mysql://u:pw@h", "must name a database"),
        ("mariadb://u:pw@h/db/x", "must name a database"),
        ("mysql://u:pw@h/db?ssl=1", "takes no query parameters"),
        ("postgresql://u:pw@h/db?sslmode", "malformed query string"),
        ("postgresql://u:pw@h/db?user=a&user=b", "parameter 'user' twice"),
    ],
)
def test_unusable_dsns_are_refused_without_the_password(dsn: str, reason: str) -> None:
    with pytest.raises(DsnError) as caught:
        check_dsn(dsn)
    assert reason in str(caught.value)
    assert "pw" not in str(caught.value)


@pytest.mark.parametrize("access", ["raw", "orm"])
def test_config_with_an_unparsable_dsn_is_a_one_line_config_error(
    tmp_path: Path, access: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(SOURCE.format(dsn="postgresql://u:hunter2@[::1/db", access=access), "utf-8")
    message = load_error(path)
    assert message == (
        f"{path}: source 'a': dsn is not a valid URL (Invalid IPv6 URL) "
        "(got 'postgresql://u:***@[::1/db')"
    )


@pytest.mark.parametrize(
    ("dsn", "redacted"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h/db?user=u&password=pw", "postgresql://h/db?user=u&password=***"),
        ("postgresql://u:@/db?host=/run/pg", "postgresql://u:***@/db?host=/run/pg"),
        ("postgresql://u:pw@[::1/db", "postgresql://u:***@[::1/db"),
        ("postgresql://u@[::1/db", "postgresql://u@[::1/db"),
        ("postgresql://[::1/db?password=pw", "<unparsable dsn>"),
    ],
)
def test_passwords_are_redacted_even_in_unparsable_dsns(dsn: str, redacted: str) -> None:
    assert redact_dsn(dsn) == redacted


@pytest.mark.parametrize(
    "mode", ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
)
def test_every_libpq_tls_parameter_is_accepted(mode: str) -> None:
    check_dsn(
        f"postgresql://u:pw@db.example.com/app?sslmode={mode}&sslrootcert=/etc/ca.crt"
        "&sslcert=/etc/client.crt&sslkey=/etc/client.key"
    )
    check_dsn("postgresql:///app?host=/run/pg&port=5433&dbname=app&user=u&password=pw")


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("ssl_mode=require", "unsupported parameter 'ssl_mode' (supported: host, port, dbname"),
        ("sslmode=verify_full", "sslmode 'verify_full' (use one of: disable, allow, prefer"),
        ("sslmode=", "sslmode ''"),
        ("application_name=x", "unsupported parameter 'application_name'"),
        ("sslpassword=hunter2", "unsupported parameter 'sslpassword'"),
        ("port=99999", "bad port parameter"),
    ],
)
def test_other_parameters_are_a_one_line_config_error(
    tmp_path: Path, query: str, reason: str
) -> None:
    path = tmp_path / "c.toml"
    dsn = f"postgresql://u:hunter2@127.0.0.1/db?{query}"
    path.write_text(SOURCE.format(dsn=dsn, access="orm"), "utf-8")
    message = load_error(path)
    assert message.startswith(f"{path}: source 'a': dsn has ")
    assert reason in message
    assert "hunter2" not in message
