"""The core: fan a question out to every source, guard each one, merge the answers by id.

It knows nothing of HTTP or SQL. The rooms: ``model`` (values), ``ports`` (what a
source is, and how it may fail), ``guard`` (one source's clearance, deadline,
breaker verdict and outcome), ``collect`` (plain and paged requests), ``stream``
(the streaming merge), ``paging`` (cursors), ``breaker``, ``coalesce``, ``declared``.
The names below are the ones the rest of the service uses.
"""

from service.core.breaker import BreakerSettings, BreakerState, CircuitBreaker, Permit
from service.core.collect import Collector, merge_by_id
from service.core.declared import DeclaredIds, IdsState
from service.core.guard import Guard, OutcomeObserver, attempt, check_order, count_outside
from service.core.model import (
    Answer,
    Cursor,
    IdRange,
    IdRanges,
    Outcome,
    Probe,
    Query,
    Row,
    Status,
    Window,
    clip_ranges,
    merge_ranges,
)
from service.core.paging import cursor_at, next_cursor
from service.core.ports import (
    MAX_ERROR_LENGTH,
    Member,
    RowStream,
    Source,
    SourceError,
    SourceSkipped,
    describe_error,
)
from service.core.probing import ProbeTarget, keep_probing
from service.core.replicas import HedgeSettings, ReplicaObserver, ReplicaSet, answered_by

__all__ = [
    "MAX_ERROR_LENGTH",
    "Answer",
    "BreakerSettings",
    "BreakerState",
    "CircuitBreaker",
    "Collector",
    "Cursor",
    "DeclaredIds",
    "Guard",
    "HedgeSettings",
    "IdRange",
    "IdRanges",
    "IdsState",
    "Member",
    "Outcome",
    "OutcomeObserver",
    "Permit",
    "Probe",
    "ProbeTarget",
    "Query",
    "ReplicaObserver",
    "ReplicaSet",
    "Row",
    "RowStream",
    "Source",
    "SourceError",
    "SourceSkipped",
    "Status",
    "Window",
    "answered_by",
    "attempt",
    "check_order",
    "clip_ranges",
    "count_outside",
    "cursor_at",
    "describe_error",
    "keep_probing",
    "merge_by_id",
    "merge_ranges",
    "next_cursor",
]
