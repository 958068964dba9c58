"""OpenTelemetry behind the core's tracing seam, configured by the standard ``OTEL_*`` variables.

Tracing is off unless the environment asks for it, and then nothing of
OpenTelemetry is imported (its SDK and exporter take about 0.35 s to import): the
core's spans stay the shared no-op. It is on when ``OTEL_SDK_DISABLED`` is not
``true`` and either ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, the OTLP
HTTP/protobuf one, or ``console``) or an OTLP endpoint is set
(``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``). Every
other setting is the SDK's own: ``OTEL_SERVICE_NAME`` (default here: ``collector``),
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_PROPAGATORS`` (default:
W3C trace context and baggage), ``OTEL_EXPORTER_OTLP_*`` and ``OTEL_BSP_*``.
Spans are exported in batches from the SDK's own thread, never on a request's path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING

import trio

from service.core import tracing
from service.core.tracing import Attributes, AttributeValue

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span as OtelSpan
    from opentelemetry.trace import Tracer as OtelTracer

log = logging.getLogger("collector.tracing")

DEFAULT_SERVICE_NAME = "collector"
EXPORTERS = ("otlp", "console")


def wanted(env: Mapping[str, str]) -> bool:
    """Whether the environment configures tracing (see the module docstring)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER")
    if exporters is not None:
        return any(name.strip().lower() not in ("", "none") for name in exporters.split(","))
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure(env: Mapping[str, str]) -> Callable[[], None] | None:
    """Install the OpenTelemetry tracer if ``env`` asks for it; returns how to flush and stop."""
    if not wanted(env):
        tracing.install(None)
        return None
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    for name in names:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name not in ("", "none"):
            log.warning("OTEL_TRACES_EXPORTER %r is not one of %s: ignored", name, EXPORTERS)
    install_provider(provider)
    return provider.shutdown


def install_provider(provider: TracerProvider) -> None:
    """Send the service's spans to ``provider`` (tests pass one with an in-memory exporter)."""
    tracing.install(OpenTelemetryTracer(provider.get_tracer("collector")))


class SpanHandle:
    """An OpenTelemetry span as the core's ``Span``."""

    __slots__ = ("_span",)

    def __init__(self, span: OtelSpan) -> None:
        self._span = span

    def set(self, key: str, value: AttributeValue) -> None:
        """Record one attribute."""
        self._span.set_attribute(key, value)

    def fail(self, description: str) -> None:
        """Mark the span as failed, with a short reason."""
        from opentelemetry.trace import Status, StatusCode

        self._span.set_status(Status(StatusCode.ERROR, description))


class OpenTelemetryTracer:
    """The core's ``Tracer`` over an OpenTelemetry tracer."""

    def __init__(self, tracer: OtelTracer) -> None:
        from opentelemetry import propagate
        from opentelemetry.trace import SpanKind

        self._tracer = tracer
        self._extract = propagate.extract
        self._kinds = {True: SpanKind.SERVER, False: SpanKind.INTERNAL}

    def span(
        self,
        name: str,
        attributes: Attributes | None = None,
        *,
        carrier: Mapping[str, str] | None = None,
        server: bool = False,
    ) -> AbstractContextManager[SpanHandle]:
        """A current span; with a ``carrier``, its parent is the caller's ``traceparent``."""
        return self._open(name, attributes, carrier, server)

    @contextmanager
    def _open(
        self,
        name: str,
        attributes: Attributes | None,
        carrier: Mapping[str, str] | None,
        server: bool,
    ) -> Iterator[SpanHandle]:
        parent = None if carrier is None else self._extract(carrier)
        with self._tracer.start_as_current_span(
            name,
            context=parent,
            kind=self._kinds[server],
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            handle = SpanHandle(span)
            try:
                yield handle
            except trio.Cancelled:
                # Cancelled from outside (the client left, or shutdown): not a failure.
                span.set_attribute("collector.cancelled", True)
                raise
            except BaseException as error:
                handle.fail(type(error).__name__)
                raise
