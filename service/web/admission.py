"""The cap on data requests in progress: beyond it they are refused, not queued.

Not to be confused with the core's per-source permit: this counts HTTP requests.
"""

from __future__ import annotations


class Admission:
    """Counts data requests in progress; beyond the cap they are refused, not queued."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_progress = 0

    def enter(self) -> bool:
        """Admit one more request if under the cap."""
        if self.in_progress >= self.limit:
            return False
        self.in_progress += 1
        return True

    def leave(self) -> None:
        """An admitted request has finished."""
        self.in_progress -= 1
