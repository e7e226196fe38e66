"""Collectors that never answer or drip a byte at a time hold up neither flush(), close(),
a normal exit nor SIGTERM beyond the shutdown deadline; flush() tells the truth about
every exporter, stats() counts per exporter, and the ledger keeps every event.

The collectors are real sockets in the test process: one accepts connections and never
answers, one answers an HTTP status line one byte every two seconds (never finishing, so
no per-read timeout of the OTLP exporter ever fires).
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from reliability_support import started_python, stored_ids, write_script

from decision_trace import DecisionTraceClient, InvalidInputError

_ID = re.compile(r"^[0-9a-f]{16}$")

SLACK_S = 20.0
"""Generous slack over a deadline, for a loaded 2-core machine; the failures this catches
are 30 s (close() before), 35-50 s (flush()) and unbounded (a dripping collector)."""


def _silent(conn: socket.socket, stop: threading.Event) -> None:
    conn.settimeout(0.5)
    while not stop.is_set():  # read and discard, never answer
        try:
            if not conn.recv(65536):
                return
        except TimeoutError:
            continue
        except OSError:
            return


def _drip(conn: socket.socket, stop: threading.Event) -> None:
    conn.settimeout(0.5)
    with contextlib.suppress(OSError):
        conn.recv(65536)
    endless = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000
    for byte in endless:
        if stop.wait(2.0):
            return
        try:
            conn.sendall(bytes([byte]))
        except OSError:
            return


@pytest.fixture(params=["silent", "drip"])
def stalled_collector(request: pytest.FixtureRequest) -> Iterator[str]:
    """The base URL of a collector that accepts and stalls (``silent`` or ``drip``)."""
    handler: Callable[[socket.socket, threading.Event], None] = (
        _silent if request.param == "silent" else _drip
    )
    server = socket.create_server(("127.0.0.1", 0), backlog=64)
    server.settimeout(0.2)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    conns: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conns.append(conn)
            thread = threading.Thread(target=handler, args=(conn, stop), daemon=True)
            thread.start()
            threads.append(thread)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        acceptor.join(5)
        for conn in conns:
            conn.close()
        server.close()


def _record(client: DecisionTraceClient, count: int) -> list[str]:
    return [
        client.trace("order.refunded", f"refund {i}")
        .by_user(f"u-{i}", "Sam")
        .affecting_order(f"ord-{i}", {"status": "refunded"})
        .because("broken", context={"i": i})
        .record()
        for i in range(count)
    ]


def _stored_ids(db: str | Path) -> set[str]:
    return stored_ids(db, intact=False)


def test_flush_and_close_keep_their_deadline_against_a_stalled_collector(
    ledger_target: str, stalled_collector: str
) -> None:
    """flush(timeout_s=3) returns False within its deadline (+ slack), close() within
    shutdown_timeout_s (closing the ledger's connections included); the ledger has every
    event; stats() shows the collector's misses. On both backends."""
    client = DecisionTraceClient(
        db_path=ledger_target, otlp_endpoint=stalled_collector, shutdown_timeout_s=3
    )
    try:
        ids = _record(client, 50)
        started = time.monotonic()
        flushed = client.flush(timeout_s=3)
        flush_s = time.monotonic() - started
        assert flushed is False
        assert flush_s < 3 + SLACK_S, flush_s
        assert {e.id for e in client.query(limit=None)} == set(ids)
        [otlp] = client.stats().exporters
        assert otlp.name.startswith("OTLPSpanExporter(")
        assert otlp.exported == 0
        assert otlp.failed + otlp.dropped + otlp.queued == 50
    finally:
        started = time.monotonic()
        client.close()
        close_s = time.monotonic() - started
    assert close_s < 3 + SLACK_S, close_s
    stats = client.stats()
    assert stats.written == 50
    [otlp] = stats.exporters
    assert otlp.exported == 0
    assert otlp.failed + otlp.dropped + otlp.queued == 50
    assert _stored_ids(ledger_target) == set(ids)


# Records, prints "recorded", then leaves as the test says: normal exit, or waits for
# SIGTERM.
STALLED_CHILD = """
    import sys, time
    from decision_trace import DecisionTraceClient

    client = DecisionTraceClient(db_path=sys.argv[1], otlp_endpoint=sys.argv[2])
    for i in range(200):
        print(client.trace("job.step", f"step {i}").by_system("cron").record(), flush=True)
    time.sleep(0.5)  # the exporter is now inside an export to the stalled collector
    print("recorded", flush=True)
    if sys.argv[3] == "sigterm":
        time.sleep(600)
"""


@pytest.mark.parametrize("how", ["exit", "sigterm"])
def test_process_exits_within_its_deadline_against_a_stalled_collector(
    tmp_path: Path, ledger_target: str, stalled_collector: str, how: str
) -> None:
    """A normal exit, and SIGTERM, end the process within DECISION_TRACE_SHUTDOWN_TIMEOUT
    (+ slack) whatever the collector does; every event is in the ledger; the log says
    what the collector did not get. On both backends."""
    db = ledger_target
    script = write_script(tmp_path, "stalled.py", STALLED_CHILD)
    env = {"DECISION_TRACE_SHUTDOWN_TIMEOUT": "3"}
    with started_python(script, db, stalled_collector, how, env=env) as proc:
        assert proc.stdout is not None
        printed = []
        for line in proc.stdout:
            if _ID.match(line.strip()):
                printed.append(line.strip())
            if line.strip() == "recorded":
                break
        started = time.monotonic()
        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=3 + SLACK_S)
        except Exception:
            pytest.fail(f"the process did not end within {3 + SLACK_S} s ({how})")
        ended_s = time.monotonic() - started
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == (0 if how == "exit" else -signal.SIGTERM), err
    assert ended_s < 3 + SLACK_S
    assert len(printed) == 200
    assert _stored_ids(db) == set(printed)
    assert "were not delivered to OTLPSpanExporter(" in err


class _ListExporter(SpanExporter):
    """Accepts every batch (or refuses every one, with ``fail=True``)."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.fail:
            return SpanExportResult.FAILURE
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


class _RaisingExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        raise ConnectionError("collector gone")


def test_flush_tells_the_truth_about_every_exporter(db_path: Path) -> None:
    """flush() is False when an extra exporter refused or raised, once per failure, and
    stats().exporters counts exported and failed spans per exporter."""
    good, refusing = _ListExporter(), _ListExporter(fail=True)
    client = DecisionTraceClient(db_path=db_path, exporters=[good, refusing, _RaisingExporter()])
    try:
        ids = _record(client, 30)
        assert client.flush(timeout_s=30) is False
        assert {format(s.context.span_id, "016x") for s in good.spans if s.context} == set(ids)
        assert [s.name for s in client.stats().exporters] == [
            "_ListExporter",
            "_ListExporter",
            "_RaisingExporter",
        ]
        assert [(s.exported, s.failed, s.dropped) for s in client.stats().exporters] == [
            (30, 0, 0),
            (0, 30, 0),
            (0, 30, 0),
        ]
        # Reported once: nothing new failed since, so the next flush is True.
        assert client.flush(timeout_s=30) is True
        refusing.fail = False
        _record(client, 5)
        assert client.flush(timeout_s=30) is False  # the raising exporter failed again
        assert [s.exported for s in client.stats().exporters] == [35, 5, 0]
    finally:
        client.close()
    assert len(_stored_ids(db_path)) == 35


def test_a_full_export_queue_drops_from_the_exporter_only_and_says_so(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spans an exporter's queue had no room for are counted as dropped and fail the next
    flush; the ledger has them all."""
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "10")
    release = threading.Event()

    class Blocking(_ListExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            release.wait(60)
            return super().export(spans)

    exporter = Blocking()
    client = DecisionTraceClient(db_path=db_path, exporters=[exporter])
    try:
        ids = _record(client, 100)
        release.set()
        assert client.flush(timeout_s=30) is False
        [stats] = client.stats().exporters
        assert stats.dropped > 0
        assert stats.exported + stats.dropped == 100
        assert len(exporter.spans) == stats.exported
        assert {e.id for e in client.query(limit=None)} == set(ids)
    finally:
        client.close()


def test_the_deadline_comes_from_the_argument_else_the_environment(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """shutdown_timeout_s wins over DECISION_TRACE_SHUTDOWN_TIMEOUT, which wins over 10 s;
    a value that is not a finite number >= 0 raises InvalidInputError naming its source."""
    monkeypatch.delenv("DECISION_TRACE_SHUTDOWN_TIMEOUT", raising=False)
    with DecisionTraceClient(db_path=db_path) as client:
        assert client.shutdown_timeout_s == 10.0
    monkeypatch.setenv("DECISION_TRACE_SHUTDOWN_TIMEOUT", "2.5")
    with DecisionTraceClient(db_path=db_path) as client:
        assert client.shutdown_timeout_s == 2.5
    with DecisionTraceClient(db_path=db_path, shutdown_timeout_s=4) as client:
        assert client.shutdown_timeout_s == 4.0
    monkeypatch.setenv("DECISION_TRACE_SHUTDOWN_TIMEOUT", "soon")
    with pytest.raises(InvalidInputError) as raised:
        DecisionTraceClient(db_path=db_path)
    assert raised.value.field == "DECISION_TRACE_SHUTDOWN_TIMEOUT"
    for bad in (-1, float("nan"), float("inf"), "3"):
        with pytest.raises(InvalidInputError) as raised:
            DecisionTraceClient(db_path=db_path, shutdown_timeout_s=bad)  # type: ignore[arg-type]
        assert raised.value.field == "shutdown_timeout_s"
