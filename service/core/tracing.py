"""The tracing seam: spans for a request, each source, and each fetch attempt.

The core knows no tracing library. It opens spans through :func:`span`, which is a
no-op (one shared object, nothing recorded, nothing imported) until a tracer is
installed with :func:`install` (``service/runtime/tracing.py`` installs the
OpenTelemetry one when the ``OTEL_*`` environment asks for it).

A span opened with ``with span(...)`` is the current one for the code inside the
block, in this task and in the tasks it starts, so a span opened further down
(say a composite source's per-replica attempt inside a fetch) becomes its child
without being handed a parent. The block must not contain a ``yield`` of an async
generator (the current span would leak to the consumer): streams open one span per
batch, between yields.

Span names and attributes (``docs/operations.md`` lists them for operators)::

    GET /collect-data        (the web layer) the request; W3C traceparent honoured
    collector.source         one source in one plain, paged or single-id collection
    collector.fetch          one call to a source under its deadline (a plain fetch,
                             or one batch of a stream)
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Protocol

#: What a span attribute may hold (OpenTelemetry's primitive attribute values).
AttributeValue = str | bool | int | float
Attributes = Mapping[str, AttributeValue]

SOURCE_SPAN = "collector.source"
FETCH_SPAN = "collector.fetch"


class Span(Protocol):
    """The part of a span the service writes to."""

    def set(self, key: str, value: AttributeValue) -> None:
        """Record one attribute."""
        ...

    def fail(self, description: str) -> None:
        """Mark the span as failed (its status), with a short reason."""
        ...


class Tracer(Protocol):
    """Makes spans; ``carrier`` (request headers) may name a remote parent."""

    def span(
        self,
        name: str,
        attributes: Attributes | None = None,
        *,
        carrier: Mapping[str, str] | None = None,
        server: bool = False,
    ) -> AbstractContextManager[Span]:
        """A span that is current inside the ``with`` block; ``server`` for a request."""
        ...


class _NoSpan:
    """The span of no tracer: accepts everything, records nothing."""

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        return None

    def set(self, key: str, value: AttributeValue) -> None:
        """Nothing to record."""

    def fail(self, description: str) -> None:
        """Nothing to record."""


NO_SPAN = _NoSpan()
_tracer: Tracer | None = None


def install(tracer: Tracer | None) -> None:
    """Make ``tracer`` the one every span goes to (None: tracing off)."""
    global _tracer
    _tracer = tracer


def active() -> Tracer | None:
    """The installed tracer, if tracing is on."""
    return _tracer


def span(name: str, attributes: Attributes | None = None) -> AbstractContextManager[Span]:
    """A span named ``name``, child of the current one; the shared no-op when off."""
    tracer = _tracer
    if tracer is None:
        return NO_SPAN
    return tracer.span(name, attributes)
