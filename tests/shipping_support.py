"""Destinations for the shipping tests, written with the standard library only: an OTLP
receiver whose answers a test scripts (status, ``Retry-After``, ``partial_success``),
counting every request and when it came; a socket that accepts connections and never
answers; a free port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


@dataclass(frozen=True)
class Seen:
    """One request as the receiver saw it."""

    at: float
    """``time.monotonic()`` when its body was read."""
    headers: dict[str, str]
    span_ids: tuple[str, ...]
    names: tuple[str, ...]
    """The spans' names (a decision's event type), in the same order."""
    attributes: tuple[dict[str, Any], ...]
    """The spans' attributes, in the same order (arrays as lists)."""


@dataclass(frozen=True)
class Reply:
    """What the receiver answers one request with."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    content_type: str = "application/x-protobuf"


def ok() -> Reply:
    """200 with an empty ``ExportTraceServiceResponse`` (everything accepted)."""
    return Reply(body=ExportTraceServiceResponse().SerializeToString())


def partial(rejected: int, message: str) -> Reply:
    """200 with ``partial_success``: ``rejected`` spans refused, and why."""
    response = ExportTraceServiceResponse()
    response.partial_success.rejected_spans = rejected
    response.partial_success.error_message = message
    return Reply(body=response.SerializeToString())


Script = Callable[[int, Seen], Reply]
"""Given the request's number (from 0) and the request, the answer."""


@dataclass
class ScriptedReceiver:
    """An OTLP/HTTP protobuf receiver on 127.0.0.1 answering as its script says."""

    script: Script
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    """Span ids of the requests answered 2xx (refused ones of a partial success too)."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def handle(self, body: bytes, headers: dict[str, str]) -> Reply:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans = [
            span
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        seen = Seen(
            at=time.monotonic(),
            headers=headers,
            span_ids=tuple(span.span_id.hex() for span in spans),
            names=tuple(span.name for span in spans),
            attributes=tuple(
                {pair.key: _value(pair.value) for pair in span.attributes} for span in spans
            ),
        )
        with self._lock:
            number = len(self.seen)
            self.seen.append(seen)
        reply = self.script(number, seen)
        if 200 <= reply.status < 300:
            with self._lock:
                self.accepted.extend(seen.span_ids)
        return reply


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


@contextmanager
def scripted_receiver(script: Script) -> Iterator[ScriptedReceiver]:
    """A :class:`ScriptedReceiver` serving on a thread for the block."""
    receiver = ScriptedReceiver(script)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the shipper's connection is

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            reply = receiver.handle(body, headers)
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def refusing(poisoned: Callable[[str], bool], reply: Callable[[Sequence[str]], Reply]) -> Script:
    """A script that answers ``reply(refused names)`` when a request holds spans whose
    name ``poisoned`` says is refused, and :func:`ok` otherwise."""

    def script(number: int, seen: Seen) -> Reply:
        refused = [name for name in seen.names if poisoned(name)]
        return reply(refused) if refused else ok()

    return script


@contextmanager
def stalling_socket(port: int = 0) -> Iterator[int]:
    """A socket on 127.0.0.1 that accepts every connection and never answers; its
    port. The connections are closed when the block ends."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    done = threading.Event()

    def hold() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)  # the request waits in the kernel's buffer, unanswered

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join(10)
        for conn in held:
            conn.close()
        listener.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (just now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
