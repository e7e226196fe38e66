"""Back-pressure: a writer slower than the producer never makes the queue drop silently."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from reliability_support import is_postgres, table_counts

from decision_trace import processor as processor_module
from decision_trace.errors import StoreError
from decision_trace.exporters import SQLiteSpanExporter
from decision_trace.processor import LedgerSpanProcessor
from decision_trace.record import EventRecord

pytestmark = pytest.mark.usefixtures("ledger_target")


class SlowDiskExporter(SQLiteSpanExporter):
    """The real exporter on a simulated slow disk: every commit takes ``delay_s`` longer."""

    def __init__(self, db_path: str | Path, delay_s: float) -> None:
        super().__init__(db_path)
        self.delay_s = delay_s

    def write_records(self, records: Sequence[EventRecord]) -> int:
        time.sleep(self.delay_s)
        return super().write_records(records)


class BrokenDiskExporter(SQLiteSpanExporter):
    """The real exporter on a disk that fails every write until ``healed`` is set."""

    def __init__(self, db_path: str | Path) -> None:
        super().__init__(db_path)
        self.healed = False

    def write_records(self, records: Sequence[EventRecord]) -> int:
        if not self.healed:
            raise StoreError("disk I/O error (simulated)")
        return super().write_records(records)


@pytest.fixture
def provider() -> Iterator[TracerProvider]:
    provider = TracerProvider(shutdown_on_exit=False)
    yield provider
    provider.shutdown()


def _stored(db: str) -> int:
    return table_counts(db)[0]


def test_slow_disk_applies_back_pressure_and_loses_nothing(
    ledger_target: str, provider: TracerProvider
) -> None:
    exporter = SlowDiskExporter(ledger_target, delay_s=0.02)
    ledger = LedgerSpanProcessor(
        exporter, durability="batch", max_queue_size=50, max_batch_size=10, schedule_delay_s=0.01
    )
    provider.add_span_processor(ledger)
    tracer = provider.get_tracer("test")
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, ledger.stats().queued)
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(600):
            tracer.start_span(f"work.{i}", attributes={"i": i}).end()
    finally:
        done.set()
        watcher.join()
    assert ledger.force_flush()
    stats = ledger.stats()
    assert (stats.recorded, stats.written, stats.failed, stats.queued) == (600, 600, 0, 0)
    assert _stored(ledger_target) == 600
    # The queue filled up and was held at its bound (plus the batch being written).
    assert 50 // 2 <= peak <= 50 + 10


def test_failed_writes_are_counted_logged_once_and_fail_flush(
    ledger_target: str,
    provider: TracerProvider,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(processor_module, "RETRY_DELAYS_S", (0.01, 0.01))
    exporter = BrokenDiskExporter(ledger_target)
    ledger = LedgerSpanProcessor(exporter, durability="batch", schedule_delay_s=0.01)
    provider.add_span_processor(ledger)
    tracer = provider.get_tracer("test")
    caplog.set_level(logging.ERROR, logger="decision_trace")

    for i in range(30):
        tracer.start_span(f"work.{i}").end()
    assert ledger.force_flush() is False
    assert ledger.stats().failed == 30

    # Failures that happen before flush() is called are reported by it just the same.
    for i in range(20):
        tracer.start_span(f"more.{i}").end()
    deadline = time.monotonic() + 30
    while ledger.stats().failed < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ledger.stats().failed == 50
    assert ledger.force_flush() is False

    # Waiting for writes (as every query does first) does not swallow the report.
    for i in range(5):
        tracer.start_span(f"read.{i}").end()
    assert ledger.wait_until_written() is True
    assert ledger.stats().failed == 55
    assert ledger.force_flush() is False

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, "a failing disk is logged once, then counted"
    assert "lost to the ledger" in errors[0].getMessage()

    # Once the disk heals, new events are written and flush() succeeds again.
    exporter.healed = True
    for i in range(10):
        tracer.start_span(f"healed.{i}").end()
    assert ledger.force_flush() is True
    stats = ledger.stats()
    assert (stats.recorded, stats.written, stats.failed) == (65, 10, 55)
    assert _stored(ledger_target) == 10


def test_client_flush_and_stats_expose_the_counters(ledger_target: str) -> None:
    from decision_trace import DecisionTraceClient

    with DecisionTraceClient(db_path=ledger_target, max_queue_size=5) as client:
        ids = [client.trace("a.b", f"event {i}").by_system("s").record() for i in range(200)]
        assert client.flush() is True
        stats = client.stats()
        assert (stats.recorded, stats.written, stats.failed, stats.queued) == (200, 200, 0, 0)
    assert _stored(ledger_target) == len(set(ids)) == 200


@pytest.mark.parametrize("durability", ["batch", "sync"])
def test_one_unstorable_span_costs_only_itself(ledger_target: str, durability: str) -> None:
    """A span made by hand with our attribute keys but a broken JSON value (SQLite's JSON
    functions refuse it) is counted as failed; the events batched with it are written."""
    from decision_trace import DecisionTraceClient

    with DecisionTraceClient(db_path=ledger_target, durability=durability) as client:
        ids = [client.trace("ok.before", str(i)).by_system("s").record() for i in range(10)]
        hand_made = client.tracer_provider.get_tracer("app").start_span(
            "hand.made",
            attributes={"decision_trace.event_type": "x", "decision_trace.context": "{oops"},
        )
        if durability == "sync":
            # The error is the database's own: SQLite's JSON functions, or the jsonb
            # input of PostgreSQL.
            refused = (
                "invalid input syntax for type json"
                if is_postgres(ledger_target)
                else "malformed JSON"
            )
            with pytest.raises(StoreError, match=refused):
                hand_made.end()
        else:
            hand_made.end()
        ids += [client.trace("ok.after", str(i)).by_system("s").record() for i in range(10)]
        if durability == "batch":
            assert client.get_event(ids[-1]) is not None  # a read waits, reports nothing
            assert client.flush() is False
            stats = client.stats()
            assert (stats.recorded, stats.written, stats.failed) == (21, 20, 1)
        assert {e.id for e in client.query(limit=None)} == set(ids)
    assert _stored(ledger_target) == 20


@pytest.mark.parametrize("durability", ["batch", "sync"])
def test_a_span_that_cannot_be_decoded_is_counted_never_raised(
    ledger_target: str, durability: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Spans are decoded in ``on_end``, in the application's thread: one that cannot be
    (our keys with a value of the wrong type) is logged and counted as failed, and
    ``end()`` returns normally in both modes."""
    from decision_trace import DecisionTraceClient

    caplog.set_level(logging.ERROR, logger="decision_trace")
    with DecisionTraceClient(db_path=ledger_target, durability=durability) as client:
        first = client.trace("ok.before", "1").by_system("s").record()
        client.tracer_provider.get_tracer("app").start_span(
            "hand.made",
            attributes={"decision_trace.event_type": "x", "decision_trace.context": 5},
        ).end()
        last = client.trace("ok.after", "2").by_system("s").record()
        assert client.flush() is False
        assert client.flush() is True  # reported once
        stats = client.stats()
        assert (stats.recorded, stats.written, stats.failed) == (3, 2, 1)
        assert {e.id for e in client.query(limit=None)} == {first, last}
    assert any("cannot decode span 'hand.made'" in r.getMessage() for r in caplog.records)
