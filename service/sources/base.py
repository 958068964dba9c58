"""What every source implementation shares: driver time limits and row checking."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from service.core import Row, SourceError, describe_error
from service.sources.bridge import AsyncioBridge

T = TypeVar("T")

#: The drivers' own timeouts fire this many seconds before the deadline (at most a
#: tenth of it), so the asyncio side gives up and cleans up its connection just
#: before Trio stops waiting. Trio's cancel scope remains the authority on the
#: deadline; this only keeps the abandoned side short-lived.
DRIVER_TIMEOUT_MARGIN = 0.05
#: Seconds an idle pooled connection is kept before it is closed.
IDLE_CONNECTION_LIFETIME = 300.0


class SourceDataError(Exception):
    """A source returned rows that do not have the product's table shape."""


@dataclass(frozen=True, slots=True)
class DriverLimits:
    """Time limits handed to the drivers, derived from the collection deadline."""

    timeout: float
    """Seconds for connect, pool acquire and each statement on the client side."""
    statement_timeout_ms: int
    """PostgreSQL ``statement_timeout``: the server stops the query itself even if
    the client's cancel request never arrives."""
    application_name: str
    """Shown in ``pg_stat_activity``, so an operator can find our queries."""

    @classmethod
    def for_source(cls, name: str, deadline: float) -> DriverLimits:
        """Limits for one source under a per-source deadline in seconds."""
        return cls(
            timeout=deadline - min(DRIVER_TIMEOUT_MARGIN, deadline / 10),
            statement_timeout_ms=max(1, math.ceil(deadline * 1000)),
            application_name=f"collector:{name}"[:63],
        )

    def server_settings(self) -> dict[str, str]:
        """Session settings sent with every new connection."""
        return {
            "application_name": self.application_name,
            "statement_timeout": str(self.statement_timeout_ms),
        }


def checked_row(row_id: object, name: object) -> Row:
    """Build a Row, refusing values that would break the response contract."""
    if isinstance(row_id, bool) or not isinstance(row_id, int):
        raise SourceDataError(f"id must be an integer, got {type(row_id).__name__}")
    if name is not None and not isinstance(name, str):
        raise SourceDataError(f"name must be text or NULL, got {type(name).__name__}")
    return Row(row_id, name)


async def run_driver(
    bridge: AsyncioBridge, secrets: Iterable[str], fn: Callable[[], Awaitable[T]]
) -> T:
    """Run driver code on the asyncio loop; report failures without secrets.

    A driver's message can quote its connection parameters, so every failure other
    than a timeout becomes a SourceError whose text has the DSN's password masked.
    Timeouts pass through unchanged: the core reports them as ``timeout``.
    """
    try:
        return await bridge.run(fn)
    except TimeoutError:
        raise
    except Exception as exc:
        text = describe_error(exc)
        for secret in secrets:
            if secret:
                text = text.replace(secret, "***")
        raise SourceError(text) from exc
