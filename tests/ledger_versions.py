"""SQLite ledgers as earlier releases left them: a current ledger with what the later
migrations added taken away (``decision_trace.store.MIGRATIONS``), to test upgrades."""

from __future__ import annotations

import sqlite3
from pathlib import Path

_ADDED_BY = {
    # migration 4: the chain
    4: (
        "DROP TRIGGER events_fts_update",
        "DROP TABLE chain",
        "DROP TABLE ledger_meta",
        "ALTER TABLE events DROP COLUMN salt",
    ),
    # migration 3: the outbox and an index
    3: (
        "DROP TABLE outbox",
        "DROP TABLE outbox_rejected",
        "DROP TABLE ledger_state",
        "DROP INDEX events_by_actor_type",
    ),
    # migration 2: the application id
    2: ("PRAGMA application_id = 0",),
}


def make_older_ledger(path: Path, version: int) -> None:
    """Turn the current ledger at ``path`` (closed) into one of schema ``version``."""
    conn = sqlite3.connect(path)
    try:
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        for number in range(current, version, -1):
            for statement in _ADDED_BY[number]:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {version}")
        conn.commit()
    finally:
        conn.close()
