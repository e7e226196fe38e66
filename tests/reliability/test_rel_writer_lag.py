"""Batch mode under a busy application: the writer keeps up, and kill -9 takes at most
the events of about the last second (docs/guarantees.md)."""

from __future__ import annotations

import os
import random
import signal
import struct
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from reliability_support import (
    check_intact,
    is_postgres,
    started_python,
    stored_column,
    write_script,
)

from decision_trace.exporters import SQLiteSpanExporter
from decision_trace.processor import MAX_LAG_S, LedgerSpanProcessor
from decision_trace.record import EventRecord

SLOTS = 200_000
"""Acknowledgement slots in the shared file (the child records fewer: ~1,000 a second)."""

# The main thread does ``work_s`` of pure-Python work per event (holding the GIL, as a
# busy request handler does; 0: a tight loop) and records in batch mode an event with
# two objects and three tags. After record() returns it stores the
# CLOCK_MONOTONIC time into slot <seq> of a shared memory map of the ack file: this
# survives kill -9 (the page cache keeps it) and, unlike os.write(), never releases the
# GIL, which would hand the writer thread a free turn a real busy application never gives.
BUSY_RECORDER = f"""
    import mmap
    import struct
    import sys
    import time
    from decision_trace import DecisionTraceClient

    db, acks, work_s, run = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    client = DecisionTraceClient(db_path=db, durability="batch")
    with open(acks, "r+b") as f:
        shared = mmap.mmap(f.fileno(), {SLOTS} * 8)

    def work():
        total = 0
        end = time.perf_counter() + work_s
        while time.perf_counter() < end:
            total += 1
        return total

    print("ready", flush=True)
    seq = 0
    while True:
        if work_s:
            work()
        (
            client.trace("order.refunded", f"tick {{seq}} of run {{run}}")
            .by_user(f"user-{{seq % 7}}", "Sam")
            .affecting_order(f"ord-{{seq}}", {{"status": "refunded", "amount": seq / 100}})
            .affecting("customer", f"c-{{seq % 13}}")
            .because("item arrived broken", context={{"seq": seq}})
            .with_tags("refund", f"t{{seq % 3}}", "busy")
            .record()
        )
        struct.pack_into("d", shared, seq * 8, time.monotonic())
        seq += 1
"""

WINDOW_BOUND_S = 3 * MAX_LAG_S
"""What the test allows: docs/guarantees.md states ~1 s (MAX_LAG_S); three times that, because
on a loaded 2-core machine the operating system can stop the whole child for a while
right before the kill, which stretches the wall-clock age of its last events."""


def _acks(path: Path) -> list[tuple[int, float]]:
    times = struct.unpack(f"{SLOTS}d", path.read_bytes())
    return [(seq, at) for seq, at in enumerate(times) if at > 0.0]


def _stored_seqs(db: str, run: int) -> set[int]:
    """The sequence numbers of run ``run`` in the ledger, after checking it is intact."""
    check_intact(db)
    ticks = [d.split() for d in stored_column(db, "description")]
    return {int(tick[1]) for tick in ticks if tick[4] == str(run)}


@pytest.mark.parametrize("work_ms", [1.0, 0.0], ids=["1ms-work-per-event", "tight-loop"])
def test_busy_application_loses_at_most_the_last_second_to_kill_9(
    tmp_path: Path, ledger_target: str, work_ms: float
) -> None:
    """On both backends: the writer keeps up with a busy application, whatever a commit
    costs (a local file, a server round trip)."""
    script = write_script(tmp_path, "busy.py", BUSY_RECORDER)
    rng = random.Random(os.getpid())
    windows = []
    for run in range(2):
        # A file per run on SQLite; on PostgreSQL the runs share the schema (and their
        # descriptions name the run).
        db = ledger_target if is_postgres(ledger_target) else str(tmp_path / f"busy-{run}.db")
        ack_file = tmp_path / f"acks-{run}.bin"
        ack_file.write_bytes(bytes(SLOTS * 8))
        args = (db, str(ack_file), str(work_ms / 1000), str(run))
        with started_python(script, *args) as proc:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            # Long enough for an unbounded lag to build up (it grew ~1 s per second).
            time.sleep(rng.uniform(5.0, 8.0))
            proc.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            proc.wait()
        acks = _acks(ack_file)
        assert len(acks) > 300, "the child recorded too little to measure anything"
        stored = _stored_seqs(db, run)
        missing = [(seq, at) for seq, at in acks if seq not in stored]
        window = killed_at - min(at for _, at in missing) if missing else 0.0
        windows.append((len(acks), len(missing), round(window, 3)))
        # Events are committed in order: whatever is missing is the tail.
        if missing:
            assert min(seq for seq, _ in missing) > max(stored, default=-1)
    print("acknowledged, lost to kill -9, oldest lost event's age at the kill (s):", windows)
    assert all(window <= WINDOW_BOUND_S for *_, window in windows), windows


class SlowDiskExporter(SQLiteSpanExporter):
    """The real exporter on a simulated slow disk: every commit takes ``delay_s`` longer."""

    def __init__(self, db_path: Path, delay_s: float) -> None:
        super().__init__(db_path)
        self.delay_s = delay_s

    def write_records(self, records: Sequence[EventRecord]) -> int:
        time.sleep(self.delay_s)
        return super().write_records(records)


# The bound is the span processor's, measured against a simulated slow disk (a sleep in
# each commit): the backend under it adds nothing to what this measures.
def test_record_waits_once_the_oldest_uncommitted_event_is_max_lag_old(db_path: Path) -> None:
    """The lag is bounded in time, not only by the queue's size: with a writer that needs
    0.2 s for each batch of 100 and a queue that never fills, a producer 5,000 events
    ahead would leave the last ones uncommitted for about 10 s (50 batches); instead
    on_end waits once the oldest queued event is ``max_lag_s`` old, so no event waits
    much longer than that to be committed."""
    max_lag_s = 0.5
    provider = TracerProvider(shutdown_on_exit=False)
    ledger = LedgerSpanProcessor(
        SlowDiskExporter(db_path, 0.2), max_lag_s=max_lag_s, max_batch_size=100
    )
    provider.add_span_processor(ledger)
    tracer = provider.get_tracer("test")
    count = 5_000
    acked: list[float] = []
    committed = [0.0] * count
    done = threading.Event()  # set only if the producer fails

    def watch() -> None:  # when each event was committed, to within a few ms
        seen = 0
        while seen < count and not done.is_set():
            written = ledger.stats().written
            now = time.monotonic()
            for seq in range(seen, written):
                committed[seq] = now
            seen = max(seen, written)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(count):
            tracer.start_span(f"work.{i}").end()
            acked.append(time.monotonic())
        assert ledger.force_flush(timeout_millis=120_000)
    except BaseException:
        done.set()
        raise
    finally:
        watcher.join()
        provider.shutdown()
    assert ledger.stats().written == count and all(committed)
    lags = [c - a for a, c in zip(acked, committed, strict=True)]
    print(f"longest wait from record() to commit: {max(lags):.2f} s")
    # Measured 1.0 s (max_lag_s, one 0.2 s commit, scheduling); unbounded, the last event waits
    # for all 50 commits (~10 s). Half of that is the bound here: on a loaded 2-core
    # machine the same test has measured 3.7 s with 0.3 s commits of 512 events.
    assert max(lags) <= 5.0, f"max lag {max(lags):.2f} s"
