"""The ledger file itself: whose file it is, where it went, what folder it is in.

- another application's SQLite file is refused before a byte of it (or beside it) changes;
- a ledger deleted or replaced while a client has it open: nothing is reported written
  that is not in the file at the path, and no other file is overwritten;
- a dangling symbolic link is refused; a ledger on a read-only mount is readable;
- the write-ahead log shrinks back once a reader that held it open lets go.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from ledger_versions import make_older_ledger
from reliability_support import CHILD_TIMEOUT_S, child_env, run_python, write_script

from decision_trace import DecisionTraceClient, StoreError
from decision_trace.store import APPLICATION_ID, JOURNAL_SIZE_LIMIT, SCHEMA_VERSION, Store


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def _count_at_path(db: Path) -> int:
    """Events in the file at ``db``, read by a connection of its own."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()


def _ids_at_path(db: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT id FROM events")}
    finally:
        conn.close()


# --- another application's files --------------------------------------------------------


def _rollback_with_tables(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('Ann')")
    conn.commit()
    conn.close()


def _wal_mode_closed(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.execute("INSERT INTO notes VALUES ('hello')")
    conn.commit()
    conn.close()


def _user_version_1_with_events_table(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, what TEXT, at TEXT)")
    conn.execute("INSERT INTO events (what, at) VALUES ('deploy', '2024-01-01')")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


def _other_application_id(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id = 0x0f0f0f0f")
    conn.commit()
    conn.close()


def _old_ledger_with_a_table_of_someone_else(path: Path) -> None:
    """An earlier release's ledger shape (version 1, no application id) plus a table we
    never made: not exactly ours, so not taken for a ledger."""
    with DecisionTraceClient(db_path=path, durability="sync") as client:
        client.trace("a.b").by_system("s").record()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA application_id = 0")
    conn.execute("PRAGMA user_version = 1")
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()


FOREIGN_FILES: dict[str, tuple[Callable[[Path], None], str]] = {
    "rollback-journal-with-tables": (_rollback_with_tables, "another application"),
    "wal-mode-closed": (_wal_mode_closed, "another application"),
    "user-version-1-with-an-events-table": (_user_version_1_with_events_table, "user_version 1"),
    "another-application-id": (_other_application_id, "application id 0xf0f0f0f"),
    "version-1-ledger-plus-a-foreign-table": (
        _old_ledger_with_a_table_of_someone_else,
        "user_version 1",
    ),
}


@pytest.mark.parametrize("kind", list(FOREIGN_FILES))
def test_foreign_sqlite_files_are_refused_byte_for_byte_untouched(
    tmp_path: Path, kind: str
) -> None:
    make, reason = FOREIGN_FILES[kind]
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "app.db"
    make(path)
    before, files = _sha(path), _listing(folder)
    for opener in (
        lambda: DecisionTraceClient(db_path=path),
        lambda: DecisionTraceClient(db_path=path, durability="sync"),
        lambda: Store(path, read_only=True),  # what the command line opens
    ):
        with pytest.raises(StoreError) as info:
            opener()
        message = str(info.value)
        assert str(path) in message and reason in message, message
        assert "left untouched" in message
        assert _sha(path) == before, "the foreign file's bytes changed"
        assert _listing(folder) == files, "files were created beside the foreign file"


def test_a_version_1_ledger_of_an_earlier_release_is_accepted_and_stamped(tmp_path: Path) -> None:
    db = tmp_path / "traces.db"
    with DecisionTraceClient(db_path=db, durability="sync") as client:
        old_id = client.trace("before.upgrade", "kept").by_system("old").record()
    make_older_ledger(db, 1)  # exactly what releases before application ids left
    assert Store(db, read_only=True) is not None  # readable as it is, not migrated
    with DecisionTraceClient(db_path=db, durability="sync") as client:
        assert client.get_event(old_id) is not None
        new_id = client.trace("after.upgrade").by_system("new").record()
        assert client.get_event(new_id) is not None
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


# --- the ledger deleted or replaced while open --------------------------------------------


@pytest.mark.parametrize("companions_too", [False, True], ids=["db-only", "db-wal-shm"])
@pytest.mark.parametrize("durability", ["batch", "sync"])
def test_ledger_deleted_while_open_is_recreated_and_the_loss_is_reported(
    tmp_path: Path, durability: str, companions_too: bool
) -> None:
    db = tmp_path / "traces.db"
    client = DecisionTraceClient(db_path=db, durability=durability)  # type: ignore[arg-type]
    try:
        client.trace("before.delete").by_system("s").record()
        assert client.flush()
        for suffix in ("", "-wal", "-shm") if companions_too else ("",):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        ids = [client.trace("after.delete", str(i)).by_system("s").record() for i in range(5)]
        # The event written before the delete went with the file: flush() says so once...
        assert client.flush() is False
        assert client.flush() is True
        stats = client.stats()
        assert (stats.recorded, stats.written, stats.failed, stats.queued) == (6, 6, 0, 0)
        # ...and the five acknowledged since are in the file at the path, a new ledger.
        assert _ids_at_path(db) == set(ids)
        assert all(client.get_event(event_id) is not None for event_id in ids)
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
    finally:
        client.close()
    assert _count_at_path(db) == 5


@pytest.mark.parametrize("durability", ["batch", "sync"])
def test_foreign_file_moved_into_place_is_refused_never_overwritten(
    tmp_path: Path, durability: str
) -> None:
    db = tmp_path / "traces.db"
    other = tmp_path / "other.db"
    client = DecisionTraceClient(db_path=db, durability=durability)  # type: ignore[arg-type]
    try:
        client.trace("before.replace").by_system("s").record()
        assert client.flush()
        _rollback_with_tables(other)
        before = _sha(other)
        os.replace(other, db)
        if durability == "sync":
            for i in range(5):
                with pytest.raises(StoreError, match="another application"):
                    client.trace("after.replace", str(i)).by_system("s").record()
        else:
            for i in range(5):  # accepted into the queue, then refused by the writer
                client.trace("after.replace", str(i)).by_system("s").record()
            assert client.flush(timeout_s=60) is False
            stats = client.stats()
            assert (stats.recorded, stats.written, stats.failed) == (6, 1, 5)
        with pytest.raises(StoreError, match="another application"):
            client.query(limit=1)
    finally:
        client.close()
    assert _sha(db) == before, "the file moved into place was modified"
    assert _listing(tmp_path) == ["traces.db"], "the old ledger's -wal/-shm were left beside it"
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT name FROM customers").fetchall() == [("Ann",)]
    conn.close()


@pytest.mark.parametrize("durability", ["batch", "sync"])
def test_another_ledger_moved_into_place_is_written_and_never_gets_the_old_log(
    tmp_path: Path, durability: str
) -> None:
    db = tmp_path / "traces.db"
    restored = tmp_path / "restored.db"
    with DecisionTraceClient(db_path=restored, durability="sync") as other:
        kept = other.trace("restored.event").by_system("backup").record()
    client = DecisionTraceClient(db_path=db, durability=durability)  # type: ignore[arg-type]
    try:
        gone = client.trace("before.replace").by_system("s").record()
        assert client.flush()
        os.replace(restored, db)
        ids = [client.trace("after.replace", str(i)).by_system("s").record() for i in range(5)]
        assert client.flush() is False  # the event written before the move is not there
        assert client.flush() is True
        assert client.stats().failed == 0
        assert client.get_event(kept) is not None
    finally:
        client.close()
    assert _ids_at_path(db) == {kept, *ids}, "old ledger's log applied, or events missing"
    assert gone not in _ids_at_path(db)
    assert _count_at_path(db) == 6  # and the file is sound


def test_a_query_never_creates_a_file(tmp_path: Path) -> None:
    db = tmp_path / "traces.db"
    client = DecisionTraceClient(db_path=db, durability="sync")
    try:
        event_id = client.trace("a.b").by_system("s").record()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        with pytest.raises(StoreError, match="was deleted"):
            client.get_event(event_id)
        assert not db.exists()
    finally:
        client.close()
    with pytest.raises(StoreError, match="no decision-trace database"):
        Store(db, read_only=True)
    assert _listing(tmp_path) == []


# --- links and read-only folders ----------------------------------------------------------


def test_a_dangling_symlink_is_refused_and_nothing_is_created(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "traces.db"
    link = tmp_path / "traces.db"
    link.symlink_to(target)
    with pytest.raises(StoreError, match="symbolic link") as info:
        DecisionTraceClient(db_path=link)
    assert str(link) in str(info.value) and str(target) in str(info.value)
    assert not target.exists() and not target.parent.exists()
    # A link to an existing ledger is followed as before.
    target.parent.mkdir()
    DecisionTraceClient(db_path=target).close()
    with DecisionTraceClient(db_path=link, durability="sync") as client:
        event_id = client.trace("a.b").by_system("s").record()
    assert _ids_at_path(target) == {event_id}


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[tuple[Path, Callable[[], None]]]:
    """A folder and a function that makes it read-only for this process: a tmpfs
    remounted read-only when we are root (chmod does not stop root), else chmod 0555."""
    folder = tmp_path / "evidence"
    folder.mkdir()
    if os.geteuid() != 0:
        yield folder, lambda: folder.chmod(0o555)
        folder.chmod(0o755)
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"running as root but cannot mount a tmpfs to make a read-only folder: "
            f"{mounted.stderr.strip()}"
        )
    try:
        yield (
            folder,
            lambda: subprocess.run(
                ["mount", "-o", "remount,ro", str(folder)], check=True, capture_output=True
            ),
        )
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)


KILLED_WRITER = """
    import os, sys
    from decision_trace import DecisionTraceClient
    client = DecisionTraceClient(db_path=sys.argv[1], durability="sync")
    for i in range(int(sys.argv[2])):
        print(client.trace("evidence.item", str(i)).by_system("s").record(), flush=True)
    os._exit(0)  # no close: the events stay in the -wal, as after kill -9
"""


def _cli(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "decision_trace", "--db", str(db), *args],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )


@pytest.mark.parametrize("left_by", ["closed-writer", "killed-writer"])
def test_a_ledger_in_a_read_only_folder_is_read_by_the_cli_and_refused_for_writing(
    tmp_path: Path, read_only_folder: tuple[Path, Callable[[], None]], left_by: str
) -> None:
    folder, make_read_only = read_only_folder
    db = folder / "traces.db"
    if left_by == "closed-writer":
        with DecisionTraceClient(db_path=db, durability="sync") as client:
            ids = {client.trace("evidence.item", str(i)).by_system("s").record() for i in range(7)}
    else:
        script = write_script(tmp_path, "killed.py", KILLED_WRITER)
        result = run_python(script, str(db), "7")
        assert result.returncode == 0, result.stderr
        ids = set(result.stdout.split())
        assert Path(f"{db}-wal").stat().st_size > 0  # the events are in the log only
    make_read_only()
    files = {name: _sha(folder / name) for name in _listing(folder)}
    listed = _cli(db, "events", "--limit", "0", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {json.loads(line)["id"] for line in listed.stdout.splitlines()} == ids
    stats = _cli(db, "stats")
    assert stats.returncode == 0, stats.stderr
    with pytest.raises(StoreError, match="read-only folder") as info:
        DecisionTraceClient(db_path=db)
    assert str(db) in str(info.value)
    assert {name: _sha(folder / name) for name in _listing(folder)} == files


# --- the write-ahead log ------------------------------------------------------------------


def test_the_wal_shrinks_back_after_a_stalled_reader_lets_go(tmp_path: Path) -> None:
    """A reader holding one snapshot (a pager left open) keeps SQLite from recycling the
    log, so it grows; once the reader lets go, the writer's next batches bring it back
    under JOURNAL_SIZE_LIMIT."""
    db = tmp_path / "traces.db"
    wal = Path(f"{db}-wal")
    padding = "x" * 3000
    client = DecisionTraceClient(db_path=db)
    try:

        def write(count: int) -> None:
            for i in range(count):
                client.trace("bulk.item", f"{i} {padding}").by_system("s").record()
            assert client.flush()

        write(100)
        stalled = sqlite3.connect(db, isolation_level=None)
        stalled.execute("BEGIN")
        stalled.execute("SELECT count(*) FROM events").fetchone()  # holds its snapshot
        for _ in range(40):
            if wal.stat().st_size > JOURNAL_SIZE_LIMIT + 1024 * 1024:
                break
            write(500)
        grown = wal.stat().st_size
        assert grown > JOURNAL_SIZE_LIMIT, "the test did not make the log grow"
        stalled.execute("COMMIT")
        stalled.close()
        for _ in range(20):
            write(50)
            if wal.stat().st_size <= JOURNAL_SIZE_LIMIT:
                break
        assert wal.stat().st_size <= JOURNAL_SIZE_LIMIT, (grown, wal.stat().st_size)
    finally:
        client.close()
