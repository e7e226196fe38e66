"""Helpers for the ledger service tests: a real ``decision-trace serve`` process on free
ports, OTLP requests built with the official protobuf messages, raw HTTP, and the
OpenTelemetry OTLP/JSON exporter's way of sending."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

START_TIMEOUT_S = 60.0
"""Longest a server may take to say it listens (a loaded 2-core machine)."""
STOP_TIMEOUT_S = 60.0

_LISTENING = re.compile(r"listening on https?://[^:]+:(\d+)")
_GRPC = re.compile(r"OTLP/gRPC on [^ ]+:(\d+)")


@dataclass
class Server:
    """A running ``decision-trace serve``; its output is collected as it comes."""

    proc: subprocess.Popen[str]
    http_port: int = 0
    grpc_port: int | None = None
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def traces_url(self) -> str:
        return f"{self.url}/v1/traces"

    @property
    def grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def output(self) -> str:
        """Everything the server printed so far (stdout and stderr)."""
        return "".join(self.lines)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Send ``sig``, wait for the exit; its status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def _collect(stream: Any, lines: list[str], ready: threading.Event) -> None:
    for line in stream:
        lines.append(line)
        if "listening on" in line:
            ready.set()
    ready.set()


@contextmanager
def running_server(
    db: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    grpc: bool = True,
) -> Iterator[Server]:
    """``decision-trace serve --db DB`` on free ports (``--port 0``); ``args`` are more
    options. Returns once it says it listens; killed (if still running) afterwards."""
    command = [sys.executable, "-m", "decision_trace", "serve", "--db", db, "--port", "0"]
    command += ["--grpc-port", "0"] if grpc else ["--no-grpc"]
    command += list(args)
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env,
    )
    server = Server(proc)
    ready = threading.Event()
    reader = threading.Thread(target=_collect, args=(proc.stdout, server.lines, ready), daemon=True)
    reader.start()
    try:
        if not ready.wait(START_TIMEOUT_S) or proc.poll() is not None:
            raise AssertionError(f"the server did not start:\n{server.output()}")
        first = server.output()
        listening = _LISTENING.search(first)
        assert listening is not None, first
        server.http_port = int(listening.group(1))
        grpc_port = _GRPC.search(first)
        server.grpc_port = int(grpc_port.group(1)) if grpc_port else None
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(STOP_TIMEOUT_S)
        reader.join(10)


# --- OTLP requests ----------------------------------------------------------------------


def any_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    raise TypeError(value)


def make_span(
    span_id: int,
    *,
    trace_id: int = 0x5EED,
    name: str = "GET /orders",
    start_ns: int = 1_700_000_000_000_000_000,
    attributes: Mapping[str, Any] | None = None,
    raw_span_id: bytes | None = None,
) -> Span:
    """A finished OTLP span (a foreign one unless ``attributes`` say otherwise)."""
    return Span(
        trace_id=trace_id.to_bytes(16, "big"),
        span_id=raw_span_id if raw_span_id is not None else span_id.to_bytes(8, "big"),
        name=name,
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=start_ns,
        end_time_unix_nano=start_ns + 1_000_000,
        attributes=[KeyValue(key=k, value=any_value(v)) for k, v in (attributes or {}).items()],
    )


def make_request(spans: Sequence[Span], service: str = "checkout") -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans: ResourceSpans = request.resource_spans.add()
    resource_spans.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value=service))
    )
    scope_spans: ScopeSpans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "tests"
    scope_spans.spans.extend(spans)
    return request


def span_ids(first: int, count: int) -> list[int]:
    return list(range(first, first + count))


def request_of(first: int, count: int, trace_id: int = 0x5EED) -> bytes:
    """A serialized request of ``count`` valid spans with ids ``first``..."""
    spans = [make_span(i, trace_id=trace_id) for i in span_ids(first, count)]
    return bytes(make_request(spans).SerializeToString())


def parse_response(body: bytes) -> ExportTraceServiceResponse:
    response = ExportTraceServiceResponse()
    response.ParseFromString(body)
    return response


# --- raw HTTP -----------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def post(
    url: str,
    body: bytes,
    *,
    content_type: str = "application/x-protobuf",
    headers: Mapping[str, str] | None = None,
    method: str = "POST",
    timeout: float = 30.0,
) -> Answer:
    """One request on a fresh connection (http.client: exactly the headers given)."""
    match = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    assert match, url
    conn = http.client.HTTPConnection(match.group(1), int(match.group(2)), timeout=timeout)
    try:
        sent = {"Content-Type": content_type, **(headers or {})}
        conn.request(method, match.group(3), body=body, headers=sent)
        response = conn.getresponse()
        data = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        conn.close()


def raw_exchange(
    port: int, head: bytes, body_parts: Sequence[bytes] = (), *, timeout: float = 30.0
) -> bytes:
    """Send ``head`` and ``body_parts`` on a raw socket, then read until the server
    closes or ``timeout``; what came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        for part in body_parts:
            sock.sendall(part)
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            received += chunk
            if b"\r\n\r\n" in received and _complete(received):
                break
        return received


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"content-length: (\d+)", head, flags=re.I)
    return match is not None and len(body) >= int(match.group(1))


def status_of(raw: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3})", raw)
    assert match, raw[:200]
    return int(match.group(1))


# --- the OpenTelemetry OTLP/JSON exporter --------------------------------------------------


class JsonSpanExporter(SpanExporter):
    """What ``opentelemetry-exporter-otlp-json-http``'s ``OTLPSpanExporter`` does: the
    same encoder (``opentelemetry-exporter-otlp-json-common``'s ``encode_spans``), the same
    HTTP client with its retries and ``Retry-After`` handling (``_OTLPHTTPClient``), the
    same ``content-type: application/json``. (Its own package pins versions of the
    shared transport packages that the protobuf exporter of this SDK release does not
    accept, so it cannot be installed beside it.)"""

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str] | None = None,
        compression: str = "none",
        timeout: float = 10.0,
    ) -> None:
        from opentelemetry.exporter.http.transport._requests import RequestsHTTPTransport
        from opentelemetry.exporter.otlp.common.http import Compression, _OTLPHTTPClient

        self._client = _OTLPHTTPClient(
            transport=RequestsHTTPTransport(),
            endpoint=endpoint,
            kind="spans",
            timeout=timeout,
            compression=Compression.from_str(compression),
            headers={"content-type": "application/json", **(headers or {})},
        )

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        from opentelemetry.exporter.otlp.json.common.trace_encoder import encode_spans

        body = encode_spans(spans).to_json().encode()
        result = self._client.export(body)
        return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._client.shutdown()
