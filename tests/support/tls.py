"""A throwaway PostgreSQL that accepts only TLS, with a certificate authority of its own.

The system's PostgreSQL binaries run ``initdb`` and ``postgres`` in a temporary
directory on a free port; ``openssl`` makes a CA and a server certificate for
``localhost``. ``pg_hba.conf`` trusts TLS connections and rejects all others, so a
connection that succeeds is a TLS one. PostgreSQL refuses to run as root, so under
root the server runs as ``nobody``, which then owns the directory.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.pg import unused_port

#: The table the server is seeded with, and its rows.
TABLE = "data_tls"
ROWS = [(i, f"Secure {i}") for i in range(1, 6)]
SERVER_USER = "nobody"


@dataclass(frozen=True)
class TlsServer:
    port: int
    ca_file: Path

    def dsn(self, host: str = "localhost", **parameters: str) -> str:
        query = "&".join(f"{key}={value}" for key, value in parameters.items())
        return f"postgresql://postgres@{host}:{self.port}/postgres" + (f"?{query}" if query else "")


def postgres_bin() -> Path | None:
    """The newest system PostgreSQL's bin directory, or None if there is none."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parent.parent.name),
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", SERVER_USER, "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str], **kwargs: object) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=60, **kwargs)  # type: ignore[call-overload]


def _make_certificates(directory: Path) -> None:
    """A CA, and a server certificate it signed for CN and SAN ``localhost``."""
    openssl = ["openssl", "req", "-new", "-nodes", "-newkey", "rsa:2048"]
    _run(
        [
            *openssl,
            "-x509",
            "-days",
            "2",
            "-subj",
            "/CN=collector test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
        cwd=directory,
    )
    _run(
        [*openssl, "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr"],
        cwd=directory,
    )
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost\n", encoding="utf-8")
    _run(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ],
        cwd=directory,
    )
    (directory / "server.key").chmod(0o600)


def _configure(data: Path, directory: Path, port: int) -> None:
    with (data / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write(
            f"port = {port}\nlisten_addresses = 'localhost'\n"
            f"unix_socket_directories = '{directory}'\n"
            f"ssl = on\nssl_cert_file = '{directory / 'server.crt'}'\n"
            f"ssl_key_file = '{directory / 'server.key'}'\n"
        )
    (data / "pg_hba.conf").write_text(
        "local all all trust\n"
        "hostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n"
        "hostnossl all all 127.0.0.1/32 reject\nhostnossl all all ::1/128 reject\n",
        encoding="utf-8",
    )


@contextmanager
def tls_only_server(bin_dir: Path) -> Iterator[TlsServer]:
    """Start the TLS-only server, seeded with ``TABLE``; stop it and delete it after."""
    directory = Path(tempfile.mkdtemp(prefix="collector-tls-"))
    directory.chmod(0o755)
    data = directory / "data"
    port = unused_port()
    try:
        _make_certificates(directory)
        if os.geteuid() == 0:
            user = pwd.getpwnam(SERVER_USER)
            for path in [directory, *directory.iterdir()]:
                os.chown(path, user.pw_uid, user.pw_gid)
        _run(
            _as_server_user(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--no-sync",
                ]
            )
        )
        _configure(data, directory, port)
        pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-t", "30"]
        _run(_as_server_user([*pg_ctl, "-l", str(directory / "server.log"), "start"]))
        try:
            values = ", ".join(f"({i}, '{name}')" for i, name in ROWS)
            sql = f"CREATE TABLE {TABLE} (id INT PRIMARY KEY, name VARCHAR(255));"
            sql += f"INSERT INTO {TABLE} VALUES {values};"
            _run(
                [
                    str(bin_dir / "psql"),
                    "-h",
                    str(directory),
                    "-p",
                    str(port),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-c",
                    sql,
                ]
            )
            yield TlsServer(port=port, ca_file=directory / "ca.crt")
        finally:
            _run(_as_server_user([*pg_ctl, "-m", "fast", "stop"]))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
