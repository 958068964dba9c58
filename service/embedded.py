"""The embedded default: a private PostgreSQL server for running with no config at all.

``collector serve`` without a config starts PostgreSQL 16 from the ``pgserver``
package (binaries ship inside the wheel), keeps its data in a per-user directory,
and creates and seeds the reference databases on first run. The server listens on
a Unix socket only, and is stopped when the service stops.
"""

from __future__ import annotations

import logging
import os
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
        # platformdirs warns at pgserver's import time when XDG_RUNTIME_DIR is unset
        # (as for root on a server) and falls back to a private directory: harmless.
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import get_server
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    path.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(path, cleanup_mode="stop")
    try:
        yield server
    finally:
        server.cleanup()


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
