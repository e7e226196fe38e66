"""The SQLite store: location, permissions, schema, migrations."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from decision_trace import DecisionTraceClient, SchemaVersionError, StoreError
from decision_trace.storage import default_target, is_url, open_ledger
from decision_trace.store import SCHEMA_VERSION, Store, default_db_path


def test_default_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_db_path() == tmp_path / "home/.local/share/decision-trace/traces.db"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_db_path() == tmp_path / "xdg/decision-trace/traces.db"
    monkeypatch.setenv("DECISION_TRACE_DB", str(tmp_path / "explicit.db"))
    assert default_db_path() == tmp_path / "explicit.db"


def test_default_target_keeps_a_url_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_target() == str(tmp_path / "home/.local/share/decision-trace/traces.db")
    monkeypatch.setenv("DECISION_TRACE_DB", "~/ledgers/team.db")
    assert default_target() == str(tmp_path / "home/ledgers/team.db")
    url = "postgresql://writer@db.example:5432/audit?sslmode=require"
    monkeypatch.setenv("DECISION_TRACE_DB", url)
    assert default_target() == url  # default_db_path() would make it postgresql:/writer@...
    assert is_url(url) and is_url("Nosuch+v2.x-y://h") and is_url(Path("a.db")) is False
    for path in ("traces.db", "/tmp/x://y", "C:\\ledgers\\t.db", "1http://x", "://x"):
        assert not is_url(path), path


def test_everything_that_opens_the_default_ledger_keeps_a_url_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client, the exporter and ``open_ledger(None)`` give $DECISION_TRACE_DB's URL to
    the storage layer as it is (which has no such backend): never an SQLite file at a
    path made of the URL."""
    from decision_trace.exporters import SQLiteSpanExporter

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DECISION_TRACE_DB", "nosuch://db.example/audit")
    for open_default in (DecisionTraceClient, SQLiteSpanExporter, open_ledger):
        with pytest.raises(StoreError, match="nosuch://"):
            open_default()
    assert list(tmp_path.iterdir()) == []


def test_client_without_path_uses_default_and_creates_folders(tmp_path: Path) -> None:
    with DecisionTraceClient() as client:
        client.trace("t").record()
    expected = tmp_path / "home/.local/share/decision-trace/traces.db"
    assert expected.exists()
    assert stat.S_IMODE(expected.stat().st_mode) == 0o600
    assert stat.S_IMODE(expected.parent.stat().st_mode) == 0o700


def test_schema_integrity_and_indexes(
    make_client: Callable[..., DecisionTraceClient], db_path: Path
) -> None:
    client = make_client()
    client.trace("t").affecting_order("o").with_tags("x").because("why").record()
    client.close()
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"events", "event_objects", "event_tags", "events_fts"} <= names
    assert {
        "events_by_time",
        "events_by_type",
        "events_by_actor",
        "events_by_trace",
        "events_by_parent",
        "event_objects_by_object",
    } <= names
    assert conn.execute("INSERT INTO events_fts(events_fts) VALUES('integrity-check')")
    assert conn.execute("SELECT count(*) FROM event_objects").fetchone()[0] == 1
    assert conn.execute("SELECT tag FROM event_tags").fetchall() == [("x",)]


def test_newer_schema_is_a_clear_error(db_path: Path) -> None:
    Store(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaVersionError, match="upgrade decision-trace"):
        DecisionTraceClient(db_path=db_path)


def test_not_sqlite_and_foreign_sqlite_files_are_clear_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a decision-trace database"):
        DecisionTraceClient(db_path=junk)
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE customers (id)")
    conn.close()
    with pytest.raises(StoreError, match="another application"):
        DecisionTraceClient(db_path=other)


def test_read_only_open_never_creates_a_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(StoreError, match="no decision-trace database"):
        Store(missing, create=False)
    assert not missing.exists()


def test_reopening_keeps_data(make_client: Callable[..., DecisionTraceClient]) -> None:
    first = make_client()
    event_id = first.trace("t", "kept").record()
    first.close()
    assert make_client().get_event(event_id) is not None


def test_prune_removes_old_events_with_their_rows(
    make_client: Callable[..., DecisionTraceClient], db_path: Path
) -> None:
    from datetime import datetime

    from decision_trace.record import ns_from_datetime

    client = make_client()
    client.trace("old").at(datetime(2020, 1, 1)).affecting_order("o1").with_tags("a").because(
        "ancient reasoning"
    ).record()
    keep = client.trace("new").affecting_order("o2").record()
    client.flush()
    store = Store(db_path)
    cutoff = ns_from_datetime(datetime(2021, 1, 1), "cutoff")
    dry = store.prune(cutoff, dry_run=True)
    assert (dry.events, dry.objects, dry.tags) == (1, 1, 1)
    report = store.prune(cutoff)
    assert report == dry
    store.close()
    assert [e.id for e in client.query(limit=None)] == [keep]
    assert client.search("ancient") == []
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("INSERT INTO events_fts(events_fts) VALUES('integrity-check')")


def test_one_column_order_for_every_row(
    make_client: Callable[..., DecisionTraceClient], db_path: Path
) -> None:
    """The table, the store's insert and the query's select all follow EVENT_COLUMNS, and
    the row the store writes for a record puts each field under its own column."""
    import dataclasses

    from decision_trace import query
    from decision_trace._rows import EVENT_COLUMNS
    from decision_trace.record import EventRecord
    from decision_trace.store import _event_row

    client = make_client(durability="sync")
    client.trace("order.created").by_user("u1", "Ann").with_tags("web").record()
    conn = sqlite3.connect(db_path)
    try:
        table = tuple(row[1] for row in conn.execute("PRAGMA table_info(events)"))
    finally:
        conn.close()
    # The salt of the event's commitment follows them (the chain's, never read as a field).
    assert table == (*EVENT_COLUMNS, "salt")
    assert query._SELECT.startswith("SELECT " + ", ".join(f"e.{c}" for c in EVENT_COLUMNS))
    values = {f.name: f"<{f.name}>" for f in dataclasses.fields(EventRecord)}
    values.update(object_types=(), object_ids=(), tags=("web",), start_ns=5, duration_ns=7)
    row = dict(zip(EVENT_COLUMNS, _event_row(42, EventRecord(**values)), strict=True))
    assert row.pop("rowid") == 42
    assert row.pop("tags_json") == '["web"]'
    assert row == {column: values[column] for column in row}
