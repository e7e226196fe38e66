"""Files: private permissions, schema versions, concurrent migration, foreign files."""

from __future__ import annotations

import os
import select
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from reliability_support import CHILD_TIMEOUT_S, run_python, started_python, write_script

from decision_trace import DecisionTraceClient, SchemaVersionError, StoreError
from decision_trace.store import SCHEMA_VERSION

CREATE_WITH_OPEN_UMASK = """
    import os, sys
    os.umask(0)  # the most permissive umask: the modes must not depend on it
    from decision_trace import DecisionTraceClient
    with DecisionTraceClient(db_path=sys.argv[1]) as client:
        client.trace("a.b", "first").by_user("u1", email="u1@example.com").record()
        assert client.flush()
        wal, shm = sys.argv[1] + "-wal", sys.argv[1] + "-shm"
        assert os.path.exists(wal) and os.path.exists(shm)
        print(oct(os.stat(wal).st_mode & 0o777), oct(os.stat(shm).st_mode & 0o777))
"""


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_database_wal_and_shm_are_0600_in_folders_created_0700(tmp_path: Path) -> None:
    db = tmp_path / "new" / "nested" / "deeper" / "traces.db"
    script = write_script(tmp_path, "create.py", CREATE_WITH_OPEN_UMASK)
    result = run_python(script, str(db))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0o600", "0o600"]  # -wal and -shm while open
    assert _mode(db) == 0o600
    for folder in (tmp_path / "new", tmp_path / "new" / "nested", db.parent):
        assert _mode(folder) == 0o700, folder


def test_default_path_folders_are_created_0700(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    old = os.umask(0o022)
    try:
        with DecisionTraceClient() as client:
            client.trace("a.b").by_system("s").record()
    finally:
        os.umask(old)
    db = tmp_path / "xdg" / "decision-trace" / "traces.db"
    assert _mode(db) == 0o600
    assert _mode(db.parent) == 0o700
    assert _mode(tmp_path / "xdg") == 0o700


def test_newer_schema_is_a_clear_error(
    db_path: Path, make_client: Callable[..., DecisionTraceClient]
) -> None:
    make_client().close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaVersionError, match="newer") as info:
        DecisionTraceClient(db_path=db_path)
    assert str(db_path) in str(info.value)
    assert "upgrade decision-trace" in str(info.value)


@pytest.mark.parametrize(
    "content",
    [
        b"this is a text file, not a database\n" * 100,
        b"SQLite format 3\x00" + b"\xff" * 4080,  # the right magic, garbage after it
        os.urandom(8192),
    ],
    ids=["text", "bad-header", "random"],
)
def test_a_file_that_is_not_sqlite_is_a_clear_store_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(content)
    with pytest.raises(StoreError) as info:
        DecisionTraceClient(db_path=path)
    assert not isinstance(info.value, sqlite3.Error)
    assert str(path) in str(info.value)
    assert "not a decision-trace database" in str(info.value)
    assert path.read_bytes() == content, "a foreign file is never modified"


def test_an_sqlite_file_of_another_application_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('Ann')")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="another application"):
        DecisionTraceClient(db_path=path)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT name FROM customers").fetchall() == [("Ann",)]
    assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 1
    conn.close()


# Opens the ledger with this release's migrations plus one more, which counts its runs:
# a migration applied twice would count 2 (or fail on the table it creates).
OPEN_WITH_NEXT_MIGRATION = """
    import os, sys, time
    from decision_trace import store

    def migration_next(conn):
        conn.execute("CREATE TABLE migration_runs (pid INTEGER)")
        conn.execute("INSERT INTO migration_runs VALUES (?)", (os.getpid(),))

    store.MIGRATIONS = (*store.MIGRATIONS, migration_next)
    store.SCHEMA_VERSION = len(store.MIGRATIONS)
    db, go, upgrade = sys.argv[1], sys.argv[2], sys.argv[3] == "upgrade"
    if not upgrade:
        store.MIGRATIONS = store.MIGRATIONS[:-1]
        store.SCHEMA_VERSION -= 1
    while not os.path.exists(go):
        time.sleep(0.002)
    from decision_trace import DecisionTraceClient
    client = DecisionTraceClient(db_path=db, durability="sync")
    client.trace("opened.by", str(os.getpid())).by_system("opener").record()
    client.close()
    print("ok")
"""


def _open_all_at_once(tmp_path: Path, db: Path, args: list[str]) -> None:
    script = write_script(tmp_path, "opener.py", OPEN_WITH_NEXT_MIGRATION)
    go = tmp_path / "go"
    go.unlink(missing_ok=True)
    contexts = [started_python(script, str(db), str(go), arg) for arg in args]
    procs = [ctx.__enter__() for ctx in contexts]
    try:
        go.touch()
        for proc in procs:
            out, err = proc.communicate(timeout=CHILD_TIMEOUT_S)
            assert proc.returncode == 0, err
            assert out.strip() == "ok"
    finally:
        for ctx in contexts:
            ctx.__exit__(None, None, None)


def test_new_file_created_by_many_processes_at_once(tmp_path: Path) -> None:
    """Six processes create and migrate the same new file at the same moment."""
    db = tmp_path / "traces.db"
    _open_all_at_once(tmp_path, db, ["current"] * 6)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 6
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_old_schema_migrates_in_place_once_with_concurrent_openers(tmp_path: Path) -> None:
    """A file of the current release, opened at once by six processes of a release with
    one more migration: upgraded in place, exactly once, old events kept."""
    db = tmp_path / "traces.db"
    with DecisionTraceClient(db_path=db, durability="sync") as client:
        old_id = client.trace("before.upgrade", "kept").by_system("old").record()
    _open_all_at_once(tmp_path, db, ["upgrade"] * 6)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert conn.execute("SELECT count(*) FROM migration_runs").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 7
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    # ...and this release now refuses the upgraded file clearly instead of misreading it.
    with pytest.raises(SchemaVersionError):
        DecisionTraceClient(db_path=db)
    assert old_id


def test_empty_version_0_file_is_migrated(tmp_path: Path) -> None:
    """An SQLite file with no tables and user_version 0 (say, created by `touch` or
    `sqlite3 traces.db ''`) becomes a ledger."""
    db = tmp_path / "traces.db"
    sqlite3.connect(db).close()
    db.touch()
    with DecisionTraceClient(db_path=db) as client:
        event_id = client.trace("a.b", "after migration").by_system("s").record()
        assert client.get_event(event_id) is not None


def test_concurrent_opener_while_a_writer_holds_the_lock(tmp_path: Path) -> None:
    """Opening a file while another process is mid-transaction waits, never fails."""
    db = tmp_path / "traces.db"
    DecisionTraceClient(db_path=db).close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    script = write_script(
        tmp_path,
        "open.py",
        """
        import sys
        from decision_trace import DecisionTraceClient
        print("opening")
        with DecisionTraceClient(db_path=sys.argv[1], durability="sync") as c:
            print(c.trace("a.b", "waited").by_system("s").record())
        """,
    )
    with started_python(script, str(db)) as proc:
        assert proc.stdout is not None
        # Wait (with a deadline) until the child is at the open, so that the second below is
        # spent opening, not starting an interpreter on a loaded machine.
        ready, _, _ = select.select([proc.stdout], [], [], CHILD_TIMEOUT_S)
        assert ready and proc.stdout.readline().strip() == "opening", proc.communicate()[1]
        time.sleep(1.0)
        assert proc.poll() is None, proc.communicate()[1]  # it waits for the lock...
        holder.execute("COMMIT")
        out, err = proc.communicate(timeout=CHILD_TIMEOUT_S)
        assert proc.returncode == 0, err  # ...and then succeeds
    holder.close()
    assert len(out.strip()) == 16
