"""The SQLite exporter as an auto-instrumentation exporter.

``OTEL_TRACES_EXPORTER=otlp,decision_trace opentelemetry-instrument python app.py`` must
store an existing application's spans, so the request that led to a decision shows in
``get_chain``. Checked the way the SDK's auto-configuration loads exporters, and with a
real ``opentelemetry-instrument`` run of a small stdlib HTTP app. On every backend:
``$DECISION_TRACE_DB`` holds the ledger's path or URL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from contextlib import closing
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode
from otlp_receiver import Received, Receiver, http_server, serve

from decision_trace import ActorType, DecisionTraceClient
from decision_trace.exporters import SQLiteSpanExporter
from decision_trace.storage import open_ledger

pytestmark = pytest.mark.usefixtures("ledger_target")

INSTRUMENT = Path(sys.executable).with_name("opentelemetry-instrument")


def _spans_from_an_app(exporter: SpanExporter) -> dict[str, str]:
    """Spans an instrumented web app would produce; returns span ids by name."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": "shop-web"}), shutdown_on_exit=False
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("opentelemetry.instrumentation.wsgi")
    ids = {}
    with tracer.start_as_current_span(
        "POST /refunds",
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "POST", "url.path": "/refunds"},
    ) as request:
        with tracer.start_as_current_span("load-customer", attributes={"user.id": "cust-9"}) as s:
            ids["load-customer"] = format(s.get_span_context().span_id, "016x")
        with tracer.start_as_current_span("charge") as failing:
            failing.set_status(StatusCode.ERROR, "card declined")
            ids["charge"] = format(failing.get_span_context().span_id, "016x")
        ids["POST /refunds"] = format(request.get_span_context().span_id, "016x")
    provider.shutdown()
    return ids


def test_entry_point_loads_as_auto_configuration_loads_it(
    ledger_target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DECISION_TRACE_DB", ledger_target)
    # What opentelemetry.sdk._configuration does for OTEL_TRACES_EXPORTER=decision_trace:
    (entry_point,) = entry_points(group="opentelemetry_traces_exporter", name="decision_trace")
    exporter_class = entry_point.load()
    assert exporter_class is SQLiteSpanExporter
    exporter = exporter_class()
    ids = _spans_from_an_app(exporter)  # shuts the exporter down with its provider
    # The exporter wrote to the ledger $DECISION_TRACE_DB names (a URL not mangled into
    # a file path), ...
    with closing(open_ledger(ledger_target, create=False, read_only=True)) as named:
        assert named.get_event(ids["POST /refunds"]) is not None
    # ... and a client opened with no path reads it from there too.
    with DecisionTraceClient() as client:  # same $DECISION_TRACE_DB
        request = client.get_event(ids["POST /refunds"])
        assert request is not None
        assert request.event_type == "POST /refunds"
        assert request.service_name == "shop-web"
        assert request.actor is not None
        assert (request.actor.type, request.actor.id) == (ActorType.SYSTEM, "shop-web")
        assert request.metadata["http.request.method"] == "POST"
        assert request.parent_event_id is None
        customer = client.get_event(ids["load-customer"])
        assert customer is not None and customer.actor is not None
        assert (customer.actor.type, customer.actor.id) == (ActorType.USER, "cust-9")
        assert customer.parent_event_id == request.id
        charge = client.get_event(ids["charge"])
        assert charge is not None
        assert charge.outcome.value == "failure"
        assert charge.error == "card declined"
        chain = client.get_chain(ids["charge"])
        assert chain.event.id == request.id
        assert {child.event.id for child in chain.children} == {customer.id, charge.id}


def test_sdk_auto_configuration_helper_finds_the_exporter() -> None:
    configuration = pytest.importorskip("opentelemetry.sdk._configuration")
    traces, _, _ = configuration._import_exporters(["decision_trace"], [], [])
    assert traces == {"decision_trace": SQLiteSpanExporter}


def test_exporter_contract_after_shutdown(ledger_target: str) -> None:
    exporter = SQLiteSpanExporter(ledger_target)
    exporter.shutdown()
    exporter.shutdown()  # twice is fine
    provider = TracerProvider(shutdown_on_exit=False)
    with provider.get_tracer("t").start_as_current_span("late") as span:
        pass
    assert exporter.export([span]) is SpanExportResult.FAILURE  # type: ignore[list-item]
    assert exporter.force_flush()


_APP = textwrap.dedent(
    """
    import json, sys, threading, urllib.request
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry import trace
    from opentelemetry.propagate import extract, inject

    from decision_trace import DecisionTraceClient

    client = DecisionTraceClient()          # $DECISION_TRACE_DB
    tracer = trace.get_tracer("shop.http")  # the provider opentelemetry-instrument set up


    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            # What a server instrumentation does for every request.
            with tracer.start_as_current_span(
                f"POST {self.path}",
                context=extract({k.lower(): v for k, v in self.headers.items()}),
                kind=trace.SpanKind.SERVER,
                attributes={"http.request.method": "POST", "url.path": self.path},
            ) as request:
                event_id = (
                    client.trace("refund.approved", "Refund approved")
                    .by_user("support-7", "Sam")
                    .affecting_order("ord-1", {"status": "refunded"})
                    .because("Item arrived broken")
                    .record()
                )
                request_id = format(request.get_span_context().span_id, "016x")
            body = json.dumps({"event_id": event_id, "request_id": request_id}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass


    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tracer.start_as_current_span("checkout-ui", kind=trace.SpanKind.CLIENT) as caller:
        headers = {}
        inject(headers)
        url = f"http://127.0.0.1:{server.server_address[1]}/refunds"
        with urllib.request.urlopen(urllib.request.Request(url, b"", headers)) as reply:
            result = json.loads(reply.read())
        result["caller_id"] = format(caller.get_span_context().span_id, "016x")
        result["trace_id"] = format(caller.get_span_context().trace_id, "032x")
    server.shutdown()
    with open(sys.argv[1], "w") as out:
        json.dump(result, out)
    """
)


@pytest.mark.parametrize("with_otlp", [False, True], ids=["decision_trace", "otlp+decision_trace"])
def test_opentelemetry_instrument_run_stores_the_request_behind_a_decision(
    tmp_path: Path, ledger_target: str, with_otlp: bool
) -> None:
    assert INSTRUMENT.exists(), "install the test extra: pip install -e '.[test]'"
    script = tmp_path / "app.py"
    script.write_text(_APP)
    result_file = tmp_path / "result.json"
    env = {
        **os.environ,
        "DECISION_TRACE_DB": ledger_target,
        "OTEL_SERVICE_NAME": "shop-web",
        "OTEL_TRACES_EXPORTER": "console,decision_trace",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    }
    received: list[Received] = []
    server = http_server(received)
    with serve(server):
        if with_otlp:
            env["OTEL_TRACES_EXPORTER"] = "otlp,decision_trace"
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{server.server_address[1]}"
            # opentelemetry-distro defaults the protocol to grpc; our receiver speaks HTTP.
            env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
        done = subprocess.run(
            [str(INSTRUMENT), sys.executable, str(script), str(result_file)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    result = json.loads(result_file.read_text())
    if not with_otlp:
        assert "POST /refunds" in done.stdout  # the console exporter ran too

    with DecisionTraceClient(db_path=ledger_target) as client:
        decision = client.get_event(result["event_id"])
        assert decision is not None
        assert decision.parent_event_id == result["request_id"]
        assert decision.correlation_id == result["trace_id"]
        assert decision.service_name == "shop-web"
        request = client.get_event(result["request_id"])
        assert request is not None
        assert request.event_type == "POST /refunds"
        assert request.metadata["url.path"] == "/refunds"
        assert request.parent_event_id == result["caller_id"]
        chain = client.get_chain(result["event_id"])
        assert chain.event.id == result["caller_id"]
        walked = [(depth, event.id) for depth, event in chain.walk()]
        assert walked == [
            (0, result["caller_id"]),
            (1, result["request_id"]),
            (2, result["event_id"]),
        ]
        # Each span is stored once: the decision came through decision-trace's own
        # provider, the app's spans through the global one.
        assert len(client.query(correlation_id=result["trace_id"], limit=None)) == 3

    if with_otlp:
        spans = Receiver("", received).by_id()
        assert set(spans) == {result["caller_id"], result["request_id"], result["event_id"]}
        assert {span.trace_id for span in spans.values()} == {result["trace_id"]}
        assert spans[result["event_id"]].parent_id == result["request_id"]
        assert {span.service_name for span in spans.values()} == {"shop-web"}
