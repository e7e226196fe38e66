"""``decision-trace copy``: every event of one ledger into another, exactly as stored.

The destination comes from the ``destination`` fixture, so that the same tests copy into
every kind of ledger the storage layer opens; comparisons go through the ``Ledger``
protocol and the command line, never through a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import decision_trace.cli as cli
from decision_trace import DecisionTraceClient
from decision_trace.cli import main
from decision_trace.errors import StoreError
from decision_trace.record import MAX_NS, MIN_NS, EventRecord
from decision_trace.storage import EventFilters, Ledger, open_ledger

NOW = datetime.now(timezone.utc)
COPY = (sys.executable, "-m", "decision_trace", "copy")
REPORT = "read {read} events, {new} new, {there} already there, {rejected} rejected."


@pytest.fixture(params=["sqlite"])
def destination(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where a test copies to: the target (``--to``) of a ledger that does not exist yet.

    TODO(postgres): add a ``"postgres"`` param once the PostgreSQL backend is on main:
    create a throwaway schema or database on the test server, yield its
    ``postgresql://`` URL, drop it afterwards. Every test taking this fixture then also
    copies SQLite -> PostgreSQL, and ``test_there_and_back`` PostgreSQL -> SQLite.
    """
    assert request.param == "sqlite"
    yield str(tmp_path / "copy" / "ledger.db")


@dataclass
class Source:
    db: Path
    chain_root: str
    ids: list[str]


def _raw(i: int, **changes: Any) -> EventRecord:
    """A record written straight to the ledger (as an OTLP ingest or a shipper would)."""
    record = EventRecord(
        id=f"{0xB000 + i:016x}",
        trace_id=f"{0xB000 + i:032x}",
        parent_id=None,
        start_ns=int((NOW - timedelta(days=1)).timestamp()) * 1_000_000_000 + i,
        duration_ns=1000 + i,
        event_type="bulk.loaded",
        description=f"Bulk event {i}: café ☕ 注文 {'x' * (i % 7)}",
        actor_type="compute",
        actor_id="loader",
        actor_name="Bulk loader",
        actor_json=None,
        reasoning=f"Loaded in bulk, batch word quokka{i % 3}",
        decision_json='{"context":{"batch":"x"},"alternatives":[],"rejection_reasons":{},'
        '"confidence":null,"risk_level":null}',
        object_types=("order",),
        object_ids=(f"ord-bulk-{i % 4}",),
        objects_json=None,
        tags=("bulk", f"shard-{i % 2}"),
        outcome="success",
        error=None,
        metadata_json=None,
        service_name="loader",
    )
    return replace(record, **changes)


def _odd_records() -> list[EventRecord]:
    """Records at the edges of what a ledger stores: the earliest and latest times, no
    actor, a parent that is not stored, a lone surrogate and a 30-digit integer kept in
    JSON text, empty strings."""
    return [
        _raw(100, start_ns=MIN_NS, duration_ns=0, event_type="edge.earliest"),
        _raw(101, start_ns=MAX_NS - 5, event_type="edge.latest", description=""),
        _raw(
            102,
            actor_type=None,
            actor_id=None,
            actor_name=None,
            reasoning=None,
            decision_json=None,
            object_types=(),
            object_ids=(),
            tags=(),
            parent_id="00000000deadbeef",
            event_type="edge.bare",
            service_name=None,
        ),
        _raw(
            103,
            event_type="edge.json",
            metadata_json='{"lone":"\\ud800","big":123456789012345678901234567890,'
            '"nested":{"list":[1,2.5,null,true]}}',
            outcome="failure",
            error="card network timeout \x1b[31m",
        ),
    ]


@pytest.fixture
def source(make_client: Callable[..., DecisionTraceClient], db_path: Path) -> Source:
    """A ledger recorded by the library (sync) plus records written straight to it."""
    client = make_client(durability="sync")
    (
        client.trace("order.created", "Order placed long ago")
        .at(NOW - timedelta(days=100))
        .by_user("cust-old", "Old Customer")
        .affecting_order("ord-old", {"total": 10, "currency": "USD"})
        .because("Ancient checkout with zanzibarword in it")
        .with_tags("legacy")
        .record()
    )
    root = (
        client.trace("workflow.started", "Order fulfillment started")
        .by_system("fulfillment-engine")
        .affecting_order("ord-1")
        .record()
    )
    (
        client.trace("payment.captured", "Payment captured")
        .child_of(root)
        .by_external("stripe", "Stripe", service_name="api.stripe.com")
        .affecting_payment("pay-1", {"amount": 149.99, "currency": "EUR"})
        .record()
    )
    with client.span("workflow.step", "Picking the items").child_of(root) as trace:
        trace.by_compute("picker", "Warehouse picker")
        (
            client.trace("inventory.adjusted", "Stock decremented")
            .by_compute("picker")
            .affecting_inventory("SKU-789", quantity_before=100, quantity_after=98)
            .record()
        )
    (
        client.trace("order.refunded", "Refund issued for a defective grinder")
        .by_ai_agent("refund-ai", "Refund Agent", model="gpt-4", version="2.1")
        .affecting(
            "order",
            "ord-1",
            state_before={"status": "paid", "refund": 0},
            state_after={"status": "refunded", "refund": 99.99},
        )
        .affecting_customer("cust-1")
        .because(
            "Refund approved due to product defect",
            context={"defect_type": "manufacturing", "customer_tier": "gold"},
            alternatives=[{"action": "replace", "reason": "offer replacement instead"}],
            rejection_reasons={"replace": "Customer requested full refund"},
        )
        .with_confidence(0.92)
        .with_risk("medium")
        .with_tags("refund", "urgent")
        .with_metadata(ticket="T-1", attempts=3)
        .failed("card network timeout")
        .record()
    )
    client.close()
    ledger = open_ledger(db_path)
    try:
        ledger.write([_raw(i) for i in range(20)] + _odd_records())
    finally:
        ledger.close()
    return Source(db=db_path, chain_root=root, ids=[r.id for r in records(db_path)])


# --- helpers ------------------------------------------------------------------------------


def run(*args: str, ok: bool = True, **kwargs: Any) -> Result:
    """Invoke the CLI in-process; by default the command must succeed."""
    result = CliRunner().invoke(main, list(args), **kwargs)
    if ok:
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def copy(source: str | Path, destination: str, *args: str, ok: bool = True) -> Result:
    return run("copy", "--from", str(source), "--to", destination, *args, ok=ok)


def error_line(result: Result, code: int, *fragments: str) -> str:
    """The one ``Error:`` line on stderr, with exit status ``code``."""
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def records(target: str | Path) -> list[EventRecord]:
    """Every record of a ledger, as stored, in storage order."""
    ledger = open_ledger(target, create=False, read_only=True)
    try:
        with closing(ledger.iter_records(batch_size=7)) as stream:
            return [record for _, record in stream]
    finally:
        ledger.close()


def json_lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def cli_json(target: str | Path, *args: str) -> list[dict[str, Any]]:
    return json_lines(run(*args, "--db", str(target), "--json"))


def report_line(result: Result) -> str:
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_ledger(first: str | Path, second: str | Path) -> None:
    """The two ledgers hold the same events, as stored and as every command shows them."""
    stored = records(first)
    assert records(second) == stored
    a = open_ledger(first, create=False, read_only=True)
    b = open_ledger(second, create=False, read_only=True)
    try:
        for record in stored:
            assert a.get_event(record.id) == b.get_event(record.id) is not None
        objects = {
            (t, i) for r in stored for t, i in zip(r.object_types, r.object_ids, strict=True)
        }
        for object_type, external_id in objects:
            assert a.object_history(external_id, object_type) == b.object_history(
                external_id, object_type
            )
        assert _ledger_answers(a) == _ledger_answers(b)
    finally:
        a.close()
        b.close()
    for record in stored[:3] + stored[-3:]:
        assert cli_json(first, "show", record.id) == cli_json(second, "show", record.id)
    for args in (
        ("events", "--limit", "0"),
        ("events", "--tag", "refund", "--tag", "shard-1"),
        ("why", "order:ord-1"),
        ("search", "quokka1"),
        ("search", "zanzibarword"),
        ("export",),
    ):
        assert cli_json(first, *args) == cli_json(second, *args), args
    (stats_a,), (stats_b,) = cli_json(first, "stats"), cli_json(second, "stats")
    for key in ("db", "size_bytes", "wal_bytes"):
        del stats_a[key], stats_b[key]
    assert stats_a == stats_b


def _ledger_answers(ledger: Ledger) -> dict[str, Any]:
    return {
        "tags": [
            [e.id for e in ledger.query(EventFilters.build(tags=[tag]), limit=None)]
            for tag in ("bulk", "shard-0", "legacy", "urgent")
        ],
        "search": [
            [e.id for e in ledger.search(text, limit=None)]
            for text in ("quokka0", "café", "defect", "注文")
        ],
        "count": ledger.count(EventFilters()),
    }


# --- copying ------------------------------------------------------------------------------


def test_copy_preserves_every_event_and_reports_one_line(source: Source, destination: str) -> None:
    before = digest(source.db)
    result = copy(source.db, destination)
    n = len(source.ids)
    assert n == 30
    line = report_line(result)
    assert line.startswith(f"Copied {source.db} to ")
    assert line.endswith(REPORT.format(read=n, new=n, there=0, rejected=0))
    assert result.stderr == ""  # not a terminal: no progress bar, only the report
    assert_same_ledger(source.db, destination)
    tree = cli_json(destination, "chain", source.chain_root)
    assert [e["depth"] for e in tree] == [0, 1, 1, 2]
    assert digest(source.db) == before  # the source is only read


def test_copying_again_stores_nothing_new(source: Source, destination: str) -> None:
    copy(source.db, destination)
    stored = records(destination)
    again = json.loads(copy(source.db, destination, "--json").stdout)
    n = len(source.ids)
    assert again["read"] == again["already_there"] == n
    assert (again["new"], again["rejected"], again["rejected_ids"]) == (0, 0, [])
    assert again["complete"] is True
    assert again["from"] == str(source.db)
    assert records(destination) == stored


def _spy_on_writes(
    monkeypatch: pytest.MonkeyPatch, before_write: Callable[[int], None] | None = None
) -> list[int]:
    """Record the size of every batch ``copy`` writes (``before_write`` is called with the
    batch's number first); the ledgers themselves are the real ones."""
    real_open = cli.open_ledger
    sizes: list[int] = []

    class Spy:
        def __init__(self, ledger: Ledger) -> None:
            self._ledger = ledger

        def write(self, batch: list[EventRecord]) -> int:
            if before_write is not None:
                before_write(len(sizes) + 1)
            sizes.append(len(batch))
            return self._ledger.write(batch)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._ledger, name)

    def opening(target: str, **kwargs: Any) -> Any:
        ledger = real_open(target, **kwargs)
        return ledger if kwargs.get("read_only") else Spy(ledger)

    monkeypatch.setattr(cli, "open_ledger", opening)
    return sizes


def test_small_batches_copy_everything_in_order(
    source: Source, destination: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = _spy_on_writes(monkeypatch)
    result = copy(source.db, destination, "--batch", "3")
    n = len(source.ids)
    assert sizes == [3] * (n // 3) + ([n % 3] if n % 3 else [])
    assert report_line(result).endswith(REPORT.format(read=n, new=n, there=0, rejected=0))
    assert_same_ledger(source.db, destination)


def test_copy_into_a_ledger_that_holds_some_events_already(
    source: Source, destination: str
) -> None:
    stored = records(source.db)
    other = _raw(500, event_type="only.in.destination")
    ledger = open_ledger(destination)
    try:
        ledger.write([*stored[5:12], other])
    finally:
        ledger.close()
    result = copy(source.db, destination, "--batch", "4")
    n = len(stored)
    assert report_line(result).endswith(REPORT.format(read=n, new=n - 7, there=7, rejected=0))
    copied = {record.id: record for record in records(destination)}
    assert copied == {record.id: record for record in [*stored, other]}


def test_there_and_back(source: Source, destination: str, tmp_path: Path) -> None:
    copy(source.db, destination)
    back = str(tmp_path / "back.db")
    result = copy(destination, back, "--batch", "5")
    n = len(source.ids)
    assert report_line(result).endswith(REPORT.format(read=n, new=n, there=0, rejected=0))
    assert_same_ledger(source.db, back)


def test_source_defaults_to_the_ledger_other_commands_read(
    source: Source, destination: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    n = len(source.ids)
    result = run("--db", str(source.db), "copy", "--to", destination)
    assert report_line(result).endswith(REPORT.format(read=n, new=n, there=0, rejected=0))
    monkeypatch.setenv("DECISION_TRACE_DB", str(source.db))
    result = run("copy", "--to", destination)
    assert report_line(result).endswith(REPORT.format(read=n, new=0, there=n, rejected=0))
    monkeypatch.delenv("DECISION_TRACE_DB")
    missing = tmp_path / "home" / ".local" / "share" / "decision-trace" / "traces.db"
    error_line(run("copy", "--to", destination, ok=False), 1, f"at {missing}", "--from")


# --- what copy refuses ----------------------------------------------------------------------


def _trigger_refusing(db: Path, event_type: str) -> None:
    """Make an SQLite ledger refuse events of one type, as a constraint would."""
    with closing(sqlite3.connect(db)) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON events "
            f"WHEN NEW.event_type = '{event_type}' "
            "BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END"
        )
        conn.commit()


def test_rejected_events_are_counted_listed_and_fail_the_copy(
    source: Source, tmp_path: Path
) -> None:
    target = tmp_path / "strict.db"
    open_ledger(target).close()
    _trigger_refusing(target, "bulk.loaded")
    stored = records(source.db)
    refused = [r.id for r in stored if r.event_type == "bulk.loaded"]
    n, r = len(stored), len(refused)
    assert r == 20
    result = copy(source.db, str(target), "--batch", "6", ok=False)
    error_line(result, 1, f"{r} events not copied", "refused by a test trigger")
    first, listed = result.stdout.splitlines()
    assert first.endswith(REPORT.format(read=n, new=n - r, there=0, rejected=r))
    assert listed == f"Rejected: {', '.join(refused[:10])} and {r - 10} more."
    assert [x.id for x in records(target)] == [x.id for x in stored if x.id not in refused]

    again = copy(source.db, str(target), "--json", ok=False)
    error_line(again, 1, f"{r} events not copied")
    report = json.loads(again.stdout)
    assert (report["read"], report["new"], report["already_there"]) == (n, 0, n - r)
    assert (report["rejected"], report["rejected_ids"]) == (r, refused[:10])
    assert report["complete"] is True


def test_a_ledger_is_never_copied_onto_itself(
    source: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = digest(source.db)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "link.db").symlink_to(source.db)
    os.link(source.db, elsewhere / "hard.db")
    monkeypatch.setenv("HOME", str(tmp_path))
    for target in (
        str(source.db),
        str(elsewhere / ".." / source.db.name),
        str(elsewhere / "link.db"),
        str(elsewhere / "hard.db"),
        f"~/{source.db.name}",
    ):
        error_line(copy(source.db, target, ok=False), 2, "same ledger", "onto itself")
    monkeypatch.chdir(elsewhere)
    error_line(copy("hard.db", "../" + source.db.name, ok=False), 2, "same ledger")
    error_line(run("--db", str(source.db), "copy", "--to", "link.db", ok=False), 2, "same")
    assert digest(source.db) == before


def test_the_same_destination_twice_is_refused_too(source: Source, destination: str) -> None:
    """By location, as the ledgers report it: what catches two URLs naming one ledger."""
    copy(source.db, destination)
    stored = records(destination)
    error_line(copy(destination, destination, ok=False), 2, "same ledger")
    assert records(destination) == stored


def test_mistakes_create_nothing(source: Source, destination: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "traces.db"
    error_line(copy(missing, destination, ok=False), 1, "no decision-trace database")
    assert not missing.parent.exists()
    for args, fragment in (
        (("--batch", "0"), "--batch"),
        (("--batch", "many"), "--batch"),
    ):
        error_line(copy(source.db, destination, *args, ok=False), 2, fragment)
    error_line(run("copy", "--from", str(source.db), ok=False), 2, "--to")
    error_line(copy(source.db, str(tmp_path), ok=False), 2, "is a directory")
    assert not Path(destination).parent.exists()
    assert records(source.db) and len(records(source.db)) == len(source.ids)


def test_ctrl_c_reports_what_was_copied_and_a_rerun_resumes(
    source: Source, destination: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt(batch_number: int) -> None:
        if batch_number == 3:
            raise KeyboardInterrupt

    sizes = _spy_on_writes(monkeypatch, interrupt)
    result = copy(source.db, destination, "--batch", "4", ok=False)
    error_line(result, 130, "interrupted after 8 events", "run the same copy again")
    line = report_line(result)
    assert line.startswith("Stopped copying ")
    assert line.endswith(REPORT.format(read=8, new=8, there=0, rejected=0))
    assert sizes == [4, 4]
    stored = records(source.db)
    assert records(destination) == stored[:8]

    monkeypatch.undo()
    n = len(stored)
    rerun = copy(source.db, destination, "--batch", "4")
    assert report_line(rerun).endswith(REPORT.format(read=n, new=n - 8, there=8, rejected=0))
    assert_same_ledger(source.db, destination)


def test_a_failing_destination_stops_the_copy_with_a_report(
    source: Source, destination: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(batch_number: int) -> None:
        if batch_number == 2:
            raise StoreError("cannot write to the test ledger: disk I/O error")

    _spy_on_writes(monkeypatch, fail)
    result = copy(source.db, destination, "--batch", "5", "--json", ok=False)
    error_line(result, 1, "stopped after 5 events", "disk I/O error", "run the same copy again")
    report = json.loads(result.stdout)
    assert (report["complete"], report["read"], report["new"]) == (False, 5, 5)
    assert records(destination) == records(source.db)[:5]


# --- real processes -------------------------------------------------------------------------


def _python_m(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "decision_trace", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
        **kwargs,
    )


def test_copy_as_a_process(source: Source, destination: str) -> None:
    done = _python_m("copy", "--from", str(source.db), "--to", destination, "--batch", "3")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    (line,) = done.stdout.splitlines()
    n = len(source.ids)
    assert line.endswith(REPORT.format(read=n, new=n, there=0, rejected=0))
    assert_same_ledger(source.db, destination)
    same = _python_m("copy", "--from", destination, "--to", destination)
    assert same.returncode == 2 and same.stdout == ""
    assert same.stderr.startswith("Error: --from and --to are the same ledger")


def test_progress_bar_only_on_a_terminal(source: Source, tmp_path: Path) -> None:
    pty = pytest.importorskip("pty")
    controller, terminal = pty.openpty()
    target = tmp_path / "copy.db"
    try:
        completed = subprocess.run(
            [*COPY, "--from", str(source.db), "--to", str(target), "--batch", "2"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=terminal,
            timeout=120,
            check=False,
        )
        os.close(terminal)
        seen = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(controller)
    assert completed.returncode == 0
    assert b"Copying" in seen and b"100%" in seen
    n = len(source.ids)
    report = completed.stdout.decode()
    assert report.endswith(REPORT.format(read=n, new=n, there=0, rejected=0) + "\n")


@pytest.mark.slow
def test_copy_streams_in_bounded_memory(db_path: Path, tmp_path: Path) -> None:
    count = 20_000
    ledger = open_ledger(db_path)
    try:
        for chunk in range(0, count, 5000):
            ledger.write([_raw(i, description="d" * 400) for i in range(chunk, chunk + 5000)])
    finally:
        ledger.close()
    target = str(tmp_path / "copy.db")
    tracemalloc.start()
    try:
        result = copy(db_path, target, "--batch", "200")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report_line(result).endswith(
        REPORT.format(read=f"{count:,}", new=f"{count:,}", there=0, rejected=0)
    )
    assert len(records(target)) == count
    # 20,000 events of half a kilobyte and more: holding them all would take far more.
    assert peak < 4_000_000, peak


def _stored_count(db: Path) -> int:
    """Events in an SQLite ledger another process is writing (0 until it has a schema)."""
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_a_real_ctrl_c_stops_cleanly_and_the_copy_resumes(db_path: Path, tmp_path: Path) -> None:
    count, batch = 10_000, 20
    ledger = open_ledger(db_path)
    try:
        ledger.write([_raw(i) for i in range(count)])
    finally:
        ledger.close()
    target = tmp_path / "copy.db"
    process = subprocess.Popen(
        [*COPY, "--from", str(db_path), "--to", str(target), "--batch", str(batch)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while _stored_count(target) == 0 and process.poll() is None:
            assert time.monotonic() < deadline, "the copy never started writing"
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, (out, err)
    (line,) = out.splitlines()
    match = re.fullmatch(
        rf"Stopped copying {re.escape(str(db_path))} to {re.escape(str(target))}: "
        r"read ([\d,]+) events?, \1 new, 0 already there, 0 rejected\.",
        line,
    )
    assert match is not None, line
    reported = int(match.group(1).replace(",", ""))
    assert 0 < reported < count
    assert err.startswith(f"Error: interrupted after {match.group(1)} event")
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    # The batch in flight when the signal came is written whole or not at all.
    stored = len(records(target))
    assert stored in (reported, reported + batch)
    assert records(target) == records(db_path)[:stored]

    resumed = copy(db_path, str(target))
    assert report_line(resumed).endswith(
        REPORT.format(read=f"{count:,}", new=f"{count - stored:,}", there=stored, rejected=0)
    )
    assert records(target) == records(db_path)
