"""The SQLite ledger: schema, migrations, connections and writes.

All SQL that writes lives here; the SQL that reads lives in ``query.py``. The store knows
nothing of OpenTelemetry: it writes :class:`~decision_trace.attributes.EventRecord` rows.

Layout (schema version 4; version 2 only adds the ``application_id``, version 3 the
outbox tables, version 4 the chain)::

    events         one row per event (span); indexed by time, type, actor, trace, parent
    event_objects  one row per object an event touched; indexed by (type, id, time)
    event_tags     one row per tag; keyed by (tag, event)
    events_fts     FTS5 over description, reasoning and the context JSON, kept in step by
                   triggers (external content, read through the ``events_fts_source`` view)
    outbox         per shipping destination: the last row acknowledged, counts, last error
    outbox_rejected  the events a destination refused, with its reason
    ledger_state   the highest row number given out (row numbers are never reused)
    chain          one entry per event and per act (erasure, prune, adoption), in commit
                   order: the tamper-evident hash chain (decision_trace/integrity.py);
                   an event's position is its row number
    ledger_meta    the ledger's id and the key of its erasure pseudonyms

Connections: one writer connection per process (the exporter's), and a reader
connection per thread. WAL mode lets readers run while the writer commits; a busy
timeout makes concurrent writers from several processes wait instead of failing.
The database file and its ``-wal``/``-shm`` companions are created with mode 0600.

Files: a file is identified read-only (``mode=ro``) before anything is written to it:
``PRAGMA application_id`` marks our ledgers (a version-1 ledger of an earlier release,
which has none, is accepted only when its tables and columns are exactly ours, and is
stamped by migration 2). SQLite never creates the file (connections open it with
``mode=rw`` or ``mode=ro``); only :func:`_create_private_file` does, 0600. The writer
checks that the file at the path is still the one it opened before and after every
commit (see :meth:`Store._follow_path`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from . import integrity
from ._rows import EVENT_COLUMNS
from .errors import (
    InvalidInputError,
    RejectedRecordsError,
    SchemaVersionError,
    StoreError,
    UnshippedEventsError,
)
from .integrity import GENESIS, ChainEntry
from .models import ActorType, ObjectType
from .record import EventRecord

__all__ = ["SCHEMA_VERSION", "Store", "default_db_path"]

DB_ENV_VAR = "DECISION_TRACE_DB"
"""Environment variable naming the database file."""

BUSY_TIMEOUT_MS = 60_000
"""How long a connection waits for another process's write lock before failing."""

APPLICATION_ID = 0x44635472  # b"DcTr"
"""``PRAGMA application_id`` of a decision-trace ledger (set by migration 2)."""

JOURNAL_SIZE_LIMIT = 8 * 1024 * 1024
"""Bytes the write-ahead log is truncated to once a checkpoint has emptied it: a reader
that held a snapshot for long lets the log grow, and this gives the space back."""

_logger = logging.getLogger(__name__)

Durability = Literal["sync", "batch"]

_INHERITED_CONNECTIONS: list[sqlite3.Connection] = []
"""Connections a forked child inherited: never used, never closed (closing one in the
child could disturb the parent's locks), only kept from the garbage collector."""


def default_db_path() -> Path:
    """The database path used when none is given.

    ``$DECISION_TRACE_DB``, else ``$XDG_DATA_HOME/decision-trace/traces.db``, else
    ``~/.local/share/decision-trace/traces.db``.
    """
    explicit = os.environ.get(DB_ENV_VAR)
    if explicit:
        return Path(explicit).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME")
    base = Path(data_home).expanduser() if data_home else Path.home() / ".local" / "share"
    return base / "decision-trace" / "traces.db"


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run each statement of ``script`` inside the current transaction.

    (``executescript`` would COMMIT first, breaking the migration's transaction.)
    """
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
    if statement.strip():
        raise StoreError(f"incomplete SQL statement in migration: {statement!r}")


def _migration_1(conn: sqlite3.Connection) -> None:
    _run_script(
        conn,
        """
        CREATE TABLE events (
            rowid         INTEGER PRIMARY KEY,
            id            TEXT NOT NULL UNIQUE,
            trace_id      TEXT NOT NULL,
            parent_id     TEXT,
            start_ns      INTEGER NOT NULL,
            duration_ns   INTEGER NOT NULL,
            event_type    TEXT NOT NULL,
            description   TEXT NOT NULL,
            actor_type    TEXT,
            actor_id      TEXT,
            actor_name    TEXT,
            actor_json    TEXT,
            reasoning     TEXT,
            decision_json TEXT,
            objects_json  TEXT,
            tags_json     TEXT,
            outcome       TEXT NOT NULL,
            error         TEXT,
            metadata_json TEXT,
            service_name  TEXT
        );
        CREATE INDEX events_by_time ON events (start_ns);
        CREATE INDEX events_by_type ON events (event_type, start_ns);
        CREATE INDEX events_by_actor ON events (actor_type, actor_id, start_ns);
        CREATE INDEX events_by_trace ON events (trace_id);
        CREATE INDEX events_by_parent ON events (parent_id);

        CREATE TABLE event_objects (
            event_rowid INTEGER NOT NULL,
            position    INTEGER NOT NULL,
            object_type TEXT NOT NULL,
            external_id TEXT NOT NULL,
            start_ns    INTEGER NOT NULL,
            PRIMARY KEY (event_rowid, position)
        ) WITHOUT ROWID;
        CREATE INDEX event_objects_by_object
            ON event_objects (object_type, external_id, start_ns);
        CREATE INDEX event_objects_by_id ON event_objects (external_id, start_ns);

        CREATE TABLE event_tags (
            tag         TEXT NOT NULL,
            event_rowid INTEGER NOT NULL,
            PRIMARY KEY (tag, event_rowid)
        ) WITHOUT ROWID;

        CREATE VIEW events_fts_source AS
            SELECT rowid, description, reasoning,
                   json_extract(decision_json, '$.context') AS context
            FROM events;
        CREATE VIRTUAL TABLE events_fts USING fts5(
            description, reasoning, context,
            content='events_fts_source', content_rowid='rowid'
        );
        CREATE TRIGGER events_fts_insert AFTER INSERT ON events BEGIN
            INSERT INTO events_fts (rowid, description, reasoning, context)
            VALUES (new.rowid, new.description, new.reasoning,
                    json_extract(new.decision_json, '$.context'));
        END;
        CREATE TRIGGER events_fts_delete AFTER DELETE ON events BEGIN
            INSERT INTO events_fts (events_fts, rowid, description, reasoning, context)
            VALUES ('delete', old.rowid, old.description, old.reasoning,
                    json_extract(old.decision_json, '$.context'));
        END;
        """,
    )


def _migration_2(conn: sqlite3.Connection) -> None:
    # Marks the file as ours, so that another application's database is never taken for
    # a ledger (nor a ledger for another application's database).
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")


def _migration_3(conn: sqlite3.Connection) -> None:
    # The outbox (docs/shipping.md): per destination, the last row acknowledged, and the
    # events it refused. And an index for the newest events of one actor type (the web
    # view's timeline filter: 1 s -> 1 ms on 1,000,000 events; events_by_actor leads with
    # the type but then the actor id, so it cannot give the type's events in time order).
    # ledger_state keeps the highest row number ever given out ('rowid_floor', raised by
    # prune), so a row number is never given out twice: a destination's mark past a
    # pruned row must not hide the next event written.
    _run_script(
        conn,
        """
        CREATE TABLE ledger_state (
            key   TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE outbox (
            destination   TEXT PRIMARY KEY,
            position      INTEGER NOT NULL,
            shipped       INTEGER NOT NULL,
            rejected      INTEGER NOT NULL,
            last_error    TEXT,
            last_error_ns INTEGER,
            updated_ns    INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE outbox_rejected (
            destination TEXT NOT NULL,
            position    INTEGER NOT NULL,
            event_id    TEXT NOT NULL,
            message     TEXT NOT NULL,
            at_ns       INTEGER NOT NULL,
            PRIMARY KEY (destination, position)
        ) WITHOUT ROWID;
        CREATE INDEX events_by_actor_type ON events (actor_type, start_ns);
        """,
    )


def _migration_4(conn: sqlite3.Connection) -> None:
    # The tamper-evident chain (docs/proving.md): each event's salt (hex; NULL once its
    # payload is erased), one chain entry per event and act, the ledger's id and
    # pseudonym key; and the search index kept in step when an erasure rewrites a row.
    # Events written before are adopted: chained now, in row order, with an act saying so.
    _run_script(
        conn,
        """
        ALTER TABLE events ADD COLUMN salt TEXT;
        CREATE TABLE chain (
            position   INTEGER PRIMARY KEY,
            kind       INTEGER NOT NULL,
            event_id   TEXT,
            start_ns   INTEGER NOT NULL,
            skeleton   TEXT NOT NULL,
            commitment TEXT NOT NULL,
            hash       TEXT NOT NULL,
            body       TEXT
        );
        CREATE INDEX chain_acts ON chain (position) WHERE kind = 1;
        CREATE TABLE ledger_meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE TRIGGER events_fts_update
        AFTER UPDATE OF description, reasoning, decision_json ON events BEGIN
            INSERT INTO events_fts (events_fts, rowid, description, reasoning, context)
            VALUES ('delete', old.rowid, old.description, old.reasoning,
                    CASE WHEN json_valid(old.decision_json)
                    THEN json_extract(old.decision_json, '$.context') END);
            INSERT INTO events_fts (rowid, description, reasoning, context)
            VALUES (new.rowid, new.description, new.reasoning,
                    CASE WHEN json_valid(new.decision_json)
                    THEN json_extract(new.decision_json, '$.context') END);
        END;
        """,
    )
    conn.execute(
        "INSERT INTO ledger_meta (key, value) VALUES ('ledger_id', ?), ('pseudonym_key', ?)",
        (_new_ledger_id(), secrets.token_hex(32)),
    )
    _adopt_events(conn)


def _new_ledger_id() -> str:
    import uuid

    return str(uuid.uuid4())


def _adopt_events(conn: sqlite3.Connection) -> None:
    """Chain the events a ledger held before it had a chain, in row order, and record
    the adoption: the chain proves them unchanged since now, not before."""
    count = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    if not count:
        return
    conn.execute("UPDATE events SET salt = lower(hex(randomblob(16)))")
    previous = GENESIS
    after = 0
    while True:
        rows = conn.execute(
            f"SELECT {_EVENT_COLUMNS}, salt FROM events WHERE rowid > ? ORDER BY rowid LIMIT 2000",
            (after,),
        ).fetchall()
        if not rows:
            break
        objects = _objects_of(conn, rows[0][0], rows[-1][0])
        entries = integrity.link_events(
            rows,
            [objects.get(row[0], ((), ())) for row in rows],
            [bytes.fromhex(row[-1]) for row in rows],
            previous,
        )
        _insert_chain(conn, entries)
        previous = entries[-1].hash
        after = rows[-1][0]
    _append_act(conn, {"act": "adopt", "at_ns": time.time_ns(), "events": count, "up_to": after})


def _objects_of(
    conn: sqlite3.Connection, first: int, last: int
) -> dict[int, tuple[list[str], list[str]]]:
    """``rowid -> (object types, object ids)`` of the events from ``first`` to ``last``."""
    objects: dict[int, tuple[list[str], list[str]]] = {}
    for rowid, object_type, external_id in conn.execute(
        "SELECT event_rowid, object_type, external_id FROM event_objects "
        "WHERE event_rowid BETWEEN ? AND ? ORDER BY event_rowid, position",
        (first, last),
    ):
        pair = objects.get(rowid)
        if pair is None:
            objects[rowid] = pair = ([], [])
        pair[0].append(object_type)
        pair[1].append(external_id)
    return objects


_CHAIN_COLUMNS = "position, kind, event_id, start_ns, skeleton, commitment, hash, body"
_INSERT_CHAIN = f"INSERT INTO chain ({_CHAIN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_CHAIN_HEAD = "SELECT hash FROM chain ORDER BY position DESC LIMIT 1"


def _chain_row(e: ChainEntry) -> tuple[object, ...]:
    return (
        e.position,
        e.kind,
        e.event_id,
        e.start_ns,
        e.skeleton.hex(),
        e.commitment.hex(),
        e.hash.hex(),
        e.body,
    )


def _insert_chain(conn: sqlite3.Connection, entries: Sequence[ChainEntry]) -> None:
    rows = [_chain_row(e) for e in entries]
    _insert_rows(conn, _INSERT_CHAIN_JSON, _INSERT_CHAIN, rows)


def _chain_head(conn: sqlite3.Connection) -> bytes:
    row = conn.execute(_CHAIN_HEAD).fetchone()
    return GENESIS if row is None else bytes.fromhex(row[0])


def _append_act(conn: sqlite3.Connection, values: dict[str, object]) -> ChainEntry:
    """Append an act to the chain (in the open write transaction)."""
    position = conn.execute(_LAST_ROWID).fetchone()[0] + 1
    at_ns = int(values["at_ns"])  # type: ignore[call-overload]
    entry = integrity.link_act(_chain_head(conn), position, at_ns, integrity.act_body(values))
    _insert_chain(conn, [entry])
    return entry


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _migration_1,
    _migration_2,
    _migration_3,
    _migration_4,
)
"""Schema migrations in order; migration ``n`` brings ``user_version`` from n-1 to n."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this release writes (``PRAGMA user_version``)."""

_EVENT_COLUMNS = ", ".join(EVENT_COLUMNS)
_STORED_COLUMNS = (*EVENT_COLUMNS, "salt")
"""What a write stores of an event: its columns, and the salt of its commitment."""
_OBJECT_COLUMNS = "event_rowid, position, object_type, external_id, start_ns"
_INSERT_EVENT = (
    f"INSERT INTO events ({', '.join(_STORED_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_STORED_COLUMNS))})"
)
_INSERT_OBJECT = f"INSERT INTO event_objects ({_OBJECT_COLUMNS}) VALUES (?, ?, ?, ?, ?)"
_INSERT_TAG = "INSERT OR IGNORE INTO event_tags (tag, event_rowid) VALUES (?, ?)"
_LAST_ROWID = (
    "SELECT max(coalesce((SELECT max(rowid) FROM events), 0), "
    "coalesce((SELECT max(position) FROM chain), 0), "
    "coalesce((SELECT value FROM ledger_state WHERE key = 'rowid_floor'), 0))"
)
"""The highest row number given out so far: new rows are numbered past it, in commit
order (writers hold the write lock from reading it to COMMIT)."""


def _from_json_rows(columns: int) -> str:
    return (
        "SELECT "
        + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(columns))
        + " FROM json_each(?)"
    )


# A whole batch as one statement a table: its rows go in as one JSON array of arrays.
# executemany() steps SQLite once a row and releases the GIL around each step, so in a
# busy application the writer waited for the GIL (up to the 5 ms switch interval) once a
# row; one statement needs it back once a batch. See _insert_rows for exactness.
_INSERT_EVENTS_JSON = (
    f"INSERT INTO events ({', '.join(_STORED_COLUMNS)}) {_from_json_rows(len(_STORED_COLUMNS))}"
)
_INSERT_CHAIN_JSON = f"INSERT INTO chain ({_CHAIN_COLUMNS}) {_from_json_rows(8)}"
_INSERT_OBJECTS_JSON = f"INSERT INTO event_objects ({_OBJECT_COLUMNS}) {_from_json_rows(5)}"
_INSERT_TAGS_JSON = f"INSERT OR IGNORE INTO event_tags (tag, event_rowid) {_from_json_rows(2)}"

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1

_encode_rows = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, check_circular=False, separators=(",", ":")
).encode
"""Rows to JSON: strings stay UTF-8 (SQLite hands them back byte for byte; a lone
surrogate makes binding the batch fail, as it would the row), NaN is refused."""


def _insert_rows(
    conn: sqlite3.Connection, json_sql: str, plain_sql: str, rows: list[tuple[object, ...]]
) -> None:
    """Insert ``rows`` with one statement (``json_sql``), or with ``executemany`` of
    ``plain_sql`` when JSON cannot carry them exactly.

    SQLite 3.40's JSON functions cut a string at an escaped NUL, so rows with a NUL in
    any text go through executemany (the JSON encoder escapes NUL as \\u0000 and nothing else
    contains that text, except a string with a literal backslash-u0000: harmless).
    """
    text = _encode_rows(rows)
    if "\\u0000" in text:
        conn.executemany(plain_sql, rows)
    else:
        conn.execute(json_sql, (text,))


_SQLITE_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (primary result codes)


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if isinstance(code, int):
        return (code & 0xFF) in _SQLITE_BUSY_CODES
    return "locked" in str(exc) or "busy" in str(exc)


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch ``conn``'s database to WAL mode, waiting out other openers.

    Turning a new file's journal to WAL needs an exclusive lock, and SQLite reports a
    busy database at once here instead of calling the busy handler; so when several
    processes open a new ledger together, retry for as long as the busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.001
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() > deadline:
                raise
        else:
            if str(mode).lower() == "wal" or time.monotonic() > deadline:
                return
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


_encode_tags = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode
"""Compact ASCII JSON, as the builder encodes every JSON value (one reused encoder:
``json.dumps`` with options builds a new one on every call)."""


def _tags_json(tags: Sequence[str]) -> str | None:
    if not tags:
        return None
    return _encode_tags(list(tags))


FileId = tuple[int, int]
"""A file's ``(st_dev, st_ino)``: which file a path names, whatever its name."""

_COMPANIONS = ("-wal", "-shm")


def _file_id(path: str | os.PathLike[str]) -> FileId | None:
    """The identity of the file at ``path`` (following links), or None if there is none."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise StoreError(f"cannot examine {os.fspath(path)}: {exc}") from exc
    return (st.st_dev, st.st_ino)


def _on_read_only_fs(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False


def _uri(path: Path, **params: str) -> str:
    query = "&".join(f"{key}={value}" for key, value in params.items())
    return f"file:{quote(os.fspath(path), safe='/')}?{query}"


_SCHEMA_SQL = """
    SELECT m.type, m.name, m.tbl_name, p.name, p.type, p."notnull", p.pk
    FROM sqlite_master AS m LEFT JOIN pragma_table_info(m.name) AS p ON m.type = 'table'
    WHERE m.name NOT LIKE 'sqlite^_%' ESCAPE '^'
"""

Schema = frozenset[tuple[object, ...]]


@dataclass(frozen=True)
class _Found:
    """What a file holds, as far as telling whose it is goes."""

    version: int
    application_id: int
    schema: Schema


def _inspect(conn: sqlite3.Connection) -> _Found:
    """Read ``conn``'s version, application id and schema (no writes)."""
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")  # one snapshot: another process may be migrating
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        application_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
        schema = frozenset(tuple(row) for row in conn.execute(_SCHEMA_SQL))
    finally:
        if own and conn.in_transaction:
            conn.execute("COMMIT")
    return _Found(version, application_id, schema)


@functools.cache
def _schema_of_version(version: int) -> Schema:
    """The schema our migrations make up to ``version`` (built in memory)."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for migration in MIGRATIONS[:version]:
            migration(conn)
        return _inspect(conn).schema
    finally:
        conn.close()


def _accepted_version(path: Path, found: _Found) -> int:
    """The schema version of ``found`` if it is a decision-trace ledger (0: an empty file
    that can become one); raise otherwise. Only reads ``found``."""
    if found.application_id == APPLICATION_ID:
        if found.version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{path} has schema version {found.version}, newer than the "
                f"{SCHEMA_VERSION} this decision-trace understands; upgrade decision-trace "
                "to read it"
            )
        return found.version
    untouched = "; it was left untouched"
    if found.application_id != 0:
        raise StoreError(
            f"{path} is an SQLite database of another application (application id "
            f"{found.application_id:#x}), not a decision-trace database{untouched}"
        )
    if found.version == 0:
        if found.schema:
            raise StoreError(
                f"{path} is an SQLite database of another application (it has tables but "
                f"no decision-trace schema version){untouched}"
            )
        return 0
    if found.version == 1 and found.schema == _schema_of_version(1):
        return 1  # a ledger of a release before application ids: migration 2 stamps it
    raise StoreError(
        f"{path} is an SQLite database of another application (user_version "
        f"{found.version} without decision-trace's application id and tables), not a "
        f"decision-trace database{untouched}"
    )


# SQLite result codes that mean "this record", not "this database": SQLITE_ERROR (such
# as malformed JSON in a hand-made span), TOOBIG, CONSTRAINT, MISMATCH, RANGE.
_CONTENT_ERROR_CODES = frozenset({1, 18, 19, 20, 25})


def _about_row(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` is about the row being written, not about the database."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return (int(code) & 0xFF) in _CONTENT_ERROR_CODES
    # Refused by the sqlite3 module while binding (a type it cannot bind), or by SQLite.
    return isinstance(
        exc,
        (
            sqlite3.IntegrityError,
            sqlite3.DataError,
            sqlite3.InterfaceError,
            sqlite3.ProgrammingError,
        ),
    ) or "malformed" in str(exc)


def _linked(r: EventRecord) -> tuple[Sequence[str], Sequence[str]]:
    """The object types and ids ``r`` stores (pairs: an unpaired type or id is dropped)."""
    types, ids = r.object_types, r.object_ids
    if len(types) != len(ids):
        count = min(len(types), len(ids))
        return types[:count], ids[:count]
    return types, ids


def _salts(count: int) -> list[bytes]:
    """``count`` fresh 16-byte salts, from one call to the system's random source."""
    pool = os.urandom(16 * count)
    return [pool[i : i + 16] for i in range(0, 16 * count, 16)]


_ERASE_EVENT = (
    "UPDATE events SET description = '', actor_id = ?, actor_name = NULL, actor_json = NULL, "
    "reasoning = NULL, decision_json = NULL, objects_json = NULL, tags_json = NULL, "
    "error = NULL, metadata_json = NULL, salt = NULL WHERE rowid = ?"
)


def _strip_payloads(conn: sqlite3.Connection, rowids: Sequence[int], key: bytes) -> None:
    """Remove the personal payload of the events at ``rowids`` (in the open write
    transaction): clear it and its salt, put keyed pseudonyms in place of the actor's
    and the objects' ids, drop the tags, and blank the reasons destinations gave for
    refusing them. The search index follows through its update trigger; the bytes
    leave the file at the next compaction (``compact``)."""
    # secure_delete zeroes the space the old values leave in a page, so the page images
    # written from now on hold none of them; the old images go at the next compaction.
    conn.execute("PRAGMA secure_delete = ON")
    try:
        for i in range(0, len(rowids), 500):
            part = list(rowids[i : i + 500])
            marks = ",".join("?" * len(part))
            events = conn.execute(
                f"SELECT rowid, id, actor_type, actor_id FROM events WHERE rowid IN ({marks})",
                part,
            ).fetchall()
            conn.executemany(
                _ERASE_EVENT,
                [
                    (
                        integrity.pseudonym(key, actor_type or "actor", actor_id)
                        if actor_id
                        else None,
                        rowid,
                    )
                    for rowid, _, actor_type, actor_id in events
                ],
            )
            conn.executemany(
                "UPDATE event_objects SET external_id = ? WHERE event_rowid = ? AND position = ?",
                [
                    (integrity.pseudonym(key, object_type, external_id), rowid, position)
                    for rowid, position, object_type, external_id in conn.execute(
                        "SELECT event_rowid, position, object_type, external_id "
                        f"FROM event_objects WHERE event_rowid IN ({marks})",
                        part,
                    ).fetchall()
                ],
            )
            conn.execute(f"DELETE FROM event_tags WHERE event_rowid IN ({marks})", part)
            conn.execute(
                f"UPDATE outbox_rejected SET message = '(erased)' WHERE event_id IN ({marks})",
                [event_id for _, event_id, _, _ in events],
            )
    finally:
        conn.execute("PRAGMA secure_delete = OFF")


def _event_row(rowid: int, r: EventRecord) -> tuple[object, ...]:
    return (
        rowid,
        r.id,
        r.trace_id,
        r.parent_id,
        r.start_ns,
        r.duration_ns,
        r.event_type,
        r.description,
        r.actor_type,
        r.actor_id,
        r.actor_name,
        r.actor_json,
        r.reasoning,
        r.decision_json,
        r.objects_json,
        _tags_json(r.tags),
        r.outcome,
        r.error,
        r.metadata_json,
        r.service_name,
    )


@dataclass(frozen=True)
class PruneReport:
    """What :meth:`Store.prune` removed (or would remove, on a dry run)."""

    events: int
    objects: int
    tags: int
    unshipped: int = 0
    """Of ``events``, how many some shipping destination had not acknowledged (deleted
    only with ``force``)."""
    kept_skeleton: bool = False
    """Whether only the events' payloads were removed (``prune --keep-skeleton``)."""


class Store:
    """One SQLite ledger file.

    Args:
        path: The database file. Its folder is created (mode 0700) if missing.
        durability: ``"sync"`` commits with ``synchronous=FULL`` (a committed event
            survives power loss); ``"batch"`` uses ``synchronous=NORMAL`` (a committed
            event survives a crash of the process).
        create: If false, a missing file is an error instead of being created.
        read_only: Only read: the file is opened with ``mode=ro`` (with ``immutable=1``
            on a read-only mount), never created, migrated or written, and no
            ``-wal``/``-shm`` is made in a folder that cannot be written. For reading an
            evidence copy, and for the command line's read-only commands.

    Raises:
        StoreError: the file cannot be opened or is not a decision-trace database (the
            message says which, and why); such a file is left untouched.
        SchemaVersionError: the file was written by a newer decision-trace.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "batch",
        create: bool = True,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path).expanduser()
        self.read_only = read_only
        self._synchronous = "FULL" if durability == "sync" else "NORMAL"
        # Re-entrant: the SIGTERM hook may close the store from a signal handler that
        # interrupted this process's own write.
        self._write_lock = threading.RLock()
        self._writer: sqlite3.Connection | None = None
        self._writer_pid = 0
        self._local = threading.local()
        self._closed = False
        self._readers_lock = threading.RLock()  # re-entrant: see _write_lock
        self._all_readers: list[tuple[threading.Thread, sqlite3.Connection]] = []
        # The file this store uses: the one at the path when it was opened or last
        # followed (see _follow_path), its -wal/-shm as last seen while ours were open,
        # and how many times the path turned out to name another file.
        self._file: FileId | None = None
        self._companions: dict[str, FileId] = {}
        self._generation = 0
        self._switches = 0
        self._switches_reported = 0
        self._refused: tuple[FileId, StoreError] | None = None
        self._lost: FileId | None = None
        if hasattr(os, "register_at_fork"):
            ref = weakref.ref(self)
            os.register_at_fork(
                before=functools.partial(_store_before_fork, ref),
                after_in_parent=functools.partial(_store_after_fork_in_parent, ref),
                after_in_child=functools.partial(_store_after_fork, ref),
            )
        if _file_id(self.path) is None:
            if not create or read_only:
                raise StoreError(f"no decision-trace database at {self.path}")
            self._create_file()
        self._open_file()

    def _after_fork_in_child(self) -> None:
        # fork() happened between two transactions (see _store_before_fork): a write
        # transaction caught mid-flight would leave SQLite's in-process lock table in the
        # child believing its write lock is taken forever. Connections must not be used
        # (nor closed) across fork(): keep the parent's referenced but untouched.
        _INHERITED_CONNECTIONS.extend(conn for _, conn in self._all_readers)
        if self._writer is not None:
            _INHERITED_CONNECTIONS.append(self._writer)
        self._write_lock = threading.RLock()
        self._writer = None
        self._writer_pid = 0
        self._local = threading.local()
        self._readers_lock = threading.RLock()  # re-entrant: see _write_lock
        self._all_readers = []

    # -- the file ---------------------------------------------------------------------

    def _create_file(self) -> None:
        """Create a new, empty ledger file at the path (0600), refusing a dangling link."""
        if os.path.islink(self.path):
            raise StoreError(
                f"{self.path} is a symbolic link to {os.readlink(self.path)}, which does not "
                "exist; decision-trace does not create a ledger through a link: create the "
                "ledger at the link's target, or remove the link"
            )
        folder = self.path.parent
        if folder.is_dir() and (_on_read_only_fs(folder) or not os.access(folder, os.W_OK)):
            raise StoreError(f"cannot create {self.path}: {folder} is a read-only folder")
        _create_private_file(self.path)

    def _identify(self) -> int:
        """The schema version of the ledger at the path (0: an empty file); raise if the
        file is anything else. Reads only: nothing is created or changed, not even a
        ``-wal``/``-shm`` next to another application's database."""
        path = self.path
        if path.is_dir():
            raise StoreError(f"{path} is a folder, not a decision-trace database")
        try:
            with open(path, "rb") as file:
                header = file.read(100)
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc
        wal = Path(f"{path}-wal")
        if not header and (not wal.exists() or wal.stat().st_size == 0):
            return 0  # empty: `touch`, or a new ledger that another process is creating
        if header and (len(header) < 100 or not header.startswith(b"SQLite format 3\x00")):
            raise StoreError(
                f"{path} is not a decision-trace database (not an SQLite file); "
                "it was left untouched"
            )
        # A WAL-mode file with no -wal/-shm (closed by everyone) is read as it is, so that
        # opening another application's database to look at it creates nothing beside it.
        bare = header[18:19] == b"\x02" and not wal.exists() and not Path(f"{path}-shm").exists()
        conn = self._connect_read_only(immutable=bare)
        try:
            found = _inspect(conn)
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{path} is not a decision-trace database: {exc}; it was left untouched"
            ) from exc
        finally:
            conn.close()
        return _accepted_version(path, found)

    def _open_file(self) -> None:
        """Check the file at the path is a ledger (read-only), then, unless read-only,
        bring it to this release's schema; remember which file it is."""
        file = _file_id(self.path)
        version = self._identify()
        if self.read_only:
            if version == 0:
                raise StoreError(f"{self.path} is empty, not a decision-trace database")
            self._file = file
            return
        folder = self.path.parent
        if _on_read_only_fs(folder) or not os.access(folder, os.W_OK):
            raise StoreError(
                f"cannot write to {self.path}: {folder} is a read-only folder (to only read "
                "the ledger, open it with read_only=True, as the command line does)"
            )
        if not os.access(self.path, os.W_OK):
            raise StoreError(f"cannot write to {self.path}: it is a read-only file")
        conn = self._connect()
        try:
            self._migrate(conn)
            self._file = file
            self._remember_companions()
        finally:
            conn.close()
        if _file_id(self.path) != file:  # replaced while we looked: look again
            self._follow_path()

    def _remember_companions(self) -> None:
        """Note which -wal/-shm files are ours (call while one of our connections is
        open on the file at the path, so that they are)."""
        for suffix in _COMPANIONS:
            found = _file_id(f"{self.path}{suffix}")
            if found is not None:
                self._companions[suffix] = found

    def _follow_path(self, *, create: bool = True) -> None:
        """Make sure the file at the path is the one this store uses; if it is not (the
        ledger was deleted, or another file was moved into its place, while open), switch
        to it.

        Our old -wal/-shm are removed from beside the path first (SQLite would otherwise
        take the old ledger's log for the new file's, and copy it into that file). A
        deleted ledger is recreated as a new, empty ledger (0600) when ``create`` (the
        writer) and is an error otherwise (readers never create a file); another
        ledger is used as it is; any other file is refused (StoreError) and left
        untouched. Each switch is counted, so the next :meth:`check_file` reports it.
        """
        found = _file_id(self.path)
        if found == self._file:
            return
        if found is not None and self._refused is not None and self._refused[0] == found:
            raise type(self._refused[1])(str(self._refused[1]))  # refused already: no new log
        if self._writer is not None and self._writer_pid == os.getpid():
            with suppress(sqlite3.Error):
                self._writer.close()
        self._writer = None
        self._generation += 1  # readers reopen at their next query
        for suffix, ours in self._companions.items():
            if _file_id(f"{self.path}{suffix}") == ours:
                with suppress(FileNotFoundError):
                    os.unlink(f"{self.path}{suffix}")
        self._companions = {}
        if self._file is not None and self._lost != self._file:
            self._lost = self._file  # counted once, however many steps following it takes
            self._switches += 1
            what = "deleted" if found is None else "replaced by another file"
            _logger.warning(
                "decision-trace: the ledger %s was %s while open; the events written to it "
                "are no longer at that path",
                self.path,
                what,
            )
        if found is None:
            if not create or self.read_only:
                raise StoreError(f"the decision-trace database {self.path} was deleted")
            _logger.warning("decision-trace: creating a new ledger at %s", self.path)
            self._create_file()
        self._file = None  # until the file at the path has been identified
        try:
            self._open_file()
        except StoreError as exc:
            if found is not None:
                self._refused = (found, exc)
            raise

    def check_file(self) -> bool:
        """Follow the path (see :meth:`_follow_path`) and say whether it named the same
        file since the previous call: False when the ledger was deleted or replaced
        while open (events written before that are not in the file at the path), or
        when the file now at the path cannot be used."""
        with self._write_lock:
            if self._closed or self.read_only:
                return True
            refused = self._refused
            try:
                self._follow_path(create=False)  # a deleted ledger is made again by a write
            except StoreError as exc:
                if self._refused is not refused:  # a new refusal: the repeats are not logged
                    _logger.error("decision-trace: %s", exc)
                self._switches_reported = self._switches
                return False
            seen, self._switches_reported = self._switches_reported, self._switches
            return seen == self._switches

    # -- connections ------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """A read-write connection to the (existing) file at the path, in WAL mode."""
        try:
            conn = sqlite3.connect(
                _uri(self.path, mode="rw"),
                uri=True,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _use_wal(conn)
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"{self.path} is not a decision-trace database: {exc}") from exc
        return conn

    def _connect_read_only(self, *, immutable: bool = False) -> sqlite3.Connection:
        """A ``mode=ro`` connection; ``immutable=1`` (no locks, no -wal/-shm) when asked,
        or when no -wal exists in a folder we cannot write (a read-only mount): SQLite
        could not make the -wal/-shm it needs, and no writer has the file open. (With a
        -wal there, say a copy of a ledger whose writer was killed, ``mode=ro`` reads it.)
        """
        if not immutable:
            immutable = not os.access(self.path.parent, os.W_OK) and not (
                Path(f"{self.path}-wal").exists()
            )
        params = {"mode": "ro", "immutable": "1"} if immutable else {"mode": "ro"}
        try:
            conn = sqlite3.connect(
                _uri(self.path, **params),
                uri=True,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path} to read it: {exc}") from exc
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        try:
            version = _accepted_version(self.path, _inspect(conn))
            if version == SCHEMA_VERSION:
                return
            conn.execute("BEGIN IMMEDIATE")
            # Look again under the lock: another process may have migrated meanwhile.
            version = _accepted_version(self.path, _inspect(conn))
            for number in range(version + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[number - 1](conn)
                conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"cannot migrate {self.path}: {exc}") from exc
        except StoreError:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _writer_connection(self) -> sqlite3.Connection:
        if self.read_only:
            raise StoreError(f"{self.path} was opened read-only")
        pid = os.getpid()
        if self._writer is None or self._writer_pid != pid:
            # Never reuse a connection across fork(): the child opens its own.
            self._follow_path()
            self._writer = self._connect()
            self._writer_pid = pid
        return self._writer

    @contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        """A read connection for the calling thread (kept open and reused)."""
        yield self.read_connection()

    def read_connection(self) -> sqlite3.Connection:
        """The calling thread's read connection (kept open and reused); what
        :meth:`reader` yields, without the context manager (queries call this).

        Raises:
            StoreError: the store is closed, or the ledger at the path was deleted or
                replaced by a file that is not a ledger (never created here).
        """
        if self._closed:
            raise StoreError("the store is closed")
        if _file_id(self.path) != self._file:
            with self._write_lock:
                if self.read_only:
                    self._generation += 1
                    self._file = None
                    if _file_id(self.path) is None:
                        raise StoreError(f"the decision-trace database {self.path} was deleted")
                    self._open_file()
                else:
                    self._follow_path(create=False)
        pid = os.getpid()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if (
            conn is None
            or getattr(self._local, "pid", 0) != pid
            or getattr(self._local, "generation", -1) != self._generation
        ):
            if self.read_only:
                conn = self._connect_read_only()
            else:
                conn = self._connect()
                conn.execute("PRAGMA query_only = 1")
            self._local.conn = conn
            self._local.pid = pid
            self._local.generation = self._generation
            with self._readers_lock:
                # Close the connections of threads that have ended (a thread-per-request
                # server would otherwise run out of file descriptors). A connection to a
                # file that left the path stays open until then: the thread may still be
                # reading from it.
                alive = []
                for thread, old in self._all_readers:
                    if thread.is_alive():
                        alive.append((thread, old))
                    else:
                        with suppress(sqlite3.Error):
                            old.close()
                alive.append((threading.current_thread(), conn))
                self._all_readers = alive
        return conn

    def close(self) -> None:
        """Close every connection this store opened in this process. Idempotent."""
        self._closed = True
        with self._readers_lock:
            for _, conn in self._all_readers:
                with suppress(sqlite3.Error):
                    conn.close()
            self._all_readers = []
        with self._write_lock:
            if self._writer is not None and self._writer_pid == os.getpid():
                self._writer.close()
            self._writer = None
            if self._file is not None and _file_id(self.path) != self._file:
                # The ledger left the path while open: SQLite leaves its -wal/-shm there,
                # where they would be taken for the log of the file now at the path.
                for suffix, ours in self._companions.items():
                    if _file_id(f"{self.path}{suffix}") == ours:
                        with suppress(FileNotFoundError):
                            os.unlink(f"{self.path}{suffix}")

    # -- writes -----------------------------------------------------------------------

    def write(self, records: Sequence[EventRecord]) -> int:
        """Commit ``records`` in one transaction; return how many were new.

        A record whose id is already stored is skipped, so exporting the same span twice
        never duplicates an event. A record that cannot be stored on its own account
        (whatever the error: a value SQLite refuses, or one Python cannot bind, such as
        an integer beyond 64 bits or a lone surrogate) is left out and the others are
        written.

        Raises:
            RejectedRecordsError: some records cannot be stored because of what they hold;
                all the others were written.
            StoreError: the transaction could not be committed (nothing was written).
        """
        if not records:
            return 0
        with self._write_lock:
            if self._closed:
                raise StoreError("the store is closed")
            # The file at the path must be the one written, before and after the commit:
            # a batch committed to a ledger that was deleted or replaced meanwhile (so is
            # not at the path) is written again to the file now there.
            for _ in range(3):
                self._follow_path()
                try:
                    written = self._write_records(records)
                except RejectedRecordsError:
                    if _file_id(self.path) == self._file:
                        raise
                    continue
                if _file_id(self.path) == self._file:
                    self._remember_companions()
                    return written
            raise StoreError(f"cannot write to {self.path}: it keeps being replaced")

    def _write_records(self, records: Sequence[EventRecord]) -> int:
        with self._write_lock:
            conn = self._writer_connection()
            try:
                return self._write_batch(conn, records)
            except sqlite3.Error as exc:
                if not isinstance(exc, sqlite3.IntegrityError) and not _about_row(exc):
                    raise StoreError(f"cannot write to {self.path}: {exc}") from exc
            except Exception:  # a value Python cannot bind: found row by row below
                pass
            # An id is already stored, or some record is unstorable: write them one at a
            # time (one transaction still), so one bad record never costs the rest.
            written, rejected = self._write_each(conn, records)
            if rejected:
                raise RejectedRecordsError(self.path, written, rejected)
            return written

    def _write_batch(self, conn: sqlite3.Connection, records: Sequence[EventRecord]) -> int:
        conn.execute("BEGIN IMMEDIATE")
        try:
            base = conn.execute(_LAST_ROWID).fetchone()[0]
            event_rows: list[tuple[object, ...]] = []
            object_rows: list[tuple[object, ...]] = []
            tag_rows: list[tuple[object, ...]] = []
            linked: list[tuple[Sequence[str], Sequence[str]]] = []
            exact = True  # whether JSON carries every integer exactly (else executemany)
            for rowid, r in enumerate(records, base + 1):
                start, duration = r.start_ns, r.duration_ns
                if not (
                    type(start) is int
                    and type(duration) is int
                    and _I64_MIN <= start <= _I64_MAX
                    and _I64_MIN <= duration <= _I64_MAX
                ):
                    exact = False
                event_rows.append(_event_row(rowid, r))
                types, ids = _linked(r)
                linked.append((types, ids))
                for position, (object_type, external_id) in enumerate(zip(types, ids, strict=True)):
                    object_rows.append((rowid, position, object_type, external_id, start))
                for tag in r.tags:
                    tag_rows.append((tag, rowid))
            salts = _salts(len(event_rows))
            chained = integrity.link_events(event_rows, linked, salts, _chain_head(conn))
            event_rows = [(*row, salt.hex()) for row, salt in zip(event_rows, salts, strict=True)]
            if exact:
                _insert_rows(conn, _INSERT_EVENTS_JSON, _INSERT_EVENT, event_rows)
                if object_rows:
                    _insert_rows(conn, _INSERT_OBJECTS_JSON, _INSERT_OBJECT, object_rows)
            else:
                conn.executemany(_INSERT_EVENT, event_rows)
                if object_rows:
                    conn.executemany(_INSERT_OBJECT, object_rows)
            if tag_rows:
                _insert_rows(conn, _INSERT_TAGS_JSON, _INSERT_TAG, tag_rows)
            _insert_chain(conn, chained)
            conn.execute("COMMIT")
            return len(event_rows)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _write_each(
        self, conn: sqlite3.Connection, records: Sequence[EventRecord]
    ) -> tuple[int, list[tuple[str, str]]]:
        """Write ``records`` one statement set a record, each in its own savepoint of one
        transaction: skip stored ids, leave out (and return) the records that fail on their
        own. A database error (disk full, I/O) rolls everything back and raises."""
        written = 0
        rejected: list[tuple[str, str]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            ids = [r.id for r in records]
            known: set[object] = set()
            for i in range(0, len(ids), 500):  # under every SQLite's variable limit
                part = ids[i : i + 500]
                known.update(
                    row[0]
                    for row in conn.execute(
                        f"SELECT id FROM events WHERE id IN ({','.join('?' * len(part))})", part
                    )
                )
            rowid = conn.execute(_LAST_ROWID).fetchone()[0]
            previous = _chain_head(conn)
            for r in records:
                if r.id in known:
                    continue
                conn.execute("SAVEPOINT record")
                try:
                    row = _event_row(rowid + 1, r)
                    types, object_ids = _linked(r)
                    salts = _salts(1)
                    (entry,) = integrity.link_events([row], [(types, object_ids)], salts, previous)
                    conn.execute(_INSERT_EVENT, (*row, salts[0].hex()))
                    conn.executemany(
                        _INSERT_OBJECT,
                        [
                            (rowid + 1, position, object_type, external_id, r.start_ns)
                            for position, (object_type, external_id) in enumerate(
                                zip(types, object_ids, strict=True)
                            )
                        ],
                    )
                    conn.executemany(_INSERT_TAG, [(tag, rowid + 1) for tag in r.tags])
                    conn.execute(_INSERT_CHAIN, _chain_row(entry))
                except Exception as exc:
                    if isinstance(exc, sqlite3.Error) and not _about_row(exc):
                        raise
                    conn.execute("ROLLBACK TO record")
                    conn.execute("RELEASE record")
                    rejected.append((str(r.id), f"{type(exc).__name__}: {exc}"))
                    continue
                conn.execute("RELEASE record")
                previous = entry.hash
                rowid += 1
                written += 1
                known.add(r.id)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"cannot write to {self.path}: {exc}") from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return written, rejected

    def prune(
        self,
        older_than_ns: int,
        *,
        dry_run: bool = False,
        force: bool = False,
        keep_skeleton: bool = False,
    ) -> PruneReport:
        """Delete events that started before ``older_than_ns`` with their objects, tags
        and search entries, and record the prune in the chain (their chain entries stay,
        so ``verify`` tells them pruned, not deleted). With ``keep_skeleton``, remove
        only their payloads (as an erasure does) and keep the events' skeletons. With
        ``dry_run``, only count them.

        Raises:
            UnshippedEventsError: some of them a shipping destination has not
                acknowledged yet, and ``force`` is false (nothing was deleted).
            StoreError: the ledger cannot be written.
        """
        with self._write_lock:
            conn = self._writer_connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                old = "SELECT rowid FROM events WHERE start_ns < ?"
                if keep_skeleton:
                    old += " AND salt IS NOT NULL"
                counts = [
                    conn.execute(sql.format(old=old), (older_than_ns,)).fetchone()[0]
                    for sql in (
                        "SELECT count(*) FROM events WHERE rowid IN ({old})",
                        "SELECT count(*) FROM event_objects WHERE event_rowid IN ({old})",
                        "SELECT count(*) FROM event_tags WHERE event_rowid IN ({old})",
                    )
                ]
                unshipped = {
                    str(destination): int(count)
                    for destination, count in conn.execute(
                        f"SELECT o.destination, (SELECT count(*) FROM events "
                        f"WHERE rowid IN ({old}) AND rowid > o.position) FROM outbox o "
                        "ORDER BY o.destination",
                        (older_than_ns,),
                    )
                    if count
                }
                lacking = 0
                if unshipped:
                    lacking = conn.execute(
                        f"SELECT count(*) FROM events WHERE rowid IN ({old}) "
                        "AND rowid > (SELECT min(position) FROM outbox)",
                        (older_than_ns,),
                    ).fetchone()[0]
                if unshipped and not dry_run and not force:
                    raise UnshippedEventsError(self.path, unshipped)
                if not dry_run and counts[0] and keep_skeleton:
                    rowids = [row[0] for row in conn.execute(old, (older_than_ns,))]
                    _strip_payloads(conn, rowids, self._pseudonym_key(conn))
                    _append_act(
                        conn, integrity.prune_act(older_than_ns, counts[0], keep_skeleton=True)
                    )
                elif not dry_run and counts[0]:
                    # Row numbers are never given out twice (see _LAST_ROWID).
                    conn.execute(
                        "INSERT INTO ledger_state (key, value) "
                        "SELECT 'rowid_floor', max(rowid) FROM events WHERE true "
                        "ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)"
                    )
                    conn.execute(
                        f"DELETE FROM event_objects WHERE event_rowid IN ({old})", (older_than_ns,)
                    )
                    conn.execute(
                        f"DELETE FROM event_tags WHERE event_rowid IN ({old})", (older_than_ns,)
                    )
                    conn.execute("DELETE FROM events WHERE start_ns < ?", (older_than_ns,))
                    _append_act(
                        conn, integrity.prune_act(older_than_ns, counts[0], keep_skeleton=False)
                    )
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StoreError(f"cannot prune {self.path}: {exc}") from exc
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return PruneReport(
            events=counts[0],
            objects=counts[1],
            tags=counts[2],
            unshipped=lacking,
            kept_skeleton=keep_skeleton,
        )

    # -- erasure (docs/proving.md) -------------------------------------------------------

    @staticmethod
    def _pseudonym_key(conn: sqlite3.Connection) -> bytes:
        row = conn.execute("SELECT value FROM ledger_meta WHERE key = 'pseudonym_key'").fetchone()
        if row is None:
            raise StoreError("the ledger has no pseudonym key (its schema predates the chain)")
        return bytes.fromhex(row[0])

    def erase(
        self,
        subject_type: str,
        subject_id: str,
        *,
        reason: str,
        requested_by: str,
        dry_run: bool = False,
    ) -> integrity.ErasureReport:
        """Remove the personal payload of every event involving a subject (a user actor,
        or an object), keep their skeletons, and record the erasure in the chain.

        Args:
            subject_type: ``"user"`` (events the user acted in) or an object type
                (events that touched the object); see :func:`integrity.parse_subject`.
            subject_id: The user's or the object's id.
            reason: Why (kept in the chain's record of the erasure).
            requested_by: Who asked (kept likewise).
            dry_run: Only find the events.

        Raises:
            InvalidInputError: an empty reason or requester, or an unknown subject type.
            StoreError: the ledger cannot be written.
        """
        subject_type, subject_id = integrity.parse_subject(f"{subject_type}:{subject_id}")
        if not reason.strip() or not requested_by.strip():
            raise InvalidInputError("reason", "an erasure needs a reason and who asked for it")
        if subject_type == integrity.USER_SUBJECT:
            find = (
                "SELECT rowid, id FROM events WHERE actor_type = ? AND actor_id = ? "
                "AND salt IS NOT NULL ORDER BY rowid"
            )
            params: tuple[str, str] = (ActorType.USER.value, subject_id)
        else:
            find = (
                "SELECT e.rowid, e.id FROM events AS e WHERE e.rowid IN (SELECT event_rowid "
                "FROM event_objects WHERE object_type = ? AND external_id = ?) "
                "AND e.salt IS NOT NULL ORDER BY e.rowid"
            )
            params = (ObjectType.parse(subject_type, "subject type").value, subject_id)
        found: list[tuple[int, str]] = []
        report: list[integrity.ErasureReport] = []

        def statements(conn: sqlite3.Connection) -> None:
            key = self._pseudonym_key(conn)
            found.extend(conn.execute(find, params))
            alias = integrity.pseudonym(key, subject_type, subject_id)
            position = None
            if found and not dry_run:
                _strip_payloads(conn, [rowid for rowid, _ in found], key)
                act = integrity.erasure_act(
                    alias, subject_type, reason, requested_by, [rowid for rowid, _ in found]
                )
                position = _append_act(conn, act).position
            report.append(
                integrity.ErasureReport(
                    subject_type=subject_type,
                    pseudonym=alias,
                    events=len(found),
                    event_ids=tuple(str(event_id) for _, event_id in found),
                    position=position,
                )
            )

        if dry_run:
            with self.reader() as conn:
                statements(conn)
        else:
            self._write_transaction("erase", statements)
        return report[0]

    # -- the outbox (docs/shipping.md) --------------------------------------------------

    def _write_transaction(
        self, what: str, statements: Callable[[sqlite3.Connection], object]
    ) -> None:
        """Run ``statements`` in one write transaction, as every write here does."""
        with self._write_lock:
            if self._closed:
                raise StoreError("the store is closed")
            self._follow_path()
            conn = self._writer_connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                statements(conn)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StoreError(f"cannot {what} in {self.path}: {exc}") from exc
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def register_destination(self, destination: str) -> int:
        """See :meth:`decision_trace.storage.outbox.Outbox.register_destination`."""
        self._write_transaction(
            "register a shipping destination",
            lambda conn: conn.execute(
                "INSERT INTO outbox (destination, position, shipped, rejected, updated_ns) "
                "VALUES (?, 0, 0, 0, ?) ON CONFLICT (destination) DO NOTHING",
                (destination, time.time_ns()),
            ),
        )
        row = (
            self.read_connection()
            .execute("SELECT position FROM outbox WHERE destination = ?", (destination,))
            .fetchone()
        )
        return int(row[0]) if row else 0

    def acknowledge(
        self,
        destination: str,
        position: int,
        *,
        shipped: int,
        rejected: Sequence[tuple[int, str, str]] = (),
    ) -> None:
        """See :meth:`decision_trace.storage.outbox.Outbox.acknowledge` (``rejected``
        holds ``(position, event_id, message)``)."""
        now = time.time_ns()

        def statements(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO outbox (destination, position, shipped, rejected, updated_ns) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (destination) DO UPDATE SET "
                "position = max(position, excluded.position), "
                "shipped = shipped + excluded.shipped, rejected = rejected + excluded.rejected, "
                "last_error = NULL, last_error_ns = NULL, updated_ns = excluded.updated_ns",
                (destination, position, shipped, len(rejected), now),
            )
            if rejected:
                conn.executemany(
                    "INSERT OR REPLACE INTO outbox_rejected "
                    "(destination, position, event_id, message, at_ns) VALUES (?, ?, ?, ?, ?)",
                    [(destination, pos, eid, msg, now) for pos, eid, msg in rejected],
                )

        self._write_transaction("record what was shipped", statements)

    def note_ship_error(self, destination: str, message: str) -> None:
        """See :meth:`decision_trace.storage.outbox.Outbox.note_ship_error`."""
        now = time.time_ns()
        self._write_transaction(
            "record a shipping error",
            lambda conn: conn.execute(
                "INSERT INTO outbox (destination, position, shipped, rejected, last_error, "
                "last_error_ns, updated_ns) VALUES (?, 0, 0, 0, ?, ?, ?) "
                "ON CONFLICT (destination) DO UPDATE SET last_error = excluded.last_error, "
                "last_error_ns = excluded.last_error_ns",
                (destination, message, now, now),
            ),
        )

    def forget_destination(self, destination: str) -> bool:
        """See :meth:`decision_trace.storage.outbox.Outbox.forget_destination`."""
        found: list[bool] = []

        def statements(conn: sqlite3.Connection) -> None:
            found.append(
                conn.execute("DELETE FROM outbox WHERE destination = ?", (destination,)).rowcount
                > 0
            )
            conn.execute("DELETE FROM outbox_rejected WHERE destination = ?", (destination,))

        self._write_transaction("forget a shipping destination", statements)
        return found[0]


def _store_before_fork(ref: weakref.ReferenceType[Store]) -> None:
    store = ref()
    if store is not None:
        store._write_lock.acquire()


def _store_after_fork_in_parent(ref: weakref.ReferenceType[Store]) -> None:
    store = ref()
    if store is not None:
        store._write_lock.release()


def _store_after_fork(ref: weakref.ReferenceType[Store]) -> None:
    store = ref()
    if store is not None:
        store._after_fork_in_child()


def _create_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600, its missing folders with mode 0700."""
    try:
        missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
        for folder in reversed(missing):  # mkdir(parents=True) ignores mode for parents
            with suppress(FileExistsError):
                folder.mkdir(mode=0o700)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"cannot create {path}: {exc}") from exc


def check_integrity(store: Store) -> list[str]:
    """Run SQLite's ``PRAGMA integrity_check`` and FTS5's own check of the search index
    against the events table; return the problems found (an empty list means sound)."""
    with store._write_lock:
        conn = store._writer_connection()
        try:
            problems = [
                str(row[0])
                for row in conn.execute("PRAGMA integrity_check").fetchall()
                if str(row[0]) != "ok"
            ]
            try:
                conn.execute(
                    "INSERT INTO events_fts (events_fts, rank) VALUES ('integrity-check', 1)"
                )
            except sqlite3.DatabaseError as exc:
                problems.append(f"search index: {exc}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot check {store.path}: {exc}") from exc
    return problems


def compact(store: Store, *, checkpoint_wait_ms: int = 5_000) -> bool:
    """Rewrite the file without the space (and the bytes) of deleted events.

    Merges the search index (dropping entries of deleted events), runs ``VACUUM`` and
    truncates the write-ahead log, so pruned personal data no longer sits in free pages.
    Returns False when another connection's open read kept the rewritten pages from being
    copied back into the file within ``checkpoint_wait_ms`` (the next checkpoint does it).
    """
    with store._write_lock:
        conn = store._writer_connection()
        try:
            conn.execute("INSERT INTO events_fts (events_fts) VALUES ('optimize')")
            conn.execute("VACUUM")
            conn.execute(f"PRAGMA busy_timeout = {int(checkpoint_wait_ms)}")
            try:
                busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            finally:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot compact {store.path}: {exc}") from exc
    return not busy
