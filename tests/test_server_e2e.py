"""``decision-trace serve`` as a real process, fed by the real OpenTelemetry exporters:
OTLP/HTTP protobuf (gzip), OTLP/gRPC and OTLP/JSON, on SQLite and on PostgreSQL. What it
stores is compared, field by field, with what the local exporter stores for the same
spans. Also: tokens end to end (and never in the output), SIGTERM with a request in
flight, the start line, a port in use, and the command without the ``server`` extra.

The hostile-traffic and load tests are in tests/reliability/test_rel_server.py."""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Status, StatusCode
from server_support import (
    JsonSpanExporter,
    Server,
    post,
    request_of,
    running_server,
    status_of,
)

from decision_trace import DecisionTraceClient
from decision_trace.exporters import SQLiteSpanExporter
from decision_trace.record import EventRecord
from decision_trace.storage import EventFilters, open_ledger

ExporterFactory = Callable[[Server], SpanExporter]
SERVE = (sys.executable, "-m", "decision_trace", "serve", "--db")

EXPORTERS: dict[str, ExporterFactory] = {
    "http-protobuf-gzip": lambda server: HttpSpanExporter(
        endpoint=server.traces_url, compression=Compression.Gzip
    ),
    "grpc": lambda server: GrpcSpanExporter(endpoint=server.grpc_endpoint, insecure=True),
    "http-json": lambda server: JsonSpanExporter(server.traces_url),
}


def records_of(target: str | Path) -> dict[str, EventRecord]:
    ledger = open_ledger(target, create=False)
    try:
        with closing(ledger.iter_records()) as records:
            return {record.id: record for _, record in records}
    finally:
        ledger.close()


def record_decisions(client: DecisionTraceClient, n: int) -> None:
    """Decisions of every kind of actor, nested, failed, with objects, tags and values
    JSON cannot hold as they are."""
    client.trace("refund.approved", f"Refund {n} — 89,00 €").by_user(
        "u-42", "Sam Support", email="sam@example.com", role="support"
    ).affecting_order(
        f"ord-{n}", state_before={"status": "paid"}, state_after={"status": "refunded"}
    ).because(
        "Parcel arrived crushed; the customer sent photos 📦",
        context={"photos": 3, "ratio": 0.125, "big": 2**70, "nan": math.nan, "none": None},
        alternatives=[{"action": "replace"}, {"action": "voucher", "value": 10}],
        rejection_reasons={"replace": "out of stock"},
        confidence=0.9,
        risk_level="low",
    ).with_tags("refund", "damaged").with_metadata(ticket=n, channel="email").record()
    with client.span("inventory.sync", "Nightly sync") as job:
        job.by_compute("sync-job", "Inventory Sync", service_name="warehouse", version="3")
        client.trace("price.changed", "Price lowered").by_ai_agent(
            "pricing-ai", "Dynamic Pricing", model="gpt-4o", version="2.1"
        ).affecting_product(
            f"SKU-{n}", state_before={"price": 10}, state_after={"price": 9}
        ).because("Competitor dropped price", confidence=0.75).record()
    with pytest.raises(ZeroDivisionError), client.span("report.failed", "Report") as failing:
        failing.by_system("reports")
        _ = 1 / 0


class _Both(SpanExporter):
    """Hands every span to the local exporter and to an OTLP exporter."""

    def __init__(self, *exporters: SpanExporter) -> None:
        self.exporters = exporters

    def export(self, spans: Any) -> SpanExportResult:
        results = [exporter.export(spans) for exporter in self.exporters]
        ok = all(result is SpanExportResult.SUCCESS for result in results)
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        for exporter in self.exporters:
            exporter.shutdown()


def record_foreign_spans(exporter: SpanExporter, local: str | Path, service: str) -> None:
    """An application's own spans (not decision-trace's), with every kind of attribute
    value the SDK takes, through its own provider: to the local exporter and to OTLP."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(_Both(SQLiteSpanExporter(local), exporter)))
    tracer = provider.get_tracer("shop.web", "1.2")
    with tracer.start_as_current_span(
        "POST /checkout",
        attributes={
            "http.request.method": "POST",
            "user.id": "cust-7",
            "user.name": "Kim",
            "retries": 3,
            "ratio": 0.5,
            "flag": True,
            "tags": ["a", "b"],
            "numbers": [1, 2, 3],
            "mixed": [1, "two", None],
            "blob": b"\x00\xffbytes",
            "map": {"k": "v", "n": {"deep": [1.5]}},
            "": "empty key",
            "inf": math.inf,
        },
    ) as parent:
        parent.add_event("validated", {"items": 2})
        with tracer.start_as_current_span("charge card") as child:
            child.set_status(Status(StatusCode.ERROR, "card declined"))
    provider.shutdown()


@pytest.fixture
def local_target(
    request: pytest.FixtureRequest, ledger_target: str, tmp_path: Path
) -> Iterator[str]:
    """A second ledger of the test's backend, for the local exporter: PostgreSQL keeps
    JSON as ``jsonb`` (its own key order and spacing), so "what the local exporter
    stores" is compared on the same backend."""
    if "://" in ledger_target:
        with request.getfixturevalue("pg_server").schema() as schema:
            yield schema.url
    else:
        yield str(tmp_path / "local.db")


@pytest.mark.parametrize("exporter_name", list(EXPORTERS))
def test_real_exporters_store_what_the_local_exporter_stores(
    ledger_target: str, local_target: str, exporter_name: str
) -> None:
    make_exporter = EXPORTERS[exporter_name]
    with running_server(ledger_target) as server:
        for n in range(2):
            client = DecisionTraceClient(
                db_path=local_target,
                service_name=f"checkout-{n}",
                exporters=[make_exporter(server)],
            )
            record_decisions(client, n)
            client.close()
        record_foreign_spans(make_exporter(server), local_target, "storefront")
        assert server.stop() == 0, server.output()
    expected = records_of(local_target)
    assert len(expected) == 2 * 4 + 2
    stored = records_of(ledger_target)
    assert stored.keys() == expected.keys()
    for event_id, record in expected.items():
        assert stored[event_id] == record, event_id
    foreign = next(r for r in stored.values() if r.event_type == "POST /checkout")
    assert foreign.metadata_json is not None
    assert '"blob":"AP9ieXRlcw=="' in foreign.metadata_json.replace(" ", "")


def test_every_exporter_at_once_stores_each_span_once(db_path: Path, tmp_path: Path) -> None:
    with running_server(str(db_path)) as server:
        exporters = [make(server) for make in EXPORTERS.values()]
        client = DecisionTraceClient(db_path=tmp_path / "local.db", exporters=exporters)
        record_decisions(client, 7)
        client.close()
        assert server.stop() == 0
    assert records_of(db_path) == records_of(tmp_path / "local.db")


# --- tokens ---------------------------------------------------------------------------------


TOKEN = "tok-7f3a9c1e5b2d48f6"


@pytest.fixture
def token_server(db_path: Path) -> Iterator[Server]:
    with running_server(str(db_path), env={"DECISION_TRACE_TOKEN": TOKEN}) as server:
        yield server


def _send_one(exporter: SpanExporter, tmp_path: Path, name: str) -> str:
    client = DecisionTraceClient(db_path=tmp_path / f"{name}.db", exporters=[exporter])
    event_id = client.trace("order.created", name).by_system("shop").record()
    client.close()
    return event_id


def test_with_a_token_the_exporters_need_it(
    token_server: Server, db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = token_server
    assert "token required" in server.output()
    # Wrong or missing: refused, nothing stored.
    refused = [
        _send_one(HttpSpanExporter(endpoint=server.traces_url), tmp_path, "none"),
        _send_one(
            GrpcSpanExporter(
                endpoint=server.grpc_endpoint,
                insecure=True,
                headers={"authorization": f"Bearer {TOKEN}x"},
            ),
            tmp_path,
            "grpc-wrong",
        ),
        _send_one(
            JsonSpanExporter(server.traces_url, headers={"authorization": "Bearer nope"}),
            tmp_path,
            "json-wrong",
        ),
    ]
    answer = post(server.traces_url, request_of(0x10, 2))
    assert answer.status == 401
    # Right, the way an SDK is configured: OTEL_EXPORTER_OTLP_HEADERS.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"Authorization=Bearer%20{TOKEN}")
    accepted = [
        _send_one(HttpSpanExporter(endpoint=server.traces_url), tmp_path, "http-ok"),
        _send_one(
            GrpcSpanExporter(endpoint=server.grpc_endpoint, insecure=True), tmp_path, "grpc-ok"
        ),
        _send_one(
            JsonSpanExporter(server.traces_url, headers={"authorization": f"Bearer {TOKEN}"}),
            tmp_path,
            "json-ok",
        ),
    ]
    assert server.stop() == 0
    stored = set(records_of(db_path))
    assert stored == set(accepted)
    assert not stored & set(refused)
    assert TOKEN not in server.output()


def test_the_token_given_on_the_command_line_is_never_printed(db_path: Path) -> None:
    with running_server(str(db_path), "--token", TOKEN) as server:
        for authorization in (f"Bearer {TOKEN}", f"Bearer {TOKEN[:-1]}", TOKEN, "Bearer x"):
            post(server.traces_url, b"\x00garbage", headers={"Authorization": authorization})
        assert server.stop() == 0
    assert TOKEN not in server.output()
    assert TOKEN[:-1] not in server.output()


# --- the process ------------------------------------------------------------------------------


def test_start_and_stop_are_one_line_each_and_requests_none(db_path: Path) -> None:
    with running_server(str(db_path)) as server:
        for i in range(20):
            assert post(server.traces_url, request_of(0x100 + i, 1)).status == 200
        assert post(server.traces_url, b"garbage").status == 400
        assert server.stop() == 0
    lines = server.output().splitlines()
    assert len(lines) == 2, lines
    start, stop = lines
    assert f"listening on http://127.0.0.1:{server.http_port}" in start
    assert f"OTLP/gRPC on 127.0.0.1:{server.grpc_port}" in start
    assert "only this machine can connect (--host 0.0.0.0 listens on every interface)" in start
    assert str(db_path) in start
    assert "stopped" in stop


def test_sigterm_finishes_the_request_in_flight_and_exits_0(db_path: Path) -> None:
    body = request_of(0x200, 50)
    with running_server(str(db_path)) as server:
        sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=30)
        with sock:
            sock.sendall(
                b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/x-protobuf\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:100]
            )
            time.sleep(0.5)  # the request is in flight
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            assert server.alive()  # waiting for the request
            sock.sendall(body[100:])
            answer = b""
            while chunk := sock.recv(65536):  # until the server closes the connection
                answer += chunk
        assert status_of(answer) == 200
        assert server.proc.wait(60) == 0
        # A new connection is refused: the server stopped listening at the signal.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.http_port), timeout=5).close()
    ledger = open_ledger(db_path)
    try:
        assert ledger.count(EventFilters()) == 50
    finally:
        ledger.close()
    assert server.output().splitlines()[-1].endswith(f"every accepted span is in {db_path}")


def test_sigint_stops_it_too(db_path: Path) -> None:
    with running_server(str(db_path)) as server:
        assert server.stop(signal.SIGINT) == 0


def test_a_port_in_use_is_one_error_line(db_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ran = subprocess.run(
            [*SERVE, str(db_path), "--port", str(port), "--no-grpc"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert ran.returncode == 1
    assert f"Error: cannot listen on 127.0.0.1:{port}" in ran.stderr
    assert "Traceback" not in ran.stderr


def test_without_the_server_extra_it_says_which_to_install(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['starlette'] = None\n"  # as if starlette were not installed
        "import decision_trace.cli\n"  # the command line still imports
        "decision_trace.cli.main(['serve', '--db', sys.argv[1]], prog_name='decision-trace')\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "t.db")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert ran.returncode == 1
    assert "needs the server extra: pip install 'decision-trace-otel[server]'" in ran.stderr
    assert not (tmp_path / "t.db").exists()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_with_certificate_files_for_http_and_grpc(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override the exporter's CA file.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with running_server(
        str(db_path), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)
    ) as server:
        assert f"listening on https://127.0.0.1:{server.http_port}" in server.output()
        https = HttpSpanExporter(
            endpoint=f"https://127.0.0.1:{server.http_port}/v1/traces",
            certificate_file=str(cert),
        )
        grpcs = GrpcSpanExporter(
            endpoint=f"localhost:{server.grpc_port}",
            insecure=False,
            credentials=grpc.ssl_channel_credentials(cert.read_bytes()),
        )
        sent = [_send_one(https, tmp_path, "https"), _send_one(grpcs, tmp_path, "grpcs")]
        # Plain text to the TLS port is not an export.
        plain = _send_one(HttpSpanExporter(endpoint=server.traces_url, timeout=5), tmp_path, "p")
        assert server.stop() == 0, server.output()
    assert set(records_of(db_path)) == set(sent)
    assert plain not in sent


def test_ssl_options_go_together(db_path: Path, tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    ran = subprocess.run(
        [*SERVE, str(db_path), "--ssl-certfile", str(cert)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 2
    assert "--ssl-certfile and --ssl-keyfile go together" in ran.stderr
