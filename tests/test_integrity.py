"""The tamper-evident chain on SQLite (issue 17): what ``verify`` finds when a ledger file
is edited with plain ``sqlite3`` (each kind of edit, on a copy), signed checkpoints,
adoption of a schema-3 ledger, erasure, prune with and without ``keep_skeleton``, and
that an erased subject's bytes leave the file once it is compacted."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from secrets import token_hex
from typing import Any

import pytest
from ledger_versions import make_older_ledger

from decision_trace import DecisionTraceClient, StoreError
from decision_trace import integrity as it
from decision_trace._rows import EVENT_COLUMNS
from decision_trace.checkpoint import (
    format_checkpoint,
    generate_key_pair,
    load_private_key,
    load_public_key,
    read_checkpoint_file,
    write_checkpoint_file,
)
from decision_trace.errors import InvalidInputError, UnshippedEventsError
from decision_trace.record import ns_from_datetime
from decision_trace.storage import EventFilters, Ledger, open_ledger

START = datetime(2026, 3, 1, tzinfo=timezone.utc)
COUNT = 12
CUSTOMER = "c-alice"
USER = "u-bob"


def _at(i: int) -> datetime:
    return START + timedelta(hours=i)


@dataclass(frozen=True)
class Built:
    path: Path
    ids: list[str]
    """Event ids by position (``ids[p - 1]`` is at position ``p``)."""


def _record(client: DecisionTraceClient, i: int) -> str:
    """Event ``i``: the customer is on every third event, the user acts on every fourth."""
    builder = client.trace("order.refunded", f"Refund {i}")
    if i % 4 == 1:
        builder.by_user(USER, "Bob Example", email="bob@example.org")
    elif i % 2:
        builder.by_ai_agent(f"agent-{i}", "Pricing Agent", model="gpt-4o")
    else:
        builder.by_user(f"user-{i}", f"User {i}")
    builder.affecting_order(f"ord-{i}", {"status": "refunded", "total": 10 + i})
    if i % 3 == 0:
        builder.affecting("customer", CUSTOMER, {"tier": "gold"})
    builder.because(f"reasoning number {i} about the refund", context={"n": i})
    builder.with_tags("refund", f"t{i}").with_metadata(note=f"note {i}").at(_at(i))
    return builder.record()


def _positions(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM events ORDER BY rowid")]


def _build(path: Path, count: int = COUNT) -> Built:
    with DecisionTraceClient(db_path=path) as client:
        for i in range(count):
            _record(client, i)
    return Built(path, _positions(path))


@pytest.fixture
def built(tmp_path: Path) -> Built:
    return _build(tmp_path / "ledger.db")


def _copy(path: Path, folder: Path) -> Path:
    folder.mkdir()
    for suffix in ("", "-wal"):
        if Path(f"{path}{suffix}").exists():
            shutil.copy(f"{path}{suffix}", f"{folder / path.name}{suffix}")
    return folder / path.name


def _tamper(path: Path, *statements: str, params: tuple[Any, ...] = ()) -> None:
    conn = sqlite3.connect(path)
    try:
        for statement in statements:
            conn.execute(statement, params if "?" in statement else ())
        conn.commit()
    finally:
        conn.close()


def _verify(path: Path, checkpoints: tuple[it.Checkpoint, ...] = ()) -> it.VerifyReport:
    ledger = open_ledger(path, read_only=True)
    try:
        return ledger.verify(checkpoints=checkpoints)
    finally:
        ledger.close()


@pytest.fixture
def ledger(built: Built) -> Iterator[Ledger]:
    opened = open_ledger(built.path)
    try:
        yield opened
    finally:
        opened.close()


def _kinds(report: it.VerifyReport) -> list[tuple[str, int, str | None]]:
    return [(p.kind, p.position, p.event_id) for p in report.problems]


# --- a clean ledger ------------------------------------------------------------------------


def test_a_clean_ledger_verifies_with_its_counts(built: Built) -> None:
    report = _verify(built.path)
    assert report.ok, report.problems
    assert (report.entries, report.events, report.erased, report.pruned) == (COUNT, COUNT, 0, 0)
    assert report.head_position == COUNT and report.problems == () and report.acts == ()
    ledger = open_ledger(built.path, read_only=True)
    try:
        state = ledger.chain_state()
    finally:
        ledger.close()
    assert (state.position, state.entries, state.hash) == (COUNT, COUNT, report.head_hash)
    assert state.ledger_id


# --- tampering with plain sqlite3, on a copy ------------------------------------------------


def test_one_character_of_reasoning(built: Built, tmp_path: Path) -> None:
    copy = _copy(built.path, tmp_path / "copy")
    _tamper(
        copy,
        "UPDATE events SET reasoning = 'R' || substr(reasoning, 2) WHERE rowid = 5",
    )
    report = _verify(copy)
    assert report.ok is False
    assert _kinds(report) == [("changed", 5, built.ids[4])]
    assert report.events == COUNT - 1
    assert _verify(built.path).ok  # the original is untouched


def test_one_character_of_an_object_state(built: Built, tmp_path: Path) -> None:
    copy = _copy(built.path, tmp_path / "copy")
    with sqlite3.connect(copy) as conn:
        (before,) = conn.execute("SELECT objects_json FROM events WHERE rowid = 3").fetchone()
    assert '"refunded"' in before
    _tamper(
        copy,
        "UPDATE events SET objects_json = ? WHERE rowid = 3",
        params=(before.replace('"refunded"', '"refundeD"'),),
    )
    report = _verify(copy)
    assert report.ok is False
    assert _kinds(report) == [("changed", 3, built.ids[2])]


def test_an_object_id_in_event_objects(built: Built, tmp_path: Path) -> None:
    copy = _copy(built.path, tmp_path / "copy")
    _tamper(copy, "UPDATE event_objects SET external_id = 'ord-X' WHERE event_rowid = 2")
    report = _verify(copy)
    assert _kinds(report) == [("changed", 2, built.ids[1])]


def test_a_timestamp(built: Built, tmp_path: Path) -> None:
    copy = _copy(built.path, tmp_path / "copy")
    _tamper(copy, "UPDATE events SET start_ns = start_ns + 1 WHERE rowid = 7")
    report = _verify(copy)
    assert report.ok is False
    assert _kinds(report) == [("changed", 7, built.ids[6])]
    assert "time" in report.problems[0].detail


def test_a_deleted_row(built: Built, tmp_path: Path) -> None:
    copy = _copy(built.path, tmp_path / "copy")
    _tamper(
        copy,
        "DELETE FROM event_objects WHERE event_rowid = 4",
        "DELETE FROM event_tags WHERE event_rowid = 4",
        "DELETE FROM events WHERE rowid = 4",
    )
    report = _verify(copy)
    assert report.ok is False
    assert _kinds(report) == [("deleted", 4, built.ids[3])]


def test_a_deleted_row_and_its_chain_entry_break_the_chain(built: Built, tmp_path: Path) -> None:
    copy = _copy(built.path, tmp_path / "copy")
    _tamper(
        copy,
        "DELETE FROM event_objects WHERE event_rowid = 4",
        "DELETE FROM events WHERE rowid = 4",
        "DELETE FROM chain WHERE position = 4",
    )
    report = _verify(copy)
    assert report.ok is False
    assert _kinds(report) == [("broken", 5, built.ids[4])]


def test_a_forged_row(built: Built, tmp_path: Path) -> None:
    copy = _copy(built.path, tmp_path / "copy")
    columns = ", ".join(c for c in EVENT_COLUMNS if c != "rowid")
    _tamper(
        copy,
        f"INSERT INTO events ({columns}, salt) SELECT 'f0f0f0f0f0f0f0f0', "
        f"{columns.split(', ', 1)[1]}, salt FROM events WHERE rowid = 2",
    )
    with sqlite3.connect(copy) as conn:
        (forged_at,) = conn.execute(
            "SELECT rowid FROM events WHERE id = 'f0f0f0f0f0f0f0f0'"
        ).fetchone()
    assert forged_at == COUNT + 1
    report = _verify(copy)
    assert report.ok is False
    assert _kinds(report) == [("inserted", COUNT + 1, "f0f0f0f0f0f0f0f0")]


def test_two_rows_swapped(built: Built, tmp_path: Path) -> None:
    copy = _copy(built.path, tmp_path / "copy")
    swap = [
        f"UPDATE {table} SET {col} = {new} WHERE {col} = {old}"
        for old, new in ((3, -3), (8, 3), (-3, 8))
        for table, col in (("events", "rowid"), ("event_objects", "event_rowid"))
    ]
    _tamper(copy, *swap)
    assert _positions(copy)[2] == built.ids[7]
    report = _verify(copy)
    assert report.ok is False
    assert _kinds(report) == [("reordered", 3, built.ids[7]), ("reordered", 8, built.ids[2])]
    assert "position 8" in report.problems[0].detail


def test_a_null_salt_without_an_erasure(built: Built, tmp_path: Path) -> None:
    copy = _copy(built.path, tmp_path / "copy")
    _tamper(copy, "UPDATE events SET salt = NULL, reasoning = NULL WHERE rowid = 6")
    report = _verify(copy)
    assert report.ok is False
    assert _kinds(report) == [("erased-unrecorded", 6, built.ids[5])]


def test_an_acts_body_edited(ledger: Ledger, built: Built, tmp_path: Path) -> None:
    erased = ledger.erase("customer", CUSTOMER, reason="GDPR art. 17", requested_by="dpo")
    assert erased.position == COUNT + 1
    ledger.close()
    copy = _copy(built.path, tmp_path / "copy")
    _tamper(copy, "UPDATE chain SET body = replace(body, 'art. 17', 'art. 18') WHERE kind = 1")
    report = _verify(copy)
    assert report.ok is False
    assert _kinds(report) == [("changed", COUNT + 1, None)]


def test_an_erasure_widened_to_hide_a_payload(ledger: Ledger, built: Built, tmp_path: Path) -> None:
    """Adding a position to an erasure's record, to pass off a removed payload as erased,
    changes the act."""
    erased = ledger.erase("customer", CUSTOMER, reason="request", requested_by="dpo")
    ledger.close()
    assert 2 not in [built.ids.index(e) + 1 for e in erased.event_ids]
    copy = _copy(built.path, tmp_path / "copy")
    _tamper(
        copy,
        "UPDATE chain SET body = replace(body, '\"positions\":[', '\"positions\":[2,') "
        "WHERE kind = 1",
        "UPDATE events SET salt = NULL, reasoning = NULL WHERE rowid = 2",
    )
    report = _verify(copy)
    assert report.ok is False
    assert ("changed", COUNT + 1, None) in _kinds(report)


# --- what only a checkpoint catches ------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "keys"
    folder.mkdir()
    return generate_key_pair(folder / "ledger.key")


def _signed_checkpoint(path: Path, keys: tuple[Path, Path], folder: Path) -> it.Checkpoint:
    """Take a checkpoint of the ledger now, sign it, write it to a file, read it back and
    check its signature (as an auditor later would)."""
    ledger = open_ledger(path, read_only=True)
    try:
        state = ledger.chain_state()
    finally:
        ledger.close()
    checkpoint = it.Checkpoint(
        ledger_id=state.ledger_id,
        position=state.position,
        entries=state.entries,
        hash=state.hash,
        at_ns=time.time_ns(),
    )
    folder.mkdir(exist_ok=True)
    text = format_checkpoint(checkpoint, load_private_key(keys[0]))
    written = write_checkpoint_file(folder, text)
    return read_checkpoint_file(written, load_public_key(keys[1]))


def test_a_clean_ledger_reaches_its_checkpoint(
    built: Built, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    checkpoint = _signed_checkpoint(built.path, keys, tmp_path / "checkpoints")
    assert (checkpoint.position, checkpoint.entries) == (COUNT, COUNT)
    with DecisionTraceClient(db_path=built.path) as client:
        _record(client, COUNT)  # the ledger goes on past the checkpoint
    report = _verify(built.path, (checkpoint,))
    assert report.ok, report.problems
    assert (report.checkpoints_checked, report.events) == (1, COUNT + 1)


def test_a_truncated_tail_is_found_only_with_a_checkpoint(
    built: Built, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    checkpoint = _signed_checkpoint(built.path, keys, tmp_path / "checkpoints")
    copy = _copy(built.path, tmp_path / "copy")
    _tamper(
        copy,
        "DELETE FROM event_objects WHERE event_rowid > 10",
        "DELETE FROM event_tags WHERE event_rowid > 10",
        "DELETE FROM events WHERE rowid > 10",
        "DELETE FROM chain WHERE position > 10",
    )
    without = _verify(copy)
    assert without.ok and without.events == 10  # the chain alone cannot tell
    report = _verify(copy, (checkpoint,))
    assert report.ok is False
    assert _kinds(report) == [("checkpoint", COUNT, None)]
    assert "truncated or rebuilt" in report.problems[0].detail


def _rebuild_chain(path: Path) -> None:
    """What a forger without the signing key can do: recompute every chain entry from the
    rows as they now are, with the chain's public functions."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(f"SELECT {', '.join(EVENT_COLUMNS)}, salt FROM events ORDER BY rowid")
        previous = it.GENESIS
        updates = []
        for row in rows.fetchall():
            links = conn.execute(
                "SELECT object_type, external_id FROM event_objects WHERE event_rowid = ? "
                "ORDER BY position",
                (row[0],),
            ).fetchall()
            types = [t for t, _ in links]
            ids = [i for _, i in links]
            skeleton, commitment = it.row_digests(row[:-1], types, ids, bytes.fromhex(row[-1]))
            assert commitment is not None
            previous = it.entry_hash(previous, row[0], it.KIND_EVENT, row[4], skeleton, commitment)
            updates.append((skeleton.hex(), commitment.hex(), previous.hex(), row[0]))
        conn.executemany(
            "UPDATE chain SET skeleton = ?, commitment = ?, hash = ? WHERE position = ?", updates
        )
        conn.commit()
    finally:
        conn.close()


def test_a_rebuilt_chain_is_found_only_with_a_checkpoint(
    built: Built, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    checkpoint = _signed_checkpoint(built.path, keys, tmp_path / "checkpoints")
    copy = _copy(built.path, tmp_path / "copy")
    _tamper(copy, "UPDATE events SET reasoning = 'it was never refunded' WHERE rowid = 2")
    assert _kinds(_verify(copy)) == [("changed", 2, built.ids[1])]
    _rebuild_chain(copy)
    without = _verify(copy)
    assert without.ok and without.events == COUNT  # consistent again, forged
    report = _verify(copy, (checkpoint,))
    assert report.ok is False
    assert _kinds(report) == [("checkpoint", COUNT, None)]
    assert "rewritten after the checkpoint" in report.problems[0].detail


# --- a ledger of schema 3 -------------------------------------------------------------------


def test_a_schema_3_ledger_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    built = _build(path, 5)
    make_older_ledger(path, 3)
    reading = open_ledger(path, read_only=True)
    try:
        with pytest.raises(StoreError, match=r"no chain yet.*open it writable once"):
            reading.verify()
        with pytest.raises(StoreError, match="no chain yet"):
            reading.chain_state()
    finally:
        reading.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    with DecisionTraceClient(db_path=path) as client:  # migrates
        _record(client, 5)
    report = _verify(path)
    assert report.ok, report.problems
    (adopt,) = report.acts
    assert adopt.kind == "adopt" and adopt.position == 6
    assert (adopt.body["events"], adopt.body["up_to"]) == (5, 5)
    assert (report.entries, report.events, report.head_position) == (7, 6, 7)
    assert _positions(path)[:5] == built.ids
    assert _positions(path)[5] not in built.ids


# --- erasure ----------------------------------------------------------------------------


def _rows(path: Path, where: str) -> dict[str, tuple[Any, ...]]:
    """Every stored byte of the matching events (their row, object rows and tags)."""
    with sqlite3.connect(path) as conn:
        out = {}
        for row in conn.execute(f"SELECT rowid, *, salt FROM events WHERE {where}"):
            objects = conn.execute(
                "SELECT * FROM event_objects WHERE event_rowid = ? ORDER BY position", (row[0],)
            ).fetchall()
            tags = conn.execute(
                "SELECT * FROM event_tags WHERE event_rowid = ? ORDER BY tag", (row[0],)
            ).fetchall()
            out[row[1]] = (row, objects, tags)
        return out


def _involving(ids: list[str], pick: Any) -> list[str]:
    return [event_id for i, event_id in enumerate(ids) if pick(i)]


@pytest.mark.parametrize(
    ("subject_type", "subject_id", "pick"),
    [
        ("customer", CUSTOMER, lambda i: i % 3 == 0),
        ("user", USER, lambda i: i % 4 == 1),
    ],
    ids=["customer", "user"],
)
def test_erasure_strips_exactly_the_subjects_events(
    ledger: Ledger, built: Built, subject_type: str, subject_id: str, pick: Any
) -> None:
    involved = _involving(built.ids, pick)
    before = {e: ledger.get_event(e) for e in built.ids}
    quoted = ",".join(f"'{e}'" for e in involved)
    others = _rows(built.path, f"id NOT IN ({quoted})")
    report = ledger.erase(subject_type, subject_id, reason="GDPR art. 17", requested_by="dpo")
    assert report.event_ids == tuple(involved) and report.events == len(involved)
    assert report.position == COUNT + 1 and report.subject_type == subject_type
    assert report.pseudonym.startswith("erased-") and subject_id not in report.pseudonym
    assert _rows(built.path, f"id NOT IN ({quoted})") == others  # byte-identical
    for event_id in involved:
        old, new = before[event_id], ledger.get_event(event_id)
        assert old is not None and new is not None
        assert (new.id, new.timestamp, new.event_type, new.outcome) == (
            old.id,
            old.timestamp,
            old.event_type,
            old.outcome,
        )
        assert new.actor.type == old.actor.type
        assert [o.object_type for o in new.objects] == [o.object_type for o in old.objects]
        assert new.description == "" and new.decision is None and new.tags == ()
        assert new.metadata == {} and new.actor.name is None and new.actor.email is None
        assert new.actor.id.startswith("erased-") and new.actor.id != old.actor.id
        for o in new.objects:
            assert o.external_id.startswith("erased-") and o.state == {}
        if subject_type == "customer":
            (customer,) = [o for o in new.objects if o.object_type == "customer"]
            assert customer.external_id == report.pseudonym
        else:
            assert new.actor.id == report.pseudonym
    with sqlite3.connect(built.path) as conn:
        quoted_rowids = ",".join(str(built.ids.index(e) + 1) for e in involved)
        assert conn.execute(
            f"SELECT count(*) FROM event_tags WHERE event_rowid IN ({quoted_rowids})"
        ).fetchone() == (0,)
        assert conn.execute(
            f"SELECT count(*) FROM events WHERE salt IS NULL AND rowid IN ({quoted_rowids})"
        ).fetchone() == (len(involved),)
    if subject_type == "customer":
        assert ledger.object_history(subject_id, subject_type) == []
    result = ledger.verify()
    assert result.ok, result.problems
    assert (result.erased, result.events, result.entries) == (
        len(involved),
        COUNT - len(involved),
        COUNT + 1,
    )
    (act,) = result.acts
    assert act.kind == "erasure" and act.body["subject"] == report.pseudonym
    assert act.body["positions"] == [built.ids.index(e) + 1 for e in involved]
    assert act.body["reason"] == "GDPR art. 17" and subject_id not in str(act.body)


def test_the_same_subject_keeps_its_pseudonym(ledger: Ledger, built: Built) -> None:
    """A user and a customer erased one after the other: events of both get both
    pseudonyms, and a second erasure of the user finds nothing."""
    first = ledger.erase("user", USER, reason="r", requested_by="dpo")
    second = ledger.erase("customer", CUSTOMER, reason="r", requested_by="dpo")
    # Events already erased for the user are not erased again for the customer.
    assert set(first.event_ids).isdisjoint(second.event_ids)
    state = ledger.chain_state()
    again = ledger.erase("user", USER, reason="r", requested_by="dpo")
    assert (again.events, again.event_ids, again.position) == (0, (), None)
    assert again.pseudonym == first.pseudonym
    assert ledger.chain_state() == state
    report = ledger.verify()
    assert report.ok and report.erased == len(first.event_ids) + len(second.event_ids)


def test_a_dry_run_erasure_changes_nothing(ledger: Ledger, built: Built) -> None:
    everything = _rows(built.path, "true")
    state = ledger.chain_state()
    report = ledger.erase("customer", CUSTOMER, reason="r", requested_by="dpo", dry_run=True)
    assert report.events == len(_involving(built.ids, lambda i: i % 3 == 0))
    assert report.position is None
    assert _rows(built.path, "true") == everything
    assert ledger.chain_state() == state
    assert ledger.verify().events == COUNT


def test_an_erasure_of_nobody_finds_nothing(ledger: Ledger) -> None:
    report = ledger.erase("customer", "c-nobody", reason="r", requested_by="dpo")
    assert (report.events, report.position) == (0, None)
    assert ledger.chain_state().entries == COUNT


@pytest.mark.parametrize(
    ("subject_type", "subject_id", "reason", "requested_by"),
    [
        ("planet", "x", "r", "dpo"),
        ("", "x", "r", "dpo"),
        ("customer", "", "r", "dpo"),
        ("customer", CUSTOMER, "", "dpo"),
        ("customer", CUSTOMER, "   ", "dpo"),
        ("customer", CUSTOMER, "r", ""),
    ],
)
def test_an_erasure_needs_a_subject_and_a_reason(
    ledger: Ledger, subject_type: str, subject_id: str, reason: str, requested_by: str
) -> None:
    with pytest.raises(InvalidInputError):
        ledger.erase(subject_type, subject_id, reason=reason, requested_by=requested_by)
    assert ledger.chain_state().entries == COUNT
    assert ledger.verify().events == COUNT


# --- prune -----------------------------------------------------------------------------------


def _cutoff(i: int) -> int:
    return ns_from_datetime(_at(i), "cutoff")


def test_prune_keeping_skeletons_is_recorded(ledger: Ledger, built: Built, tmp_path: Path) -> None:
    pruned = ledger.prune(_cutoff(5), keep_skeleton=True)
    assert (pruned.events, pruned.kept_skeleton) == (5, True)
    for event_id in built.ids[:5]:
        event = ledger.get_event(event_id)
        assert event is not None and event.decision is None and event.tags == ()
    report = ledger.verify()
    assert report.ok, report.problems
    assert (report.payload_pruned, report.events, report.erased) == (5, COUNT - 5, 0)
    assert [a.kind for a in report.acts] == ["prune-payload"]
    # Again: the stripped events are not counted twice.
    assert ledger.prune(_cutoff(5), keep_skeleton=True).events == 0
    ledger.close()
    # A payload removed past the cutoff, or a skeleton deleted, is still tampering.
    copy = _copy(built.path, tmp_path / "copy")
    _tamper(
        copy,
        "UPDATE events SET salt = NULL, reasoning = NULL WHERE rowid = 7",
        "DELETE FROM events WHERE rowid = 2",
    )
    assert _kinds(_verify(copy)) == [
        ("deleted", 2, built.ids[1]),
        ("erased-unrecorded", 7, built.ids[6]),
    ]


def test_prune_is_recorded(ledger: Ledger, built: Built, tmp_path: Path) -> None:
    assert ledger.prune(_cutoff(4)).events == 4
    for event_id in built.ids[:4]:
        assert ledger.get_event(event_id) is None
    report = ledger.verify()
    assert report.ok, report.problems
    assert (report.pruned, report.events, report.entries) == (4, COUNT - 4, COUNT + 1)
    assert [a.kind for a in report.acts] == ["prune"]
    assert report.acts[0].body["before_ns"] == _cutoff(4)
    # An event written after the prune with an old time is not covered by it.
    ledger.close()
    with DecisionTraceClient(db_path=built.path) as client:
        late = (
            client.trace("order.refunded", "backdated").by_system("s").at(_at(0) - timedelta(1))
        ).record()
    copy = _copy(built.path, tmp_path / "copy")
    _tamper(copy, "DELETE FROM events WHERE rowid IN (6, ?)", params=(COUNT + 2,))
    assert _kinds(_verify(copy)) == [("deleted", 6, built.ids[5]), ("deleted", COUNT + 2, late)]


def test_prune_refuses_unshipped_events_keeping_skeletons_too(ledger: Ledger, built: Built) -> None:
    assert ledger.register_destination("https://team.example") == 0
    everything = _rows(built.path, "true")
    for keep_skeleton in (True, False):
        with pytest.raises(UnshippedEventsError) as caught:
            ledger.prune(_cutoff(5), keep_skeleton=keep_skeleton)
        assert caught.value.unshipped == {"https://team.example": 5}
        dry = ledger.prune(_cutoff(5), keep_skeleton=keep_skeleton, dry_run=True)
        assert (dry.events, dry.unshipped) == (5, 5)
    assert _rows(built.path, "true") == everything
    assert ledger.chain_state().entries == COUNT
    assert ledger.prune(_cutoff(5), keep_skeleton=True, force=True).events == 5
    assert ledger.verify().payload_pruned == 5


# --- the bytes of an erased subject ----------------------------------------------------------


def _folder_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())


def test_erased_bytes_leave_the_file_after_compaction(tmp_path: Path) -> None:
    """2,000 events, the subject on 100 of them: after erase + compact, no byte of what
    the subject's events held is in the database, its -wal or -shm (markers are single
    FTS tokens, and their random tails are searched too, as the search index keeps terms
    prefix-compressed)."""
    folder = tmp_path / "ledger"
    path = folder / "ledger.db"
    tail = token_hex(12)
    markers = {
        kind: f"zq{kind}{tail}"
        for kind in ("actorname", "reasoning", "state", "metadata", "tag", "context")
    }
    email = f"zqmail{tail}@example.org"
    customer = f"zqcustomer{tail}"
    actor = f"zqactor{tail}"
    with DecisionTraceClient(db_path=path) as client:
        for i in range(2_000):
            builder = client.trace("order.refunded", f"Refund {i}")
            if i % 20 == 7:
                builder.by_user(actor, f"Ann {markers['actorname']}", email=email)
                builder.affecting("customer", customer, {"note": markers["state"]})
                builder.because(
                    f"the {markers['reasoning']} case",
                    context={"contact": email, "extra": markers["context"]},
                )
                builder.with_tags(markers["tag"]).with_metadata(note=markers["metadata"])
            else:
                builder.by_user(f"user-{i % 40}", f"User {i % 40}")
                builder.because(f"routine refund {i} policy {i % 13}", context={"n": i})
                builder.with_tags("refund")
            builder.affecting_order(f"ord-{i}", {"status": "refunded"})
            builder.record()
    secrets_ = [*markers.values(), email, customer, actor]
    data = _folder_bytes(folder)
    for secret in secrets_:
        assert secret.encode() in data, secret  # the scan can fail
    ledger = open_ledger(path)
    try:
        assert len(ledger.search(markers["reasoning"], limit=None)) == 100
        report = ledger.erase("customer", customer, reason="GDPR art. 17", requested_by="dpo")
        assert report.events == 100
        assert ledger.compact() is True
        assert ledger.search(markers["reasoning"]) == []
        assert ledger.search(markers["context"]) == []
        assert ledger.verify().erased == 100
    finally:
        ledger.close()
    names = sorted(p.name for p in folder.iterdir())
    assert names[0] == "ledger.db"
    data = _folder_bytes(folder)
    found = [s for s in secrets_ if s.encode() in data]
    assert found == []
    assert tail.encode() not in data


# --- what verify does not see (yet) ---------------------------------------------------------


def test_a_tag_row_deleted(built: Built, tmp_path: Path) -> None:
    copy = _copy(built.path, tmp_path / "copy")
    _tamper(copy, "DELETE FROM event_tags WHERE event_rowid = 5 AND tag = 'refund'")
    ledger = open_ledger(copy, read_only=True)
    try:
        assert built.ids[4] not in [e.id for e in ledger.query(EventFilters(tags=("refund",)))]
        report = ledger.verify()
    finally:
        ledger.close()
    assert _kinds(report) == [("changed", 5, built.ids[4])]


def test_an_object_rows_time(built: Built, tmp_path: Path) -> None:
    copy = _copy(built.path, tmp_path / "copy")
    _tamper(
        copy, "UPDATE event_objects SET start_ns = start_ns + 86400000000000 WHERE event_rowid = 3"
    )
    report = _verify(copy)
    assert _kinds(report) == [("changed", 3, built.ids[2])]


def test_a_tag_row_added(built: Built, tmp_path: Path) -> None:
    copy = _copy(built.path, tmp_path / "copy")
    _tamper(copy, "INSERT INTO event_tags (tag, event_rowid) VALUES ('forged', 6)")
    assert _kinds(_verify(copy)) == [("changed", 6, built.ids[5])]


def test_sqlite_writes_the_canonical_bytes_of_every_code_point() -> None:
    """verify has SQLite's json_array make the canonical bytes (integrity.py makes them
    when writing): both must agree byte for byte on every character a row can hold (a
    disagreement would only slow verify down, since a mismatch is recomputed in Python,
    but it is checked here so the fast path stays the path taken)."""
    conn = sqlite3.connect(":memory:")
    try:
        points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
        for start in range(0, len(points), 4096):
            text = "".join(chr(c) for c in points[start : start + 4096])
            (made,) = conn.execute(
                "SELECT json_array('dt-payload-1', ?, NULL, -5, 9223372036854775807, '')",
                (text,),
            ).fetchone()
            assert (
                made.encode()
                == it.payload_bytes([text, None, -5, 2**63 - 1, ""], []).removesuffix(b",[]]")
                + b"]"
            )
    finally:
        conn.close()
