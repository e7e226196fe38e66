"""The ledger service under hostile traffic and load: a real ``decision-trace serve``
process, raw sockets and the real OpenTelemetry exporters.

Garbage, truncated protobuf, a 100 MB body (declared, and streamed without a length), a
gzip bomb, wrong content types, clients that stall half-way through their headers or
their body, and 1,000 concurrent small requests, all against one server: each is
answered as documented, the server stays up and keeps serving, its memory stays
bounded, and the ledger holds exactly the valid spans. Then 8 exporters (HTTP protobuf,
gRPC, HTTP JSON) sending 2,000 spans each in parallel: exactly 16,000 events."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
import zlib
from pathlib import Path

import grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from server_support import (
    JsonSpanExporter,
    Server,
    post,
    raw_exchange,
    request_of,
    running_server,
    status_of,
)

from decision_trace.storage import EventFilters, open_ledger

MIB = 1024 * 1024
REQUEST_TIMEOUT_S = 3


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), MiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", text)
    assert match, text
    return int(match.group(1)) / 1024


def head(
    length: int | None, content_type: str = "application/x-protobuf", extra: str = ""
) -> bytes:
    lines = ["POST /v1/traces HTTP/1.1", "Host: ledger", f"Content-Type: {content_type}"]
    lines.append(
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    )
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def stream_without_length(port: int, total: int) -> tuple[int, int | None]:
    """POST ``total`` bytes chunked (no Content-Length), 1 MiB a chunk, reading the
    answer as it comes: ``(bytes sent, status or None if the connection was reset)``."""
    chunk = b"\x00" * MIB
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head(None))
        try:
            while sent < total:
                sock.sendall(framed)
                sent += len(chunk)
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server answered and closed while we were still sending
            pass
        try:
            answer = sock.recv(65536)
        except OSError:
            return sent, None
    return sent, status_of(answer) if answer else None


async def one_request(port: int, body: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head(len(body)) + body)
        await writer.drain()
        status_line = await reader.readline()
        return int(status_line.split()[1])
    finally:
        writer.close()


async def concurrent_requests(port: int, bodies: list[bytes]) -> list[int]:
    return list(await asyncio.gather(*(one_request(port, body) for body in bodies)))


def closed_by_server(sock: socket.socket, timeout: float) -> bytes | None:
    """What the server sent before closing ``sock``, or None if it is still open."""
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received


def count(target: str) -> int:
    ledger = open_ledger(target, create=False)
    try:
        return ledger.count(EventFilters())
    finally:
        ledger.close()


def test_hostile_traffic_is_answered_and_only_valid_spans_are_stored(ledger_target: str) -> None:
    valid = 0
    with running_server(ledger_target, "--request-timeout", str(REQUEST_TIMEOUT_S)) as server:
        port = server.http_port
        baseline = peak_rss_mib(server.proc.pid)

        # Clients that stall: half a request line and headers; headers and half a body.
        stalled_headers = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
        for sock in stalled_headers:
            sock.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: ledger\r\nContent-Ty")
        stalled_bodies = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
        for i, sock in enumerate(stalled_bodies):
            body = request_of(0x7000_0000 + i * 10, 3)
            sock.sendall(head(len(body)) + body[: len(body) // 2])
        stalled_at = time.monotonic()

        # Not HTTP at all; then bodies that are not requests.
        assert status_of(raw_exchange(port, b"\x16\x03\x01\x02\x00garbage\r\n\r\n")) == 400
        assert post(server.traces_url, b"\xde\xad\xbe\xef" * 100).status == 400
        assert post(server.traces_url, request_of(0x100, 20)[:-7]).status == 400
        # Wrong content types and encodings.
        assert post(server.traces_url, request_of(0x200, 1), content_type="text/html").status == 415
        assert (
            post(server.traces_url, request_of(0x200, 1), headers={"Content-Encoding": "br"}).status
            == 415
        )

        # 100 MB declared: 413 before any of it is sent.
        answer = raw_exchange(port, head(100 * 1000 * 1000), timeout=10)
        assert status_of(answer) == 413
        # 100 MB streamed without a length: cut off at the 16 MiB limit, never held.
        sent, status = stream_without_length(port, 100 * MIB)
        assert status in (413, None), status  # None: reset while we were still sending
        assert sent < 100 * MIB
        # A gzip bomb: 200 MiB of zeros in about 200 KB.
        squeezer = zlib.compressobj(9, zlib.DEFLATED, 31)
        zeros = b"\x00" * MIB
        bomb = b"".join(squeezer.compress(zeros) for _ in range(200)) + squeezer.flush()
        assert len(bomb) < MIB
        bombed = post(server.traces_url, bomb, headers={"Content-Encoding": "gzip"})
        assert bombed.status == 413
        assert peak_rss_mib(server.proc.pid) - baseline < 100  # vs 100 MB and 200 MiB sent

        # 1,000 concurrent small requests, while the stalled clients still hang on.
        bodies = [request_of(0x1000_0000 + i * 4, 2) for i in range(1000)]
        statuses = asyncio.run(concurrent_requests(port, bodies))
        assert statuses == [200] * 1000
        valid += 2000
        # Valid requests after all that, one per kind.
        assert post(server.traces_url, request_of(0x300, 5)).status == 200
        valid += 5

        # The stalled clients are dropped: headers that never end are closed, a body that
        # never ends is answered 408, each within the request timeout (plus slack).
        wait = REQUEST_TIMEOUT_S + 10 - (time.monotonic() - stalled_at)
        for sock in stalled_headers:
            with sock:
                assert closed_by_server(sock, max(wait, 1)) == b""
        for sock in stalled_bodies:
            with sock:
                answer = closed_by_server(sock, max(wait, 1))
                assert answer is not None and status_of(answer) == 408
        assert server.alive()
        assert post(server.traces_url, request_of(0x400, 1)).status == 200
        valid += 1

        # The gRPC port: garbage, and a connection that never says anything; a real
        # export still goes through.
        silent = socket.create_connection(("127.0.0.1", server.grpc_port))
        with socket.create_connection(("127.0.0.1", server.grpc_port)) as rude:
            rude.sendall(b"\x00garbage, not HTTP/2" * 100)
        channel = grpc.insecure_channel(server.grpc_endpoint)
        try:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)
            request = ExportTraceServiceRequest.FromString(request_of(0x500, 3))
            response = stub.Export(request, timeout=30)
            assert not response.HasField("partial_success")
        finally:
            channel.close()
            silent.close()
        valid += 3
        assert server.stop() == 0, server.output()
    assert count(ledger_target) == valid
    assert "Traceback" not in server.output()


def _provider(exporter: SpanExporter, n: int) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": f"shop-{n}"}))
    provider.add_span_processor(
        BatchSpanProcessor(exporter, max_queue_size=4096, schedule_delay_millis=200)
    )
    return provider


def _exporters(server: Server) -> list[SpanExporter]:
    return [
        *(HttpSpanExporter(endpoint=server.traces_url) for _ in range(3)),
        *(GrpcSpanExporter(endpoint=server.grpc_endpoint, insecure=True) for _ in range(3)),
        *(JsonSpanExporter(server.traces_url) for _ in range(2)),
    ]


def test_eight_exporters_in_parallel_store_exactly_16000_events(ledger_target: str) -> None:
    spans_each = 2000
    with running_server(ledger_target) as server:
        providers = [_provider(exporter, n) for n, exporter in enumerate(_exporters(server))]
        errors: list[BaseException] = []

        def send(provider: TracerProvider, n: int) -> None:
            try:
                tracer = provider.get_tracer("load")
                for i in range(spans_each):
                    with tracer.start_as_current_span(
                        "order.placed", attributes={"shop": n, "order": i, "note": "x" * 100}
                    ):
                        pass
                assert provider.force_flush(60_000)
                provider.shutdown()
            except BaseException as exc:
                errors.append(exc)

        started = time.monotonic()
        threads = [
            threading.Thread(target=send, args=(provider, n))
            for n, provider in enumerate(providers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        elapsed = time.monotonic() - started
        assert not errors, errors
        assert server.stop() == 0, server.output()
    assert count(ledger_target) == 8 * spans_each, server.output()
    print(f"16,000 spans through 8 exporters in {elapsed:.1f} s")


def test_a_restarted_exporter_resending_stores_nothing_twice(ledger_target: str) -> None:
    """At-least-once delivery (a Collector's retry, a shipper's crash) resends batches
    already stored: the ledger still holds each span once."""
    with running_server(ledger_target) as server:
        bodies = [request_of(0x2000_0000 + i * 100, 100) for i in range(20)]
        for _ in range(3):
            statuses = asyncio.run(concurrent_requests(server.http_port, bodies))
            assert statuses == [200] * 20
        assert server.stop() == 0
    assert count(ledger_target) == 2000


def test_a_restarting_postgresql_is_503_retry_and_every_span_arrives(pg_url: str) -> None:
    """The ledger's server restarts while spans stream in: writes fail for a moment, the
    service answers 503 with Retry-After (and logs it once), the exporter waits and
    retries, and every span is stored once."""
    from pg_support import restart_server

    total = 3000
    with running_server(pg_url) as server:
        provider = _provider(HttpSpanExporter(endpoint=server.traces_url, timeout=60), 0)
        tracer = provider.get_tracer("load")
        sent = threading.Event()

        def send() -> None:
            for i in range(total):
                with tracer.start_as_current_span("order.placed", attributes={"order": i}):
                    pass
                if i % 100 == 0:
                    time.sleep(0.1)  # about 3 s of traffic
            sent.set()

        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(0.8)
        restart_server()
        sender.join(60)
        assert sent.is_set()
        assert provider.force_flush(120_000)
        provider.shutdown()
        assert server.stop() == 0, server.output()
    assert count(pg_url) == total, server.output()
    output = server.output()
    if "cannot write to the ledger" in output:  # the restart fell between two writes: no 503
        assert "writing to the ledger again" in output
