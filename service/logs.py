"""Structured logging: one JSON object per line on stderr.

Every line carries the id of the request it belongs to (from a ContextVar that the
HTTP layer sets and Trio copies into each source's task), so one request's access
line and its failed sources can be found together.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

#: The id of the request being served in this task, if any.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
#: Facts about the request that belong in its access line. The HTTP layer sets a
#: fresh dict per request; handlers running in child tasks see the same dict (a
#: context copy is shallow) and add to it.
request_fields: ContextVar[dict[str, object] | None] = ContextVar("request_fields", default=None)

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is
# emitted as a field of its own.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """Formats a record as a single JSON object with its ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """One line: time, level, logger, message, request id, extra fields."""
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,  # which worker, when several serve one socket
        }
        current = request_id.get()
        if current is not None:
            entry["request_id"] = current
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class DriverNoiseFilter(logging.Filter):
    """One line, at warning level, for the errors drivers log about abandoned work.

    When a fetch is abandoned at its deadline, SQLAlchemy's pool throws the
    connection away and logs the failed close with a full traceback. That is the
    expected consequence of a deadline, already reported as a ``timeout``; a
    traceback per request would drown everything else.
    """

    NOISY = ("sqlalchemy.pool",)

    def filter(self, record: logging.LogRecord) -> bool:
        """Strip the traceback of noisy driver records and demote them."""
        if record.name.startswith(self.NOISY) and record.exc_info:
            error = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(error).__name__}"
            record.args = None
            record.exc_info = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def setup_logging(level: int = logging.INFO) -> None:
    """Send every logger's records to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(DriverNoiseFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
