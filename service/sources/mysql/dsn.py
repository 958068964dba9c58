"""A ``mysql://`` or ``mariadb://`` DSN as the driver's keyword arguments.

The MySQL drivers take keywords, not a URL; the config has already checked the
DSN's shape (``service.config.secrets``), so this only translates it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

DEFAULT_PORT = 3306


def connect_kwargs(dsn: str) -> dict[str, Any]:
    """Host, port, user, password and database of ``dsn``, for ``asyncmy.connect``."""
    parts = urlsplit(dsn)
    kwargs: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": parts.port or DEFAULT_PORT,
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
    }
    database = unquote(parts.path.lstrip("/"))
    if database:
        kwargs["database"] = database
    return kwargs
