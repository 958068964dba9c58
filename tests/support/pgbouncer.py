"""A real PgBouncer in transaction mode in front of the test PostgreSQL.

The tests use Debian's ``pgbouncer`` (1.18: no prepared statements in transaction
mode). Where it is not installed the tests that need it are skipped, unless
``COLLECTOR_REQUIRE_PGBOUNCER`` is set (as CI sets it, after installing it), in
which case they fail.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.support.pg import answers, server_address, unused_port

REQUIRE_ENV = "COLLECTOR_REQUIRE_PGBOUNCER"
#: PgBouncer refuses to run as root; it is told to switch to this user then.
UNPRIVILEGED_USER = "postgres"


@dataclass(frozen=True, slots=True)
class Bouncer:
    """A running PgBouncer: where it listens, and the DSN of a database through it."""

    port: int
    pool_size: int

    def dsn(self, direct_dsn: str) -> str:
        """``direct_dsn`` (a database on the test server) pointed at this PgBouncer."""
        parts = urlsplit(direct_dsn)
        user = parts.username or "postgres"
        return urlunsplit(("postgresql", f"{user}@127.0.0.1:{self.port}", parts.path, "", ""))


def find_pgbouncer() -> str:
    """The pgbouncer binary, or skip (fail when CI requires it)."""
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(p).exists()), None
    )
    if found is None:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail("pgbouncer is required but not installed (apt-get install pgbouncer)")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    return found


@contextmanager
def pgbouncer(server_dsn: str, pool_size: int = 2) -> Iterator[Bouncer]:
    """Run PgBouncer (transaction mode, ``pool_size`` server connections per database)."""
    binary = find_pgbouncer()
    address = server_address(server_dsn)
    if isinstance(address, str):
        pytest.skip("PgBouncer tests need a PostgreSQL server on TCP")
    host, port = address
    listen = unused_port()
    with tempfile.TemporaryDirectory(prefix="collector-pgbouncer-") as scratch:
        folder = Path(scratch)
        (folder / "users.txt").write_text('"postgres" ""\n')
        (folder / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={host} port={port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {listen}\n"
            "unix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\nmax_client_conn = 1000\n"
            f"logfile = {folder / 'pgbouncer.log'}\n"
        )
        command = [binary, str(folder / "pgbouncer.ini")]
        if os.geteuid() == 0:
            user = pwd.getpwnam(UNPRIVILEGED_USER)
            os.chown(folder, user.pw_uid, user.pw_gid)
            for child in folder.iterdir():
                os.chown(child, user.pw_uid, user.pw_gid)
            command[1:1] = ["-u", UNPRIVILEGED_USER]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_until_listening(process, listen, folder / "pgbouncer.log")
            yield Bouncer(listen, pool_size)
        finally:
            process.send_signal(signal.SIGINT)  # PgBouncer's "shut down now"
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = log.read_text() if log.exists() else "(no log)"
            pytest.fail(f"pgbouncer exited with {process.returncode}: {text}")
        if answers("127.0.0.1", port):
            return
        time.sleep(0.05)
    pytest.fail("pgbouncer did not start listening within 10 s")
