"""Helpers for the reliability tests: run Python code in a real child process, and read
what a test stored in its ledger (a SQLite file or a PostgreSQL schema) directly."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import psycopg.sql

from decision_trace.storage import open_ledger

CHILD_TIMEOUT_S = 120
"""No child process of these tests may live longer than this."""


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment (already isolated by conftest) plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def write_script(directory: Path, name: str, code: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(code), encoding="utf-8")
    return path


def run_python(
    script: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = CHILD_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` to completion in a fresh interpreter; output captured as text."""
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        env=child_env(env),
        timeout=timeout,
        check=False,
    )


@contextmanager
def started_python(
    script: Path, *args: str, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """Start ``script``; the child is always killed and reaped when the block ends."""
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(env),
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        try:
            proc.communicate(timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


# --- the ledger a test wrote, read without the library's reader ---------------------
#
# ``target`` is what the test gave its clients: a SQLite file path or a PostgreSQL URL
# (the ``ledger_target`` fixture). The checks below read the tables directly, as an
# auditor would, so that a bug in the library's read side cannot hide one in its writes.

LEDGER_TABLES = ("events", "event_objects", "event_tags")


def is_postgres(target: str | os.PathLike[str]) -> bool:
    """Whether ``target`` names a PostgreSQL ledger (a URL) rather than a SQLite file."""
    return os.fspath(target).startswith(("postgresql://", "postgres://"))


def _pg(target: str | os.PathLike[str]) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(os.fspath(target), autocommit=True, connect_timeout=10)


def check_intact(target: str | os.PathLike[str]) -> None:
    """Assert the ledger is intact: SQLite's ``integrity_check`` and FTS5's own check of
    the search index; on PostgreSQL, the backend's partition check and no object or tag
    row without its event."""
    if not is_postgres(target):
        conn = sqlite3.connect(target)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            # FTS5's check that the search index matches the events (raises if not).
            conn.execute("INSERT INTO events_fts (events_fts, rank) VALUES ('integrity-check', 1)")
        finally:
            conn.close()
        return
    with _pg(target) as conn:
        for table in LEDGER_TABLES[1:]:
            orphans = conn.execute(
                f"SELECT count(*) FROM {table} AS x WHERE NOT EXISTS (SELECT 1 FROM events AS e "
                "WHERE e.seq = x.event_seq AND e.start_ns = x.start_ns)"
            ).fetchone()
            assert orphans == (0,), f"{table} rows without their event: {orphans}"
    ledger = open_ledger(os.fspath(target), read_only=True)
    try:
        assert ledger.check() == []
    finally:
        ledger.close()


def stored_ids(target: str | os.PathLike[str], *, intact: bool = True) -> set[str]:
    """The id of every event in the ledger (after :func:`check_intact`, unless told not)."""
    if intact:
        check_intact(target)
    if is_postgres(target):
        with _pg(target) as conn:
            return {str(row[0]) for row in conn.execute("SELECT id FROM events")}
    conn = sqlite3.connect(target)
    try:
        return {row[0] for row in conn.execute("SELECT id FROM events")}
    finally:
        conn.close()


def stored_column(target: str | os.PathLike[str], column: str) -> list[Any]:
    """One column of every stored event (``SELECT <column> FROM events``)."""
    if is_postgres(target):
        with _pg(target) as conn:
            return [row[0] for row in conn.execute(f"SELECT {column} FROM events")]
    conn = sqlite3.connect(target)
    try:
        return [row[0] for row in conn.execute(f"SELECT {column} FROM events")]
    finally:
        conn.close()


def table_counts(target: str | os.PathLike[str]) -> tuple[int, int, int]:
    """Rows in ``events``, ``event_objects`` and ``event_tags``, read in one snapshot."""
    if is_postgres(target):
        with _pg(target) as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            counts = [conn.execute(f"SELECT count(*) FROM {t}").fetchone() for t in LEDGER_TABLES]
            return tuple(int(c[0]) for c in counts if c is not None)  # type: ignore[return-value]
    conn = sqlite3.connect(target, timeout=60)
    try:
        conn.execute("BEGIN")
        counts = [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in LEDGER_TABLES]
        conn.execute("COMMIT")
        return tuple(int(c) for c in counts)  # type: ignore[return-value]
    finally:
        conn.close()


def ledger_bytes(target: str | os.PathLike[str]) -> bytes:
    """Everything the ledger holds, as bytes to search for plaintext: the SQLite file
    with its ``-wal`` and ``-shm``; on PostgreSQL, every row of every table of the
    ledger's schema, each column as text (the ``jsonb`` and the search ``tsvector`` too)."""
    if not is_postgres(target):
        data = b""
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{os.fspath(target)}{suffix}")
            if path.exists():
                data += path.read_bytes()
        return data
    chunks: list[str] = []
    with _pg(target) as conn:
        tables = conn.execute(
            "SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') ORDER BY 1"
        ).fetchall()
        for (name,) in tables:
            for (row,) in conn.execute(
                psycopg.sql.SQL("SELECT t::text FROM ONLY {} AS t").format(
                    psycopg.sql.Identifier(name)
                )
            ):
                chunks.append(row)
    return "\n".join(chunks).encode("utf-8", "surrogatepass")


@contextmanager
def writes_blocked(target: str | os.PathLike[str]) -> Iterator[None]:
    """Another session holds the ledger's write lock while the block runs, so no write
    can commit: a ``BEGIN IMMEDIATE`` transaction on the SQLite file; on PostgreSQL a
    transaction holding ``events`` in ``SHARE`` mode (reads go on, inserts wait)."""
    if is_postgres(target):
        with _pg(target) as conn:
            conn.execute("BEGIN")
            conn.execute("LOCK TABLE events IN SHARE MODE")
            try:
                yield
            finally:
                conn.execute("ROLLBACK")
        return
    conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.rollback()
        conn.close()
