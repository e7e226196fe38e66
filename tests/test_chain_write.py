"""The SQLite write path's chain (``Store._write_batch`` and ``_write_each``): these
tests hold what it stores to what :mod:`decision_trace.integrity` computes from the
stored rows, for awkward text (control characters, quotes, backslashes,
non-ASCII, NUL, which takes the ``executemany`` path), empty and missing fields, objects
and tags."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decision_trace import integrity as it
from decision_trace._rows import EVENT_COLUMNS
from decision_trace.record import MAX_NS, MIN_NS, EventRecord
from decision_trace.storage import open_ledger
from decision_trace.store import Store, _event_row

_SETTINGS = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Text JSON must escape (quotes, backslashes, control characters, NUL), characters it
# keeps as UTF-8 (accents, CJK, emoji), and a literal backslash-u0000 (not a NUL).
_awkward = st.sampled_from(
    ['"', "\\", "\n", "\t", "\x01", "\x1f", "\x7f", "é", "中", "😀", "\u2028", "\\u0000", "/"]
)
_text = st.lists(st.one_of(st.text(max_size=4), _awkward), max_size=5).map("".join)
_text_nul = st.lists(st.one_of(_text, st.just("\x00")), max_size=3).map("".join)
_optional = st.one_of(st.none(), st.just(""), _text)
_json_text = st.one_of(
    st.none(),
    st.dictionaries(_text, st.one_of(st.none(), st.integers(), _text), max_size=3).map(
        lambda d: json.dumps(d, ensure_ascii=False)
    ),
)
_ns = st.one_of(st.integers(MIN_NS, MAX_NS), st.sampled_from([MIN_NS, MAX_NS, 0, -1]))


@st.composite
def _records(draw: st.DrawFn, text: st.SearchStrategy[str] = _text) -> list[EventRecord]:
    """A batch of records with distinct ids; ``text`` makes the free-text fields."""
    count = draw(st.integers(1, 6))
    records = []
    for i in range(count):
        types = tuple(draw(st.lists(st.sampled_from(["order", "customer", "ticket"]), max_size=3)))
        ids = tuple(draw(st.lists(text, max_size=3)))  # unpaired ones are dropped
        records.append(
            EventRecord(
                id=f"{i}-{draw(text)}",
                trace_id=draw(text),
                parent_id=draw(st.one_of(st.none(), text)),
                start_ns=draw(_ns),
                duration_ns=draw(_ns),
                event_type=draw(text),
                description=draw(text),
                actor_type=draw(st.one_of(st.none(), st.sampled_from(["user", "ai_agent"]))),
                actor_id=draw(st.one_of(st.none(), st.just(""), text)),
                actor_name=draw(st.one_of(st.none(), text)),
                actor_json=draw(_json_text),
                reasoning=draw(st.one_of(st.none(), text)),
                decision_json=draw(_json_text),
                object_types=types,
                object_ids=ids,
                objects_json=draw(_json_text),
                tags=tuple(draw(st.lists(text, max_size=3, unique=True))),
                outcome=draw(st.sampled_from(["success", "failure", "pending"])),
                error=draw(st.one_of(st.none(), text)),
                metadata_json=draw(_json_text),
                service_name=draw(st.one_of(st.none(), text)),
            )
        )
    return records


def _recomputed_chain(path: Path) -> list[tuple[Any, ...]]:
    """The chain rows :func:`integrity.link_events` gives for the stored rows, with the
    salts stored, recomputed from :func:`integrity.row_digests` and
    :func:`integrity.entry_hash` (every entry is an event's)."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            f"SELECT {', '.join(EVENT_COLUMNS)}, salt FROM events ORDER BY rowid"
        ).fetchall()
        links = conn.execute(
            "SELECT event_rowid, object_type, external_id FROM event_objects "
            "ORDER BY event_rowid, position"
        ).fetchall()
    finally:
        conn.close()
    previous = it.GENESIS
    chain = []
    for row in rows:
        types = [t for rowid, t, _ in links if rowid == row[0]]
        ids = [i for rowid, _, i in links if rowid == row[0]]
        skeleton, commitment = it.row_digests(row[:-1], types, ids, bytes.fromhex(row[-1]))
        assert commitment is not None
        previous = it.entry_hash(previous, row[0], it.KIND_EVENT, row[4], skeleton, commitment)
        chain.append(
            (
                row[0],
                it.KIND_EVENT,
                row[1],
                row[4],
                skeleton.hex(),
                commitment.hex(),
                previous.hex(),
            )
        )
    return chain


def _stored(path: Path) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    conn = sqlite3.connect(path)
    try:
        return (
            conn.execute(
                f"SELECT {', '.join(EVENT_COLUMNS)} FROM events ORDER BY rowid"
            ).fetchall(),
            conn.execute(
                "SELECT event_rowid, position, object_type, external_id, start_ns "
                "FROM event_objects ORDER BY event_rowid, position"
            ).fetchall(),
            conn.execute(
                "SELECT tag, event_rowid FROM event_tags ORDER BY event_rowid, tag"
            ).fetchall(),
            conn.execute(
                "SELECT position, kind, event_id, start_ns, skeleton, commitment, hash, body "
                "FROM chain ORDER BY position"
            ).fetchall(),
        )
    finally:
        conn.close()


def _expected(batches: Sequence[Sequence[EventRecord]]) -> tuple[list[Any], list[Any], list[Any]]:
    """The events, object and tag rows ``batches`` should leave, rowids from 1."""
    events, objects, tags = [], [], []
    rowid = 0
    for batch in batches:
        for r in batch:
            rowid += 1
            events.append(_event_row(rowid, r))
            pairs = list(zip(r.object_types, r.object_ids, strict=False))
            objects += [(rowid, n, t, i, r.start_ns) for n, (t, i) in enumerate(pairs)]
            tags += [(tag, rowid) for tag in r.tags]
    return events, objects, sorted(tags, key=lambda t: (t[1], t[0]))


def _write_and_check(path: Path, batches: Sequence[Sequence[EventRecord]]) -> None:
    store = Store(path)
    try:
        for batch in batches:
            assert store.write(batch) == len(batch)
    finally:
        store.close()
    events, objects, tags, chain = _stored(path)
    want_events, want_objects, want_tags = _expected(batches)
    # Every value stored as given (byte for byte: SQLite compares text exactly).
    assert [tuple(e) for e in events] == [tuple(e) for e in want_events]
    assert objects == want_objects
    assert tags == want_tags
    # The stored chain is exactly what integrity computes from the stored rows.
    assert all(body is None for *_, body in chain)
    assert [tuple(c[:7]) for c in chain] == _recomputed_chain(path)
    ledger = open_ledger(path, read_only=True)
    try:
        report = ledger.verify()
    finally:
        ledger.close()
    assert report.ok, report.problems
    assert report.events == len(events)


@_SETTINGS
@given(first=_records(), second=_records())
def test_the_batch_path_stores_the_chain_integrity_computes(
    tmp_path_factory: pytest.TempPathFactory, first: list[EventRecord], second: list[EventRecord]
) -> None:
    """Two batches (the second links to the first's last entry), through the one-text
    insert."""
    second = [_renamed(r, f"b{r.id}") for r in second]
    _write_and_check(tmp_path_factory.mktemp("chain") / "ledger.db", [first, second])


@_SETTINGS
@given(first=_records(_text_nul), second=_records())
def test_a_batch_with_a_nul_stores_the_same_chain(
    tmp_path_factory: pytest.TempPathFactory, first: list[EventRecord], second: list[EventRecord]
) -> None:
    """Text with a NUL (which SQLite's JSON functions cut at) goes in value by value; the
    chain is the same, and the next batch links to it."""
    first[0] = _renamed(first[0], "nul\x00id")
    second = [_renamed(r, f"b{r.id}") for r in second]
    _write_and_check(tmp_path_factory.mktemp("chain") / "ledger.db", [first, second])


def test_a_nul_in_any_field_stores_the_same_chain(tmp_path: Path) -> None:
    """A NUL in each free-text field in turn, in a batch with a record without one."""
    plain = _record("plain")
    for n, name in enumerate(
        ["description", "actor_id", "reasoning", "error", "service_name", "trace_id"]
    ):
        with_nul = _record(f"nul-{n}", **{name: f"a\x00{name}"})
        _write_and_check(tmp_path / f"{n}.db", [[plain, with_nul]])
    objects = _record("o", object_types=("order",), object_ids=("x\x00y",))
    _write_and_check(tmp_path / "objects.db", [[plain, objects]])


def test_a_stored_id_goes_record_by_record_and_still_chains(tmp_path: Path) -> None:
    """A batch holding an id already stored falls back to ``_write_each``: the chain
    continues from the batch path's entries and verifies."""
    path = tmp_path / "ledger.db"
    first = [_record("a"), _record("b", description='quote " and \\ and é')]
    store = Store(path)
    try:
        assert store.write(first) == 2
        assert store.write([_record("a"), _record("c", tags=("x", "y"))]) == 1
    finally:
        store.close()
    _, _, _, chain = _stored(path)
    assert [tuple(c[:7]) for c in chain] == _recomputed_chain(path)
    assert [c[2] for c in chain] == ["a", "b", "c"]


def _record(event_id: str, **changes: Any) -> EventRecord:
    values: dict[str, Any] = {
        "id": event_id,
        "trace_id": "t" * 32,
        "parent_id": None,
        "start_ns": 1_700_000_000_000_000_000,
        "duration_ns": 5,
        "event_type": "order.refunded",
        "description": "Refunded",
        "actor_type": "user",
        "actor_id": "u-1",
        "actor_name": "Ann",
        "actor_json": None,
        "reasoning": "because",
        "decision_json": '{"context":{"n":1}}',
        "object_types": ("order",),
        "object_ids": ("o-1",),
        "objects_json": None,
        "tags": ("refund",),
        "outcome": "success",
        "error": None,
        "metadata_json": None,
        "service_name": "shop",
    }
    values.update(changes)
    return EventRecord(**values)


def _renamed(r: EventRecord, event_id: str) -> EventRecord:
    import dataclasses

    return dataclasses.replace(r, id=event_id)


def test_tags_that_differ_after_a_nul_still_verify(tmp_path: Path) -> None:
    """SQLite's JSON functions cut strings at a NUL, so verify's whole-ledger tag check
    sees ``b<NUL>c`` and ``b<NUL>d`` as one tag and suspects the rows; the event is then
    checked in Python, exactly, and verifies."""
    _write_and_check(tmp_path / "ledger.db", [[_record("t", tags=("b\x00c", "b\x00d"))]])
