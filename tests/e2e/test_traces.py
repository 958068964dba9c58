"""Traces from the real ``collector serve``, configured only by ``OTEL_*`` variables.

A minimal OTLP/HTTP receiver in the test takes the protobuf exports the SDK sends.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from service.config import Config
from tests.e2e.conftest import serving

pytestmark = pytest.mark.e2e

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class Receiver:
    """Accepts OTLP/HTTP posts on 127.0.0.1 and keeps their bodies."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, stream: trio.SocketStream) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += await stream.receive_some(65536)
                self.bodies.append(buffer[:length])
                buffer = buffer[length:]
                await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        except trio.BrokenResourceError:
            return

    def spans(self) -> list[tuple[dict[str, str], object]]:
        """Every exported span, with its resource's string attributes."""
        found = []
        for body in self.bodies:
            request = ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    found.extend((resource, span) for span in scope.spans)
        return found


async def test_otel_variables_alone_export_the_request_and_its_sources(
    reference_config: Config, tmp_path: Path, nursery: trio.Nursery
) -> None:
    receiver = Receiver()
    port = await nursery.start(receiver.serve)
    env = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{port}/v1/traces",
        "OTEL_SERVICE_NAME": "collector-e2e",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    async with serving(reference_config, tmp_path, env=env) as (_server, client):
        response = await client.get(
            "/collect-data", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
        )
        assert response.status_code == 200
    # The server has stopped: what was still batched was flushed on the way out.
    exported = receiver.spans()
    assert {resource["service.name"] for resource, _ in exported} == {"collector-e2e"}
    spans = [span for _, span in exported]
    (request,) = [s for s in spans if s.name == "GET /collect-data"]
    assert request.trace_id.hex() == TRACE_ID
    assert request.parent_span_id.hex() == PARENT_ID
    sources = [s for s in spans if s.name == "collector.source"]
    assert len(sources) == 3
    assert {s.parent_span_id for s in sources} == {request.span_id}
    fetches = [s for s in spans if s.name == "collector.fetch"]
    assert len(fetches) == 3
    assert {s.trace_id.hex() for s in spans} == {TRACE_ID}
