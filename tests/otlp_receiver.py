"""A tiny OTLP receiver for the tests: HTTP/protobuf on 127.0.0.1, decoded with the
official ``opentelemetry-proto`` messages."""

from __future__ import annotations

import gzip
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

SERVICE_NAME = "service.name"


@dataclass
class Received:
    """One export request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    request: trace_service_pb2.ExportTraceServiceRequest


@dataclass
class ExportedSpan:
    service_name: str | None
    scope: str
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    attributes: dict[str, Any]


@dataclass
class Receiver:
    endpoint: str
    received: list[Received] = field(default_factory=list)

    def spans(self) -> list[ExportedSpan]:
        return [span for item in self.received for span in _spans(item.request)]

    def by_id(self) -> dict[str, ExportedSpan]:
        return {span.span_id: span for span in self.spans()}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def _spans(request: trace_service_pb2.ExportTraceServiceRequest) -> Iterator[ExportedSpan]:
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield ExportedSpan(
                    service_name=resource.get(SERVICE_NAME),
                    scope=scope_spans.scope.name,
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_id=span.parent_span_id.hex() or None,
                    name=span.name,
                    attributes={a.key: _value(a.value) for a in span.attributes},
                )


def http_server(
    received: list[Received], context: ssl.SSLContext | None = None
) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            headers = {k.lower(): v for k, v in self.headers.items()}
            received.append(Received(self.path, headers, request))
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


@contextmanager
def serve(server: ThreadingHTTPServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
