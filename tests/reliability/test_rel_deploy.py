"""A deploy: SIGTERM right after requests an ``opentelemetry-instrument`` app served.

With ``OTEL_TRACES_EXPORTER=decision_trace`` (or ``otlp,decision_trace``) the request spans
wait in the application's ``BatchSpanProcessor`` (up to ``OTEL_BSP_SCHEDULE_DELAY``, 5 s by
default) while the decisions made under them are already in the ledger. Python's default
SIGTERM ends the process without ``atexit``, so the SDK never flushes them: the decisions
would point to parents that are nowhere. decision-trace's SIGTERM hook flushes the
application's provider too, within the shutdown deadline, with or without a client.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from otlp_receiver import Received, Receiver, http_server, serve
from reliability_support import CHILD_TIMEOUT_S, check_intact, child_env, run_python, write_script

from decision_trace import DecisionTraceClient

INSTRUMENT = Path(sys.executable).with_name("opentelemetry-instrument")
REQUESTS = 5

# A small web app run under opentelemetry-instrument: the global tracer provider is the one
# auto-configuration set up (a BatchSpanProcessor per OTEL_TRACES_EXPORTER entry). Each
# POST opens the server span a server instrumentation opens, records a decision under it
# (through a client, or, with no client, as a child span of the app's own), and answers
# with both ids once the request span has ended.
APP = """
    import json, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry import trace
    from opentelemetry.propagate import extract

    client = None
    if sys.argv[1] == "client":
        from decision_trace import DecisionTraceClient

        client = DecisionTraceClient()  # $DECISION_TRACE_DB
    tracer = trace.get_tracer("shop.http")


    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            order = self.path.rsplit("/", 1)[-1]
            with tracer.start_as_current_span(
                f"POST {self.path}",
                context=extract({k.lower(): v for k, v in self.headers.items()}),
                kind=trace.SpanKind.SERVER,
                attributes={"http.request.method": "POST", "url.path": self.path},
            ) as request:
                if client is not None:
                    event_id = (
                        client.trace("refund.approved", "Refund approved")
                        .by_user("support-7", "Sam")
                        .affecting_order(order, {"status": "refunded"})
                        .because("Item arrived broken")
                        .record()
                    )
                else:
                    with tracer.start_as_current_span("refund.approve") as step:
                        event_id = format(step.get_span_context().span_id, "016x")
                request_id = format(request.get_span_context().span_id, "016x")
            body = json.dumps({"event_id": event_id, "request_id": request_id}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass


    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()  # the main thread waits here, as a server's does
"""


def _default_sigterm() -> None:
    # As in a deployed process: SIGTERM at its default action, not inherited as ignored.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def _instrumented_app(
    script: Path, mode: str, env: dict[str, str]
) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [str(INSTRUMENT), sys.executable, str(script), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(env),
        preexec_fn=_default_sigterm,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=CHILD_TIMEOUT_S)


def _serve_requests_then_sigterm(
    tmp_path: Path, mode: str, env: dict[str, str]
) -> tuple[list[dict[str, str]], float, str]:
    """Run the app, POST ``REQUESTS`` refunds, SIGTERM it at once; return the answers, the
    seconds from the signal to the end of the process, and its stderr. Asserts that it
    ended by SIGTERM."""
    assert INSTRUMENT.exists(), "install the test extra: pip install -e '.[test]'"
    script = write_script(tmp_path, "app.py", APP)
    env = {
        "OTEL_SERVICE_NAME": "shop-web",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        # The SDK's batch worker must not export on its own before the signal, whatever
        # the load on the machine: only the SIGTERM flush can store the request spans.
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
        **env,
    }
    with _instrumented_app(script, mode, env) as proc:
        assert proc.stdout is not None
        port = proc.stdout.readline().strip()
        assert port.isdigit(), proc.communicate(timeout=CHILD_TIMEOUT_S)[1]
        answers = []
        for i in range(REQUESTS):
            url = f"http://127.0.0.1:{port}/refunds/ord-{i}"
            with urllib.request.urlopen(urllib.request.Request(url, b""), timeout=60) as reply:
                answers.append(json.loads(reply.read()))
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=CHILD_TIMEOUT_S)
        elapsed = time.monotonic() - signalled
        assert proc.returncode == -signal.SIGTERM, err
    return answers, elapsed, err


def _stored(db: str | Path) -> dict[str, tuple[str, str | None]]:
    """``{id: (event_type, parent_event_id)}`` of every stored event."""
    check_intact(db)
    with DecisionTraceClient(db_path=db) as client:
        events = client.query(limit=None)
    return {event.id: (event.event_type, event.parent_event_id) for event in events}


def _assert_every_request_and_decision_stored(
    db: str, answers: list[dict[str, str]], decision_type: str
) -> None:
    stored = _stored(db)
    requests = [answer["request_id"] for answer in answers]
    decisions = [answer["event_id"] for answer in answers]
    missing = [request for request in requests if request not in stored]
    assert not missing, f"{len(missing)} of {REQUESTS} request spans lost"
    for answer, i in zip(answers, range(REQUESTS), strict=True):
        assert stored[answer["request_id"]] == (f"POST /refunds/ord-{i}", None)
        assert stored[answer["event_id"]] == (decision_type, answer["request_id"])
    assert len(set(requests) | set(decisions)) == 2 * REQUESTS


@pytest.mark.parametrize(
    ("mode", "exporters"),
    [
        ("client", "decision_trace"),
        ("client", "otlp,decision_trace"),
        ("exporter-only", "decision_trace"),
    ],
    ids=["client-decision_trace", "client-otlp+decision_trace", "exporter-only"],
)
def test_sigterm_after_requests_keeps_every_request_span(
    tmp_path: Path, ledger_target: str, mode: str, exporters: str
) -> None:
    """SIGTERM right after 5 requests: the ledger holds the 5 request spans and the 5
    decisions, each decision under its request; with OTLP the collector got them all too;
    the process still ends by SIGTERM. On both backends, named by DECISION_TRACE_DB."""
    db = ledger_target
    received: list[Received] = []
    server = http_server(received)
    env = {"DECISION_TRACE_DB": db, "OTEL_TRACES_EXPORTER": exporters}
    if "otlp" in exporters:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{server.server_address[1]}"
        env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"  # the distro defaults to grpc
    with serve(server):
        answers, _, err = _serve_requests_then_sigterm(tmp_path, mode, env)
    decision_type = "refund.approved" if mode == "client" else "refund.approve"
    _assert_every_request_and_decision_stored(db, answers, decision_type)
    assert "Traceback" not in err, err
    if "otlp" in exporters:
        spans = Receiver("", received).by_id()
        for answer in answers:
            assert spans[answer["event_id"]].parent_id == answer["request_id"]
            assert answer["request_id"] in spans


@contextmanager
def _collector_that_never_answers() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never replies."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


def test_sigterm_with_a_collector_that_never_answers_ends_within_the_deadline(
    tmp_path: Path, ledger_target: str
) -> None:
    """``otlp,decision_trace`` against a collector that never answers: the OTLP processor
    (first in the application's provider) hangs in its flush, yet the ledger still gets
    every request span, and the process ends by SIGTERM within the shutdown deadline
    rather than the OTLP exporter's 120 s timeout."""
    db = ledger_target
    deadline_s = 3
    with _collector_that_never_answers() as port:
        answers, elapsed, err = _serve_requests_then_sigterm(
            tmp_path,
            "client",
            {
                "DECISION_TRACE_DB": db,
                "DECISION_TRACE_SHUTDOWN_TIMEOUT": str(deadline_s),
                "OTEL_TRACES_EXPORTER": "otlp,decision_trace",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_TIMEOUT": "120",
            },
        )
    _assert_every_request_and_decision_stored(db, answers, "refund.approved")
    # The bound asked for: the deadline plus generous slack for interpreter start-up of
    # nothing (the app is already running) and a loaded 2-core machine; far below the
    # 120 s an unbounded flush would wait for the collector.
    assert elapsed < deadline_s + 40, elapsed
    assert "did not finish flushing before the shutdown deadline" in err, err


def test_exporter_alone_installs_the_hooks_respecting_the_host(tmp_path: Path) -> None:
    """An application that only constructs the exporter (as auto-configuration does) gets
    the SIGTERM/SIGHUP hooks, except where it has a handler of its own or
    DECISION_TRACE_SIGNAL_HOOKS=0; and its provider is flushed at a normal exit even when
    the SDK's own exit hook is off."""
    script = write_script(
        tmp_path,
        "exporter_only.py",
        """
        import signal, sys
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        def host(signum, frame):
            pass
        if sys.argv[2] == "host-first":
            signal.signal(signal.SIGTERM, host)

        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from decision_trace.exporters import SQLiteSpanExporter

        provider = TracerProvider(shutdown_on_exit=False)  # no SDK flush at exit
        provider.add_span_processor(
            BatchSpanProcessor(SQLiteSpanExporter(sys.argv[1]), schedule_delay_millis=600_000)
        )
        trace.set_tracer_provider(provider)
        tracer = trace.get_tracer("job")
        for i in range(5):
            with tracer.start_as_current_span(f"step {i}") as span:
                print(format(span.get_span_context().span_id, "016x"))
        def name(handler):
            if handler is host:
                return "host"
            if handler is signal.SIG_DFL:
                return "default"
            return getattr(handler, "__module__", "?")
        print(name(signal.getsignal(signal.SIGTERM)), name(signal.getsignal(signal.SIGHUP)))
        """,
    )

    def run(mode: str, env: dict[str, str] | None = None) -> str:
        db = tmp_path / f"{mode}-{len(list(tmp_path.iterdir()))}.db"
        result = run_python(script, str(db), mode, env=env)
        assert result.returncode == 0, result.stderr
        *span_ids, handlers = result.stdout.strip().splitlines()
        assert len(set(span_ids)) == 5
        assert set(span_ids) <= set(_stored(db)), "spans the app's provider held were lost"
        return handlers

    ours = "decision_trace._lifecycle"
    assert run("plain") == f"{ours} {ours}"
    assert run("host-first") == f"host {ours}"
    assert run("plain", {"DECISION_TRACE_SIGNAL_HOOKS": "0"}) == "default default"
