"""The tamper-evident chain, on every backend that keeps one (docs/proving.md): what
``verify`` reports for an honest ledger, for erasures and prunes, for checkpoints, for
concurrent writers, and for tampering done with plain SQL behind the ledger's back.

Each test runs once per backend (``ledger_target``: an SQLite file, a PostgreSQL schema).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from contract_support import BASE

from decision_trace._rows import EVENT_COLUMNS
from decision_trace.integrity import Checkpoint, Problem, VerifyReport
from decision_trace.record import EventRecord, ns_from_datetime
from decision_trace.storage import Ledger, open_ledger

pytestmark = pytest.mark.usefixtures("ledger_target")

_START = ns_from_datetime(BASE, "start")
_DAY = 86_400 * 1_000_000_000


def _is_pg(target: str) -> bool:
    return target.startswith(("postgresql://", "postgres://"))


def _record(
    n: int, *, days: int = 0, actor_id: str = "cust-1", customer: str = "c-9"
) -> EventRecord:
    return EventRecord(
        id=f"{n:016x}",
        trace_id=f"{n:032x}",
        parent_id=None,
        start_ns=_START + days * _DAY + n * 1_000_000,
        duration_ns=1_000,
        event_type="order.refunded",
        description=f"Refund {n} issued",
        actor_type="user",
        actor_id=actor_id,
        actor_name="Ann",
        actor_json='{"email": "ann@example.com", "role": "buyer"}',
        reasoning="Parcel arrived crushed",
        decision_json='{"context": {"score": 0.25, "big": 1e16}, "confidence": 0.9}',
        object_types=("order", "customer"),
        object_ids=(f"ord-{n}", customer),
        objects_json='[{"type": "order", "id": "o", "state_before": {"status": "paid"}}]',
        tags=("support", "eu"),
        outcome="success",
        error=None,
        metadata_json='{"k": [1, 2.50, "x"]}',
        service_name="shop",
    )


@pytest.fixture
def ledger(ledger_target: str) -> Iterator[Ledger]:
    opened = open_ledger(ledger_target)
    yield opened
    opened.close()


class Raw:
    """Plain SQL on the ledger's own storage, behind the ledger's back (``?`` marks
    parameters on both backends)."""

    def __init__(self, target: str) -> None:
        self.pg = _is_pg(target)
        self.target = target

    @contextmanager
    def open(self) -> Iterator[Raw]:
        if self.pg:
            with psycopg.connect(self.target, autocommit=True) as conn:
                self._pg = conn
                yield self
        else:
            conn = sqlite3.connect(self.target, isolation_level=None)
            try:
                self._lite = conn
                yield self
            finally:
                conn.close()

    def run(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        if self.pg:
            cursor = self._pg.execute(sql.replace("?", "%s"), params)  # type: ignore[call-overload]
            return cursor.fetchall() if cursor.description is not None else []
        return self._lite.execute(sql, params).fetchall()

    @property
    def key(self) -> str:
        """The column that numbers event rows."""
        return "seq" if self.pg else "rowid"


@contextmanager
def raw(target: str) -> Iterator[Raw]:
    with Raw(target).open() as conn:
        yield conn


def _only(report: VerifyReport) -> Problem:
    assert report.problem_count == 1, report.problems
    return report.problems[0]


# -- an honest ledger -------------------------------------------------------------------


def test_a_fresh_ledger_verifies_with_its_counts(ledger: Ledger) -> None:
    assert ledger.verify().ok
    assert ledger.chain_state().entries == 0
    assert ledger.write([_record(n) for n in range(1, 6)]) == 5
    assert ledger.write([_record(3), _record(6)]) == 1  # a stored id is skipped, not chained
    report = ledger.verify()
    assert report.ok, report.problems
    assert (report.entries, report.events, report.erased, report.pruned) == (6, 6, 0, 0)
    state = ledger.chain_state()
    assert (state.position, state.entries, state.hash) == (6, 6, report.head_hash)
    assert state.ledger_id


def test_chain_state_advances_with_writes_and_acts(ledger: Ledger) -> None:
    ledger.write([_record(1)])
    first = ledger.chain_state()
    ledger.write([_record(2), _record(3)])
    second = ledger.chain_state()
    assert (second.position, second.entries) == (first.position + 2, first.entries + 2)
    assert second.hash != first.hash and second.ledger_id == first.ledger_id
    ledger.erase("user", "cust-1", reason="asked", requested_by="dpo")
    third = ledger.chain_state()
    assert (third.position, third.entries) == (second.position + 1, second.entries + 1)


def test_erasure_is_reported_as_erased(ledger: Ledger) -> None:
    ledger.write([_record(1), _record(2, actor_id="cust-2", customer="c-1"), _record(3)])
    dry = ledger.erase("user", "cust-1", reason="GDPR art. 17", requested_by="dpo", dry_run=True)
    assert (dry.events, dry.position) == (2, None)
    assert ledger.verify().erased == 0
    report = ledger.erase("user", "cust-1", reason="GDPR art. 17", requested_by="dpo")
    assert report.events == 2 and report.position == 4
    assert report.event_ids == (f"{1:016x}", f"{3:016x}")
    erased = ledger.get_event(f"{1:016x}")
    assert erased is not None and erased.description == "" and erased.tags == ()
    assert erased.actor is not None and erased.actor.id == report.pseudonym
    by_object = ledger.erase("customer", "c-1", reason="closed", requested_by="dpo")
    assert by_object.events == 1
    verified = ledger.verify()
    assert verified.ok, verified.problems
    assert (verified.events, verified.erased) == (0, 3)
    assert [act.kind for act in verified.acts] == ["erasure", "erasure"]
    assert ledger.erase("user", "cust-1", reason="again", requested_by="dpo").events == 0


def test_prunes_are_reported_as_such(ledger: Ledger) -> None:
    ledger.write([_record(n, days=40 * (n - 1)) for n in range(1, 5)])  # four months
    cutoff = _START + 41 * _DAY  # after the first two events
    dry = ledger.prune(cutoff, dry_run=True, keep_skeleton=True)
    assert dry.events == 2
    kept = ledger.prune(cutoff, keep_skeleton=True)
    assert (kept.events, kept.kept_skeleton) == (2, True)
    report = ledger.verify()
    assert report.ok, report.problems
    assert (report.events, report.payload_pruned, report.pruned) == (2, 2, 0)
    assert ledger.prune(cutoff, keep_skeleton=True).events == 0  # nothing left to strip
    gone = ledger.prune(_START + 81 * _DAY)  # the first three, whole
    assert gone.events == 3
    report = ledger.verify()
    assert report.ok, report.problems
    assert (report.events, report.payload_pruned, report.pruned) == (1, 0, 3)
    assert [act.kind for act in report.acts] == ["prune-payload", "prune"]
    assert ledger.count_object_history("c-9") == 1


def test_checkpoints_are_reached_or_reported(ledger: Ledger) -> None:
    ledger.write([_record(n) for n in range(1, 4)])
    state = ledger.chain_state()
    checkpoint = Checkpoint(state.ledger_id, state.position, state.entries, state.hash, 1)
    ledger.write([_record(4)])
    report = ledger.verify(checkpoints=[checkpoint])
    assert report.ok and report.checkpoints_checked == 1
    ahead = replace(checkpoint, position=state.position + 5, entries=state.entries + 5)
    problem = _only(ledger.verify(checkpoints=[ahead]))
    assert (problem.kind, problem.position) == ("checkpoint", ahead.position)
    rewritten = replace(checkpoint, hash=bytes(32))
    assert _only(ledger.verify(checkpoints=[rewritten])).kind == "checkpoint"


def test_concurrent_writers_make_one_valid_chain(ledger_target: str, ledger: Ledger) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def write(worker: int) -> None:
        own = open_ledger(ledger_target)
        try:
            barrier.wait()
            for batch in range(10):
                base = 1 + worker * 1000 + batch * 10
                own.write([_record(n) for n in range(base, base + 5)])
        except BaseException as exc:
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    report = ledger.verify()
    assert report.ok, report.problems
    assert report.entries == report.events == 200


def test_writers_in_two_processes_make_one_valid_chain(ledger_target: str, ledger: Ledger) -> None:
    if not _is_pg(ledger_target):
        pytest.skip(
            "SQLite's writer processes are tested in tests/reliability/test_rel_integrity.py"
            "::test_four_processes_make_one_chain"
        )
    script = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[3])
        from test_chain_contract import _record
        from decision_trace.storage import open_ledger
        ledger = open_ledger(sys.argv[1])
        first = int(sys.argv[2])
        for batch in range(20):
            ledger.write([_record(n) for n in range(first + batch * 5, first + batch * 5 + 5)])
        ledger.close()
        """
    )
    here = str(__import__("pathlib").Path(__file__).parent)
    procs = [
        subprocess.Popen([sys.executable, "-c", script, ledger_target, str(first), here])
        for first in (1, 100_000)
    ]
    assert [proc.wait(timeout=120) for proc in procs] == [0, 0]
    report = ledger.verify()
    assert report.ok, report.problems
    assert report.entries == report.events == 200


# -- tampering behind the ledger's back ---------------------------------------------------


@pytest.fixture
def written(ledger: Ledger) -> list[str]:
    """Five events stored; their ids in commit order."""
    records = [_record(n) for n in range(1, 6)]
    ledger.write(records)
    assert ledger.verify().ok
    return [r.id for r in records]


def test_an_edited_reasoning_is_found(
    ledger_target: str, ledger: Ledger, written: list[str]
) -> None:
    with raw(ledger_target) as db:
        db.run("UPDATE events SET reasoning = 'parcel arrived crushed' WHERE id = ?", [written[2]])
    problem = _only(ledger.verify())
    assert (problem.kind, problem.event_id, problem.position) == ("changed", written[2], 3)


def test_an_edited_state_is_found(ledger_target: str, ledger: Ledger, written: list[str]) -> None:
    with raw(ledger_target) as db:
        cast = "::text" if db.pg else ""
        back = "::jsonb" if db.pg else ""
        db.run(
            f"UPDATE events SET objects_json = replace(objects_json{cast}, 'paid', 'paiD'){back} "
            "WHERE id = ?",
            [written[1]],
        )
    problem = _only(ledger.verify())
    assert (problem.kind, problem.event_id) == ("changed", written[1])


def test_an_edited_start_time_is_found(
    ledger_target: str, ledger: Ledger, written: list[str]
) -> None:
    with raw(ledger_target) as db:
        db.run("UPDATE events SET start_ns = start_ns + 1 WHERE id = ?", [written[0]])
    problem = _only(ledger.verify())
    assert (problem.kind, problem.event_id) == ("changed", written[0])


def test_a_deleted_row_is_found(ledger_target: str, ledger: Ledger, written: list[str]) -> None:
    with raw(ledger_target) as db:
        db.run("DELETE FROM events WHERE id = ?", [written[3]])
    problem = _only(ledger.verify())
    assert (problem.kind, problem.event_id, problem.position) == ("deleted", written[3], 4)


def test_a_forged_row_is_found(ledger_target: str, ledger: Ledger, written: list[str]) -> None:
    forged = "f" * 16
    with raw(ledger_target) as db:
        columns = [*EVENT_COLUMNS[1:], "salt", *(["payload"] if db.pg else [])]
        chosen = ", ".join("?" if c == "id" else c for c in columns)
        db.run(
            f"INSERT INTO events ({', '.join(columns)}) SELECT {chosen} FROM events WHERE id = ?",
            [forged, written[4]],
        )
    problem = _only(ledger.verify())
    assert (problem.kind, problem.event_id) == ("inserted", forged)


def test_two_swapped_rows_are_found(ledger_target: str, ledger: Ledger, written: list[str]) -> None:
    with raw(ledger_target) as db:
        key = db.key
        a, b = (
            db.run(f"SELECT {key} FROM events WHERE id = ?", [written[i]])[0][0] for i in (1, 3)
        )
        db.run(f"UPDATE events SET {key} = -1 WHERE {key} = ?", [a])
        db.run(f"UPDATE events SET {key} = ? WHERE {key} = ?", [a, b])
        db.run(f"UPDATE events SET {key} = ? WHERE {key} = -1", [b])
    report = ledger.verify()
    assert {(p.kind, p.event_id) for p in report.problems} == {
        ("reordered", written[1]),
        ("reordered", written[3]),
    }


def test_postgres_jsonb_edited_alone_is_found(
    ledger_target: str, ledger: Ledger, written: list[str]
) -> None:
    if not _is_pg(ledger_target):
        pytest.skip("only PostgreSQL keeps a hashed copy of the payload")
    with raw(ledger_target) as db:
        db.run(
            "UPDATE events SET decision_json = jsonb_set(decision_json, '{confidence}', '0.1') "
            "WHERE id = ?",
            [written[2]],
        )
    problem = _only(ledger.verify())
    assert (problem.kind, problem.event_id) == ("changed", written[2])
    assert "decision_json" in problem.detail


def test_postgres_edited_payload_copy_is_found(
    ledger_target: str, ledger: Ledger, written: list[str]
) -> None:
    if not _is_pg(ledger_target):
        pytest.skip("only PostgreSQL keeps a hashed copy of the payload")
    with raw(ledger_target) as db:
        # Still the same values (the columns agree with it): only the commitment tells.
        db.run(
            "UPDATE events SET payload = replace(payload, '\"dt-payload-1\",', "
            "'\"dt-payload-1\" ,') WHERE id = ?",
            [written[0]],
        )
    problem = _only(ledger.verify())
    assert (problem.kind, problem.event_id) == ("changed", written[0])
    assert "content" in problem.detail


def test_postgres_numbers_jsonb_respells_still_verify(ledger_target: str, ledger: Ledger) -> None:
    if not _is_pg(ledger_target):
        pytest.skip("jsonb is PostgreSQL's")
    record = replace(
        _record(1),
        decision_json='{"b": 1e+16, "a": 1.50, "z": -0.0, "u": "\\u00e9\\u0000"}',
        description="nul \x00 here",
    )
    ledger.write([record])
    report = ledger.verify()
    assert report.ok, report.problems
    assert report.events == 1


def test_prune_before_a_date_keeps_later_chain_valid(ledger: Ledger) -> None:
    ledger.write([_record(1), _record(2, days=60)])
    ledger.prune(_START + timedelta(days=30).days * _DAY)
    ledger.write([_record(3, days=61)])
    report = ledger.verify()
    assert report.ok, report.problems
    assert (report.events, report.pruned) == (2, 1)
