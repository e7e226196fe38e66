"""The chain under real processes (SQLite): writers in several processes at once make one
chain that verifies, and a writer killed with SIGKILL mid-write leaves a ledger whose
events and chain entries agree."""

from __future__ import annotations

import re
import signal
import sqlite3
from pathlib import Path

import pytest
from reliability_support import (
    CHILD_TIMEOUT_S,
    check_intact,
    started_python,
    write_script,
)

from decision_trace.storage import open_ledger

_ID = re.compile(r"^[0-9a-f]{16}$")

WRITER = """
    import os, sys, time
    from decision_trace import DecisionTraceClient

    db, worker, count, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    client = DecisionTraceClient(db_path=db)
    while not os.path.exists(go):  # start with the other writers
        time.sleep(0.005)
    for i in range(count):
        event_id = (
            client.trace("order.refunded", f"worker {worker} refund {i}")
            .by_user(f"user-{worker}-{i % 5}", "Sam", email="sam@example.org")
            .affecting_order(f"ord-{worker}-{i}", {"status": "refunded", "amount": i / 100})
            .affecting("customer", f"c-{i % 11}", {"tier": "gold"})
            .because("item arrived broken", context={"worker": worker, "i": i})
            .with_tags("refund", f"w{worker}")
            .record()
        )
        print(event_id)
    assert client.flush(timeout_s=240)
    client.close()
    print("done", flush=True)
"""

RECORDER = """
    import sys
    from decision_trace import DecisionTraceClient

    db, durability = sys.argv[1], sys.argv[2]
    client = DecisionTraceClient(db_path=db, durability=durability)
    i = 0
    while True:
        event_id = (
            client.trace("order.refunded", f"refund number {i}")
            .by_user(f"user-{i % 7}", "Sam")
            .affecting_order(f"ord-{i}", {"status": "refunded", "amount": i / 100})
            .because("item arrived broken", context={"i": i, "note": "x" * (i % 50)})
            .with_tags("refund", f"t{i % 3}")
            .record()
        )
        print(event_id, flush=True)
        i += 1
"""


def _chain_agrees(db: Path) -> tuple[int, int]:
    """Assert the ledger verifies and every event has its chain entry (and no entry lacks
    its event); return (events, chain entries)."""
    check_intact(db)
    ledger = open_ledger(db, read_only=True)
    try:
        report = ledger.verify()
    finally:
        ledger.close()
    assert report.ok, report.problems
    conn = sqlite3.connect(db)
    try:
        events = {row[0]: row[1] for row in conn.execute("SELECT rowid, id FROM events")}
        chained = {row[0]: row[1] for row in conn.execute("SELECT position, event_id FROM chain")}
    finally:
        conn.close()
    assert events == chained
    assert (report.events, report.entries) == (len(events), len(chained))
    return len(events), len(chained)


def test_four_processes_make_one_chain(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    go = tmp_path / "go"
    script = write_script(tmp_path, "writer.py", WRITER)
    count = 400
    outputs: list[str] = []
    with (
        started_python(script, str(db), "0", str(count), str(go)) as p0,
        started_python(script, str(db), "1", str(count), str(go)) as p1,
        started_python(script, str(db), "2", str(count), str(go)) as p2,
        started_python(script, str(db), "3", str(count), str(go)) as p3,
    ):
        go.touch()
        for proc in (p0, p1, p2, p3):
            out, err = proc.communicate(timeout=CHILD_TIMEOUT_S * 2)
            assert proc.returncode == 0, err
            outputs.append(out)
    printed = [line for out in outputs for line in out.splitlines() if _ID.match(line)]
    assert len(printed) == 4 * count
    events, entries = _chain_agrees(db)
    assert events == entries == 4 * count
    conn = sqlite3.connect(db)
    try:
        stored = {row[0] for row in conn.execute("SELECT id FROM events")}
        positions = [row[0] for row in conn.execute("SELECT position FROM chain ORDER BY 1")]
    finally:
        conn.close()
    assert stored == set(printed)
    # One chain: every position given out once, none skipped, whichever process wrote it.
    assert positions == list(range(1, 4 * count + 1))


@pytest.mark.parametrize("durability", ["sync", "batch"])
def test_sigkill_mid_write_leaves_a_chain_that_verifies(tmp_path: Path, durability: str) -> None:
    db = tmp_path / "killed.db"
    script = write_script(tmp_path, "recorder.py", RECORDER)
    total_printed = 0
    for stop_at in (150, 400, 900):
        printed = 0
        with started_python(script, str(db), durability) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                printed += bool(_ID.match(line.strip()))
                if printed >= stop_at:
                    break
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
            assert proc.returncode == -signal.SIGKILL
        total_printed += printed
        events, entries = _chain_agrees(db)
        assert events == entries
        if durability == "sync":
            assert events >= total_printed
    assert total_printed >= 150 + 400 + 900
