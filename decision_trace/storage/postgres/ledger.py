"""``PostgresLedger``: the team-wide backend, one PostgreSQL schema shared by every
process of a team (psycopg 3, ``pip install 'decision-trace-otel[postgres]'``).

Connections: one writer connection per process, opened when first needed and reopened
after the server went away (the caller, the span processor, retries the batch; writes
are idempotent, so a batch whose commit was in doubt stores nothing twice); a
``psycopg_pool`` pool of autocommit connections for reads, where a query that fails
because its connection was dropped is run once more on a fresh one.

A batch is COPied straight into the ledger when none of it is stored yet; otherwise it
is staged, and one ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` statement moves the
new events, and their objects and tags, into the ledger.

The chain (docs/proving.md, :mod:`decision_trace.integrity`): every event written gets a
salt and a copy of its hashed payload (``payload``: ``jsonb`` does not keep the bytes
written), and a chain entry in the same transaction. Chain positions are given out under
a transaction-level advisory lock (:data:`_CHAIN_LOCK_KEY`) taken after the events are
inserted and held until commit, so the chain is in commit order across processes; an
event's position is not its ``seq``. ``verify`` hashes the stored payload and checks
that the queryable columns agree with it.

Text: PostgreSQL cannot hold U+0000 in text or JSON, so the backend stores it as U+FFFD
(and looks values up the same way), as it does a lone surrogate escaped in JSON text
(``jsonb`` refuses one). JSON is stored as ``jsonb``, which keeps values but not key
order or number spelling (``1e+16`` reads back as ``10000000000000000``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager, suppress
from decimal import Decimal
from operator import itemgetter
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql as _sql
from psycopg_pool import ConnectionPool, PoolTimeout

from ..._rows import EVENT_COLUMNS, build_chain, events_from_rows, records_from_rows
from ...errors import (
    EventNotFoundError,
    InvalidInputError,
    RejectedRecordsError,
    SchemaVersionError,
    StoreError,
)
from ...integrity import (
    GENESIS,
    KIND_ACT,
    KIND_EVENT,
    PAYLOAD_COLUMNS,
    SKELETON_COLUMNS,
    USER_SUBJECT,
    Act,
    ChainEntry,
    ChainState,
    Checkpoint,
    ErasureReport,
    FoundEvent,
    VerifyReport,
    act_body,
    decode_act,
    entry_hash,
    erased_form,
    erasure_act,
    link_act,
    parse_subject,
    payload_bytes,
    prune_act,
    pseudonym,
    skeleton_bytes,
    verify_entries,
)
from ...models import ActorType, ObjectType, TraceEvent, clean_text
from ...query import ChainNode, LedgerSummary
from ...record import MAX_NS, MIN_NS, EventRecord, datetime_from_ns
from ...store import Durability, PruneReport
from ..filters import EventFilters, Order
from .schema import (
    KEY_CHARS,
    MIGRATIONS,
    SCHEMA_VERSION,
    TABLES,
    VERSION_TABLE,
    Partition,
    partition_named,
    partition_of,
    partitions_ahead,
)

__all__ = ["PostgresLedger"]

_logger = logging.getLogger(__name__)

_INHERITED: list[object] = []
"""Connections and pools a forked child inherited: never used, never closed (closing
one would end the parent's session on the shared socket), only kept from the GC."""

_MAX_INT64 = 2**63 - 1
_LOCK_KEY = "hashtextextended('decision-trace:' || current_schema(), 0)"
_CHAIN_LOCK_KEY = "hashtextextended('decision-trace-chain:' || current_schema(), 0)"
"""The advisory lock (transaction-level) under which chain positions are given out."""


@contextmanager
def _locked(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """One transaction under the schema's advisory lock (migrations, partitions, prune).

    The lock is a session lock taken in a transaction of its own: the work then starts a
    new transaction, which sees every catalog change committed by the lock's previous
    holder (a transaction-level advisory lock taken first thing in the same transaction
    does not, and ``CREATE TABLE`` would find the table it was about to create).
    """
    conn.execute(f"SELECT pg_advisory_lock({_LOCK_KEY})")
    conn.commit()
    try:
        with conn.transaction():
            yield
    finally:
        if not conn.closed and not conn.broken:
            conn.rollback()
            conn.execute(f"SELECT pg_advisory_unlock({_LOCK_KEY})")
            conn.commit()


_JSON_COLUMNS = frozenset(
    {"actor_json", "decision_json", "objects_json", "tags_json", "metadata_json"}
)
_COLUMNS = ", ".join(
    "e.seq"
    if column == "rowid"
    else f"e.{column}::text"
    if column in _JSON_COLUMNS
    else f"e.{column}"
    for column in EVENT_COLUMNS
)
_SELECT = f"SELECT {_COLUMNS} FROM events AS e"

# A batch is COPied into three temporary tables of the writer's session, then moved into
# the ledger by one statement: new events (ON CONFLICT DO NOTHING) in batch order, and
# the objects and tags of those that were new.
_WRITE_COLUMNS = EVENT_COLUMNS[1:]  # without the rowid: seq comes from the sequence
_STAGE_TYPES = {"start_ns": "bigint", "duration_ns": "bigint"}
_CHAINED_COLUMNS = (*_WRITE_COLUMNS, "salt", "payload")
"""What a write stores of an event: its columns, its salt and its hashed payload."""
_CREATE_STAGE = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS dt_stage_events (n integer, "
    + ", ".join(f"{c} {_STAGE_TYPES.get(c, 'text')}" for c in _CHAINED_COLUMNS)
    + ") ON COMMIT DELETE ROWS;"
    "CREATE TEMPORARY TABLE IF NOT EXISTS dt_stage_objects (id text, start_ns bigint, "
    "position integer, object_type text, external_id text) ON COMMIT DELETE ROWS;"
    "CREATE TEMPORARY TABLE IF NOT EXISTS dt_stage_tags (id text, start_ns bigint, tag text) "
    "ON COMMIT DELETE ROWS"
)
_COPY_EVENTS = f"COPY dt_stage_events (n, {', '.join(_CHAINED_COLUMNS)}) FROM STDIN"
_COPY_OBJECTS = (
    "COPY dt_stage_objects (id, start_ns, position, object_type, external_id) FROM STDIN"
)
_COPY_TAGS = "COPY dt_stage_tags (id, start_ns, tag) FROM STDIN"
_COPY_LEDGER_EVENTS = f"COPY events (seq, {', '.join(_CHAINED_COLUMNS)}) FROM STDIN"
_COPY_LEDGER_OBJECTS = (
    "COPY event_objects (event_seq, position, object_type, external_id, start_ns) FROM STDIN"
)
_COPY_LEDGER_TAGS = "COPY event_tags (tag, event_seq, start_ns) FROM STDIN"
_VALUES = ", ".join(f"s.{c}::jsonb" if c in _JSON_COLUMNS else f"s.{c}" for c in _CHAINED_COLUMNS)
_MOVE_BATCH = f"""
WITH ins AS (
    INSERT INTO events ({", ".join(_CHAINED_COLUMNS)})
    SELECT {_VALUES} FROM dt_stage_events AS s ORDER BY s.n
    ON CONFLICT DO NOTHING
    RETURNING seq, id, start_ns
), objects AS (
    INSERT INTO event_objects (event_seq, position, object_type, external_id, start_ns)
    SELECT ins.seq, o.position, o.object_type, o.external_id, ins.start_ns
    FROM ins JOIN dt_stage_objects AS o ON o.id = ins.id AND o.start_ns = ins.start_ns
), tags AS (
    INSERT INTO event_tags (tag, event_seq, start_ns)
    SELECT t.tag, ins.seq, ins.start_ns
    FROM ins JOIN dt_stage_tags AS t ON t.id = ins.id AND t.start_ns = ins.start_ns
)
SELECT s.n, ins.seq FROM ins
JOIN dt_stage_events AS s ON s.id = ins.id AND s.start_ns = ins.start_ns
ORDER BY s.n
"""
"""Moves the staged batch; returns the batch position and seq of each event that was new."""

_CHAIN_COLUMNS = "position, kind, event_id, event_seq, start_ns, skeleton, commitment, hash, body"
_COPY_CHAIN = f"COPY chain ({_CHAIN_COLUMNS}) FROM STDIN"
_CHAIN_SELECT = f"SELECT {_CHAIN_COLUMNS} FROM chain"
_CHAIN_HEAD = "SELECT position, hash FROM chain ORDER BY position DESC LIMIT 1"
_CHAIN_PAGE = 2000
"""Chain entries (and their events) verify reads at a time."""

_skeleton_of = itemgetter(*(EVENT_COLUMNS.index(c) for c in SKELETON_COLUMNS))
_payload_of = itemgetter(*(EVENT_COLUMNS.index(c) for c in PAYLOAD_COLUMNS))
_sha256 = hashlib.sha256

_Sealed = tuple[bytes, bytes]
"""An event's skeleton digest and salted payload commitment."""
_NewEvent = tuple[int, str, int, bytes, bytes]
"""An event just inserted: seq, id, start time, skeleton digest, commitment."""

# SQLSTATE classes that are about the row written, not about the database: data
# exceptions (22: malformed JSON, a number out of range, bad encoding), integrity (23)
# and program limits (54: a value too big for an index entry).
_ROW_CLASSES = ("22", "23", "54")
_NO_PARTITION = "23514"  # check_violation: "no partition of relation ... found for row"
_READ_WAIT_S = 10.0
"""How long a read waits for a pooled connection (the server down: then StoreError)."""
_TRANSIENT_RETRIES = 8
"""Times a batch aborted by a deadlock with another writer is tried again."""


def _about_row(exc: BaseException) -> bool:
    """Whether ``exc`` is about the records being written, not about the server."""
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate
        if state is None:  # raised by psycopg itself while adapting a value
            return isinstance(exc, (psycopg.DataError, psycopg.ProgrammingError))
        return state[:2] in _ROW_CLASSES
    return isinstance(exc, (UnicodeError, ValueError, OverflowError, TypeError))


class _Reconnect(Exception):
    """The writer's connection was lost: open a new one and try again."""


def _connection_lost(exc: psycopg.Error) -> bool:
    """Whether ``exc`` means the connection is gone (not a refused statement)."""
    return exc.sqlstate is None or exc.sqlstate[:2] in ("08", "57")


def _text(value: str | None) -> str | None:
    """Text PostgreSQL can hold: U+0000 becomes U+FFFD."""
    if value is None or "\x00" not in value:
        return value
    return value.replace("\x00", "\ufffd")


_scanstring: Callable[[str, int, bool], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
"""The ``json`` module's own string scanner (C): decodes one JSON string, joining
surrogate pairs, and says where it ended."""
_NOT_IN_JSONB = re.compile("[\x00\ud800-\udfff]")
"""What a decoded JSON string may hold and ``jsonb`` cannot: U+0000, lone surrogates."""


def _jsonb_strings(value: str) -> str:
    """``value`` (JSON text) with U+0000 and lone surrogates in its strings (keys and
    values, escaped or not) replaced by U+FFFD; numbers and everything else untouched.

    Each string is read by the ``json`` module's own scanner, which joins surrogate
    pairs: whatever surrogate is left in what it decoded is a lone one. Outside strings
    valid JSON has no quotes, so the next quote always opens the next string.
    """
    parts: list[str] = []
    done = 0
    start = value.find('"')
    while start != -1:
        try:
            text, end = _scanstring(value, start + 1, False)
        except ValueError:
            break  # not JSON: the server says what is wrong with it
        if _NOT_IN_JSONB.search(text) is not None:
            parts.append(value[done:start])
            parts.append(json.dumps(_NOT_IN_JSONB.sub("\ufffd", text)))
            done = end
        start = value.find('"', end)
    if not parts:
        return value
    parts.append(value[done:])
    return "".join(parts)


def _json(value: str | None) -> str | None:
    """JSON text ``jsonb`` accepts: an escaped (or raw) U+0000 and an escaped lone
    surrogate (which Python's JSON keeps, and ``jsonb`` refuses) become U+FFFD."""
    if value is None:
        return None
    if "\\u0000" in value or "\\ud" in value or "\\uD" in value:
        value = _jsonb_strings(value)
    return _text(value)


def _key(value: str) -> str:
    """What the btree index of a user-chosen column holds of ``value``."""
    return value[:KEY_CHARS]


def _public_location(url: str) -> str:
    """``url`` without a password (in the user part or the query)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            user, host = netloc.rsplit("@", 1)
            netloc = f"{user.split(':', 1)[0]}@{host}"
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "password"])
        return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        return "postgresql://(unparsable URL)"


def _check_limit(limit: int | None, offset: int = 0) -> tuple[int | None, int]:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise InvalidInputError("limit", f"must be a non-negative integer or None, got {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidInputError("offset", f"must be a non-negative integer, got {offset!r}")
    return (None if limit is None else min(limit, _MAX_INT64)), min(offset, _MAX_INT64)


def _in(column: str, values: Sequence[str], params: list[Any], *, keyed: bool) -> str:
    """``column`` equal to one of ``values`` (NUL looked up as stored), through the
    column's prefix index when ``keyed``."""
    wanted = [_text(v) for v in values]
    if keyed:
        params.append([_key(v) for v in wanted if v is not None])
        params.append(wanted)
        return f"left({column}, {KEY_CHARS}) = ANY(%s) AND {column} = ANY(%s)"
    params.append(wanted)
    return f"{column} = ANY(%s)"


def _where(filters: EventFilters) -> tuple[str, list[Any]]:
    """``filters`` as a ``WHERE`` clause over ``events AS e``, with its parameters
    (the same meaning as :meth:`decision_trace.query.QueryFilters.of`)."""
    clauses: list[str] = []
    params: list[Any] = []
    if filters.start_ns is not None:
        if filters.start_ns > MAX_NS:
            clauses.append("FALSE")
        elif filters.start_ns > MIN_NS:
            clauses.append("e.start_ns >= %s")
            params.append(filters.start_ns)
    if filters.end_ns is not None:
        if filters.end_ns <= MIN_NS:
            clauses.append("FALSE")
        elif filters.end_ns <= MAX_NS:
            clauses.append("e.start_ns < %s")
            params.append(filters.end_ns)
    if filters.event_types is not None:
        clauses.append(_in("e.event_type", filters.event_types, params, keyed=True))
    if filters.actor_types is not None:
        clauses.append(_in("e.actor_type", filters.actor_types, params, keyed=True))
    if filters.actor_ids is not None:
        clauses.append(_in("e.actor_id", filters.actor_ids, params, keyed=True))
    object_types, object_ids = filters.object_types, filters.object_ids
    if object_ids is not None:
        sub = [_in("o.external_id", object_ids, params, keyed=True)]
        if object_types is not None:
            sub.append(_in("o.object_type", object_types, params, keyed=True))
        clauses.append(
            "(e.seq, e.start_ns) IN (SELECT o.event_seq, o.start_ns FROM event_objects AS o "
            f"WHERE {' AND '.join(sub)})"
        )
    elif object_types is not None:
        kinds = _in("o.object_type", object_types, params, keyed=False)
        clauses.append(
            "EXISTS (SELECT 1 FROM event_objects AS o WHERE o.event_seq = e.seq "
            f"AND o.start_ns = e.start_ns AND {kinds})"
        )
    if filters.tags is not None:
        clauses.append(
            "EXISTS (SELECT 1 FROM event_tags AS t WHERE t.event_seq = e.seq "
            f"AND t.start_ns = e.start_ns AND {_in('t.tag', filters.tags, params, keyed=True)})"
        )
    if filters.outcome is not None:
        clauses.append("e.outcome = %s")
        params.append(_text(filters.outcome))
    if filters.correlation_id is not None:
        clauses.append("e.trace_id = %s")
        params.append(_text(filters.correlation_id))
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    return where, params


_WORD = re.compile(r"\S+")


_WORDS_PER_QUERY = 1000
"""Words in one ``plainto_tsquery``: its AND tree is as deep as it has words, and the
server's stack gives out somewhere past 20,000 (100 kB of one-letter words is 50,000)."""


def _search_text(text: str) -> list[str] | None:
    """User text for ``plainto_tsquery``: every word, ANDed, no operators, in pieces of
    at most ``_WORDS_PER_QUERY`` distinct words (each a query, all ANDed); None when there
    is no word (as :func:`decision_trace.query.fts_query`)."""
    if not isinstance(text, str):
        raise InvalidInputError("text", f"must be a string, got {type(text).__name__}")
    cleaned = clean_text(text.replace("\x00", " "))
    words = list(dict.fromkeys(_WORD.findall(cleaned)))  # a word twice asks nothing more
    if not words:
        return None
    return [
        " ".join(words[i : i + _WORDS_PER_QUERY]) for i in range(0, len(words), _WORDS_PER_QUERY)
    ]


def _matches(pieces: Sequence[str]) -> str:
    """``events AS e`` matching every piece of :func:`_search_text`, as SQL."""
    return " AND ".join(["e.search @@ plainto_tsquery('simple', %s)"] * len(pieces))


def _object_links(external_id: str, object_type: ObjectType | str | None, params: list[Any]) -> str:
    """The SQL of the distinct events (``event_seq, start_ns``) that touched an object."""
    if not isinstance(external_id, str) or not external_id:
        raise InvalidInputError("external_id", "must be a non-empty string")
    sql = "SELECT DISTINCT event_seq, start_ns FROM event_objects WHERE " + _in(
        "external_id", [clean_text(external_id)], params, keyed=True
    )
    if object_type is not None:
        kind = ObjectType.parse(object_type, "object_type").value
        sql += " AND " + _in("object_type", [kind], params, keyed=True)
    return sql


# -- the chain (docs/proving.md) --------------------------------------------------------


def _unhex(value: object) -> bytes:
    """Stored hex as bytes; anything else (a damaged entry) as no bytes at all."""
    try:
        return bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        return b""


def _chain_head(conn: psycopg.Connection[Any]) -> tuple[int, bytes]:
    """``(position, hash)`` of the chain's last entry; ``(0, GENESIS)`` when it is empty."""
    row = conn.execute(_CHAIN_HEAD).fetchone()
    return (0, GENESIS) if row is None else (int(row[0]), _unhex(row[1]))


def _append_act(conn: psycopg.Connection[Any], values: dict[str, Any]) -> ChainEntry:
    """Append an act to the chain (the open transaction's last work: it takes the chain
    lock, held to the commit)."""
    conn.execute(f"SELECT pg_advisory_xact_lock({_CHAIN_LOCK_KEY})")
    position, previous = _chain_head(conn)
    entry = link_act(previous, position + 1, int(values["at_ns"]), act_body(values))
    conn.execute(
        f"INSERT INTO chain ({_CHAIN_COLUMNS}) VALUES (%s, %s, NULL, NULL, %s, %s, %s, %s, %s)",
        (
            entry.position,
            KIND_ACT,
            entry.start_ns,
            entry.skeleton.hex(),
            entry.commitment.hex(),
            entry.hash.hex(),
            entry.body,
        ),
    )
    return entry


def _chain_entry(row: Sequence[Any]) -> ChainEntry:
    """A ``_CHAIN_SELECT`` row as an entry (``event_seq`` left out)."""
    return ChainEntry(
        int(row[0]),
        int(row[1]),
        row[2],
        int(row[4]),
        _unhex(row[5]),
        _unhex(row[6]),
        _unhex(row[7]),
        row[8],
    )


def _pseudonym_key(conn: psycopg.Connection[Any]) -> bytes:
    row = conn.execute("SELECT value FROM ledger_meta WHERE key = 'pseudonym_key'").fetchone()
    if row is None:
        raise StoreError("the ledger has no pseudonym key (its schema predates the chain)")
    return bytes.fromhex(row[0])


_ERASE_EVENTS = (
    "UPDATE events AS e SET description = '', actor_id = u.alias, actor_name = NULL, "
    "actor_json = NULL, reasoning = NULL, decision_json = NULL, objects_json = NULL, "
    "tags_json = NULL, error = NULL, metadata_json = NULL, salt = NULL, payload = NULL "
    "FROM unnest(%s::bigint[], %s::text[]) AS u(seq, alias) WHERE e.seq = u.seq"
)
_ERASE_OBJECTS = (
    "UPDATE event_objects AS o SET external_id = u.alias "
    "FROM unnest(%s::bigint[], %s::integer[], %s::text[]) AS u(seq, position, alias) "
    "WHERE o.event_seq = u.seq AND o.position = u.position"
)


def _strip_payloads(conn: psycopg.Connection[Any], seqs: Sequence[int], key: bytes) -> None:
    """Remove the personal payload of the events ``seqs`` (in the open transaction):
    clear it, its salt and its hashed copy, put keyed pseudonyms in place of the actor's
    and the objects' ids, and drop the tags. The stored search vector is generated, so
    it follows; the old row versions go at the next ``VACUUM`` (``compact``)."""
    for i in range(0, len(seqs), 1000):
        part = list(seqs[i : i + 1000])
        events = conn.execute(
            "SELECT seq, actor_type, actor_id FROM events WHERE seq = ANY(%s)", (part,)
        ).fetchall()
        conn.execute(
            _ERASE_EVENTS,
            (
                [seq for seq, _, _ in events],
                [
                    pseudonym(key, actor_type or "actor", actor_id) if actor_id else None
                    for _, actor_type, actor_id in events
                ],
            ),
        )
        linked = conn.execute(
            "SELECT event_seq, position, object_type, external_id FROM event_objects "
            "WHERE event_seq = ANY(%s)",
            (part,),
        ).fetchall()
        if linked:
            conn.execute(
                _ERASE_OBJECTS,
                (
                    [seq for seq, _, _, _ in linked],
                    [position for _, position, _, _ in linked],
                    [pseudonym(key, kind, external_id) for _, _, kind, external_id in linked],
                ),
            )
        conn.execute("DELETE FROM event_tags WHERE event_seq = ANY(%s)", (part,))


_VERIFY_COLUMNS = f"{_COLUMNS}, e.salt, e.payload"
"""An event as verify reads it: its columns (JSON as text) in ``EVENT_COLUMNS`` order,
then its salt and hashed payload."""
_TEXT_PAYLOAD = frozenset(PAYLOAD_COLUMNS) - _JSON_COLUMNS
_PAYLOAD_INDEX = tuple(
    (number, column, EVENT_COLUMNS.index(column))
    for number, column in enumerate(PAYLOAD_COLUMNS, 1)
)


_EXACT_JSON = json.JSONDecoder(parse_float=Decimal)


def _loads(text: str) -> Any:
    """JSON decoded with exact numbers (``jsonb`` keeps numbers as exact decimals), by
    one decoder made once (``json.loads`` with an option makes one a call)."""
    return _EXACT_JSON.decode(text)


def _mismatch(row: Sequence[Any], payload: str, ids: Sequence[str]) -> str | None:
    """Which queryable column of ``row`` disagrees with the hashed ``payload``, or None.

    Text columns must be equal; JSON columns equal as decoded JSON (``jsonb`` keeps
    neither key order nor the spelling of numbers); the object ids equal, in order.
    """
    try:
        hashed = _loads(payload)
    except (ValueError, RecursionError):
        return "its payload (the hashed copy is not JSON)"
    if not isinstance(hashed, list) or len(hashed) != len(PAYLOAD_COLUMNS) + 2:
        return "its payload (the hashed copy is malformed)"
    for number, column, index in _PAYLOAD_INDEX:
        stored, copy = row[index], hashed[number]
        if column in _TEXT_PAYLOAD or stored is None or copy is None:
            agree = stored == copy
        else:
            try:
                agree = isinstance(copy, str) and _loads(copy) == _loads(stored)
            except (ValueError, RecursionError):
                agree = False
        if not agree:
            return f"its {column} (it disagrees with the hashed payload)"
    if hashed[-1] != list(ids):
        return "its object ids (they disagree with the hashed payload)"
    return None


def _found_event(
    position: int, row: Sequence[Any], linked: tuple[list[str], list[str]] | None
) -> FoundEvent:
    """What verify finds of one stored event (``_VERIFY_COLUMNS``), at ``position``."""
    types, ids = linked if linked is not None else ([], [])
    skeleton = _sha256(skeleton_bytes(_skeleton_of(row), types)).digest()
    salt, payload = row[-2], row[-1]
    if salt is None:
        erased = payload is None and erased_form(_payload_of(row), ids)
        mismatch = None if erased else "the payload of this erased event"
        return FoundEvent(position, row[1], skeleton, None, mismatch)
    salt_bytes = _unhex(salt)
    if payload is None or not salt_bytes:
        return FoundEvent(
            position, row[1], skeleton, b"", "its payload (the hashed copy or its salt is gone)"
        )
    commitment = _sha256(salt_bytes + payload.encode()).digest()
    return FoundEvent(position, row[1], skeleton, commitment, _mismatch(row, payload, ids))


def _objects_by_event(
    conn: psycopg.Connection[Any], seqs: Sequence[int]
) -> dict[tuple[int, int], tuple[list[str], list[str]]]:
    """``(seq, start time) -> (object types, object ids)`` of the events ``seqs``."""
    found: dict[tuple[int, int], tuple[list[str], list[str]]] = {}
    if not seqs:
        return found
    for seq, start_ns, object_type, external_id in conn.execute(
        "SELECT event_seq, start_ns, object_type, external_id FROM event_objects "
        "WHERE event_seq = ANY(%s) ORDER BY event_seq, start_ns, position",
        (list(seqs),),
    ):
        pair = found.get((seq, start_ns))
        if pair is None:
            found[(seq, start_ns)] = pair = ([], [])
        pair[0].append(object_type)
        pair[1].append(external_id)
    return found


def _iter_chain(
    conn: psycopg.Connection[Any],
) -> Generator[tuple[ChainEntry | None, FoundEvent | None], None, None]:
    """Every chain entry in position order with the event row it names
    (``chain LEFT JOIN events ON events.seq = chain.event_seq``), a page at a time; then
    every event no entry names, as ``(None, found)`` whose position is the event's
    ``seq`` (it has no chain position). Run it in one snapshot (REPEATABLE READ)."""
    after: int | None = None
    while True:
        keyset = "" if after is None else " WHERE position > %s"
        rows = conn.execute(
            f"{_CHAIN_SELECT}{keyset} ORDER BY position LIMIT {_CHAIN_PAGE}",
            () if after is None else (after,),
        ).fetchall()
        if not rows:
            break
        after = int(rows[-1][0])
        seqs = list({int(row[3]) for row in rows if row[3] is not None})
        events: dict[int, list[Any]] = {}
        if seqs:
            for event in conn.execute(
                f"SELECT {_VERIFY_COLUMNS} FROM events AS e WHERE e.seq = ANY(%s) "
                "ORDER BY e.seq, e.start_ns",
                (seqs,),
            ):
                events.setdefault(int(event[0]), []).append(event)
        objects = _objects_by_event(conn, seqs)
        for row in rows:
            entry = _chain_entry(row)
            held = events.pop(int(row[3]), None) if row[3] is not None else None
            if not held:
                yield entry, None
                continue
            first, *others = held
            yield entry, _found_event(entry.position, first, objects.get((first[0], first[4])))
            for other in others:  # two rows with one seq: the others were added
                yield None, _found_event(entry.position, other, objects.get((other[0], other[4])))
    after = None
    while True:
        keyset = "" if after is None else " AND e.seq > %s"
        rows = conn.execute(
            f"SELECT {_VERIFY_COLUMNS} FROM events AS e WHERE NOT EXISTS "
            f"(SELECT 1 FROM chain AS c WHERE c.event_seq = e.seq){keyset} "
            f"ORDER BY e.seq LIMIT {_CHAIN_PAGE}",
            () if after is None else (after,),
        ).fetchall()
        if not rows:
            return
        after = int(rows[-1][0])
        objects = _objects_by_event(conn, [int(row[0]) for row in rows])
        for row in rows:
            yield None, _found_event(int(row[0]), row, objects.get((row[0], row[4])))


def _adopt_events(conn: psycopg.Connection[Any]) -> None:
    """Give a ledger its id and pseudonym key, chain the events it held before it had a
    chain (in ``seq`` order, each with a salt and its hashed payload, computed from the
    values as stored), and record the adoption: the chain proves them unchanged since
    now, not before. Part of migration 2's transaction."""
    conn.execute(
        "INSERT INTO ledger_meta (key, value) VALUES ('ledger_id', %s), ('pseudonym_key', %s)",
        (str(uuid.uuid4()), secrets.token_hex(32)),
    )
    conn.execute(
        "CREATE TEMPORARY TABLE dt_adopt (seq bigint, salt text, payload text) ON COMMIT DROP"
    )
    position, previous = 0, GENESIS
    after: int | None = None
    while True:
        keyset = "" if after is None else " WHERE e.seq > %s"
        rows = conn.execute(
            f"{_SELECT}{keyset} ORDER BY e.seq LIMIT {_CHAIN_PAGE}",
            () if after is None else (after,),
        ).fetchall()
        if not rows:
            break
        after = int(rows[-1][0])
        objects = _objects_by_event(conn, [int(row[0]) for row in rows])
        pool = os.urandom(16 * len(rows))
        updates: list[tuple[object, ...]] = []
        chained: list[tuple[object, ...]] = []
        for n, row in enumerate(rows):
            types, ids = objects.get((row[0], row[4]), ([], []))
            salt = pool[16 * n : 16 * n + 16]
            payload = payload_bytes(_payload_of(row), ids)
            skeleton = _sha256(skeleton_bytes(_skeleton_of(row), types)).digest()
            commitment = _sha256(salt + payload).digest()
            position += 1
            previous = entry_hash(previous, position, KIND_EVENT, row[4], skeleton, commitment)
            updates.append((row[0], salt.hex(), payload.decode()))
            chained.append(
                (
                    position,
                    KIND_EVENT,
                    row[1],
                    row[0],
                    row[4],
                    skeleton.hex(),
                    commitment.hex(),
                    previous.hex(),
                    None,
                )
            )
        PostgresLedger._copy(conn, "COPY dt_adopt (seq, salt, payload) FROM STDIN", updates)
        conn.execute(
            "UPDATE events AS e SET salt = a.salt, payload = a.payload FROM dt_adopt AS a "
            "WHERE e.seq = a.seq"
        )
        conn.execute("DELETE FROM dt_adopt")
        PostgresLedger._copy(conn, _COPY_CHAIN, chained)
    if position:
        _append_act(
            conn,
            {"act": "adopt", "at_ns": time.time_ns(), "events": position, "up_to": position},
        )


_AFTER_MIGRATION: dict[int, Callable[[psycopg.Connection[Any]], None]] = {2: _adopt_events}
"""What a migration needs done in Python, after its script, in its transaction."""


class PostgresLedger:
    """A :class:`~decision_trace.storage.Ledger` in a PostgreSQL database (the schema
    first on the URL's ``search_path``, ``public`` by default).

    Args:
        url: A ``postgresql://`` (or ``postgres://``) URL, as libpq takes it.
        durability: Accepted for symmetry with SQLite; every commit waits for the
            server's write-ahead log flush (``synchronous_commit`` as the server sets it).
        create: If false, a database without a ledger schema is a :class:`StoreError`
            instead of getting one.
        read_only: Never create, migrate or write (connections are read-only).
        pool_size: Most read connections open at once.

    Raises:
        StoreError: the server cannot be reached, or the schema holds tables named like
            ours that are not a decision-trace ledger.
        SchemaVersionError: the ledger was written by a newer decision-trace.
    """

    def __init__(
        self,
        url: str,
        *,
        durability: Durability = "batch",
        create: bool = True,
        read_only: bool = False,
        pool_size: int = 4,
    ) -> None:
        self.url = url
        self.read_only = read_only
        self.durability = durability
        self._location = _public_location(url)
        options = {"application_name": "decision-trace"}
        if "connect_timeout" not in url:
            options["connect_timeout"] = "10"
        try:
            self._conninfo = psycopg.conninfo.make_conninfo(url, **options)
        except psycopg.ProgrammingError as exc:
            raise StoreError(f"cannot open {self._location}: {exc}") from None
        self._pool_size = max(1, int(pool_size))
        self._write_lock = threading.RLock()
        self._pool_lock = threading.Lock()
        self._writer: psycopg.Connection[Any] | None = None
        self._pool: ConnectionPool[Any] | None = None
        self._pid = os.getpid()
        self._closed = False
        self._partitions: set[str] = set()
        self._ahead_until = 0  # until when the partitions made ahead cover "next month"
        self._version = self._open(create)

    # -- connections ------------------------------------------------------------------

    def _connect(self, *, autocommit: bool = False) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self._conninfo, autocommit=autocommit)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to {self._location}: {exc}") from None
        if self.read_only:
            conn.execute("SET default_transaction_read_only = on")
            if not autocommit:
                conn.commit()
        return conn

    def _forked(self) -> None:
        """Forget (without closing) the connections a forked child inherited, and the
        locks: another thread of the parent may have held one at the fork. Call it before
        taking a lock."""
        if self._pid != os.getpid():
            _INHERITED.extend(x for x in (self._writer, self._pool) if x is not None)
            self._writer = None
            self._pool = None
            self._write_lock = threading.RLock()
            self._pool_lock = threading.Lock()
            self._pid = os.getpid()

    def _open(self, create: bool) -> int:
        """Check the schema (and, unless read-only, create or migrate it); return its
        version."""
        conn = self._connect()
        try:
            version = self._schema_version(conn)
            conn.commit()
            if version > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"{self._location} has schema version {version}, newer than the "
                    f"{SCHEMA_VERSION} this decision-trace understands; upgrade "
                    "decision-trace to read it"
                )
            if version == SCHEMA_VERSION or self.read_only or not create:
                if version == 0:
                    raise StoreError(f"no decision-trace ledger at {self._location}")
                if version < SCHEMA_VERSION and self.read_only:
                    raise StoreError(
                        f"{self._location} has schema version {version}; open it once "
                        "for writing to migrate it"
                    )
                if self.read_only:
                    return version
            if version == SCHEMA_VERSION:
                self._ensure_ahead(conn)
                return version
            with _locked(conn):
                version = self._schema_version(conn)  # another process may have done it
                if version > SCHEMA_VERSION:
                    raise SchemaVersionError(
                        f"{self._location} has schema version {version}, newer than the "
                        f"{SCHEMA_VERSION} this decision-trace understands"
                    )
                for number in range(version + 1, SCHEMA_VERSION + 1):
                    conn.execute(MIGRATIONS[number - 1])
                    after_script = _AFTER_MIGRATION.get(number)
                    if after_script is not None:
                        after_script(conn)
                    conn.execute(
                        f"INSERT INTO {VERSION_TABLE} (version) VALUES (%s) ON CONFLICT "
                        "(singleton) DO UPDATE SET version = excluded.version",
                        (number,),
                    )
            self._ensure_ahead(conn)
            return SCHEMA_VERSION
        except psycopg.Error as exc:
            raise StoreError(f"cannot open {self._location}: {exc}") from None
        finally:
            conn.close()

    def _schema_version(self, conn: psycopg.Connection[Any]) -> int:
        """The ledger's schema version, 0 when the schema has no ledger; raise if it
        holds tables named like ours without being one."""
        found = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL, to_regclass('events') IS NOT NULL, "
            "current_schema()",
            (VERSION_TABLE,),
        ).fetchone()
        assert found is not None
        has_version, has_events, schema = found
        if schema is None:
            raise StoreError(
                f"cannot open {self._location}: no schema of its search_path exists "
                "(create it first: CREATE SCHEMA ...)"
            )
        if not has_version:
            if has_events:
                raise StoreError(
                    f"{self._location} (schema {schema}) has an events table that is not "
                    "a decision-trace ledger; it was left untouched (give decision-trace a "
                    "database or schema of its own, e.g. ?options=-csearch_path%3Ddecisions)"
                )
            return 0
        row = conn.execute(f"SELECT version FROM {VERSION_TABLE}").fetchone()
        return int(row[0]) if row is not None else 0

    def _writer_connection(self) -> psycopg.Connection[Any]:
        if self._closed:
            raise StoreError("the ledger is closed")
        if self.read_only:
            raise StoreError(f"{self._location} was opened read-only")
        self._forked()
        if self._writer is None or self._writer.closed or self._writer.broken:
            if self._writer is not None:
                with suppress(psycopg.Error):
                    self._writer.close()
            self._writer = self._connect()
            try:
                # The staging tables live as long as the session, made outside any batch's
                # transaction (a batch rolled back must not take them with it).
                self._writer.execute(_CREATE_STAGE)
                self._writer.commit()
            except psycopg.Error as exc:
                self._drop_writer()
                raise StoreError(f"cannot write to {self._location}: {exc}") from None
        return self._writer

    def _drop_writer(self) -> None:
        if self._writer is not None:
            with suppress(psycopg.Error):
                self._writer.close()
        self._writer = None

    def _reader_pool(self) -> ConnectionPool[Any]:
        if self._closed:
            raise StoreError("the ledger is closed")
        self._forked()
        pool = self._pool
        if pool is None:
            with self._pool_lock:
                pool = self._pool
                if pool is None:
                    kwargs: dict[str, Any] = {"autocommit": True}
                    configure = _read_only_session if self.read_only else None
                    pool = ConnectionPool(
                        self._conninfo,
                        min_size=1,
                        max_size=self._pool_size,
                        kwargs=kwargs,
                        configure=configure,
                        open=True,
                        timeout=_READ_WAIT_S,
                        name="decision-trace-readers",
                    )
                    self._pool = pool
        return pool

    @contextmanager
    def _reading(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection for one read (each statement its own snapshot)."""
        try:
            with self._reader_pool().connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise StoreError(f"cannot read {self._location}: {exc}") from None

    def _read(self, work: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        """Run ``work`` on a pooled connection; once more on a fresh one if the first
        turned out to be dropped (a server restart, an idle timeout)."""
        for attempt in range(2):
            try:
                with self._reading() as conn:
                    return work(conn)
            except psycopg.OperationalError as exc:
                if attempt == 0 and _connection_lost(exc):
                    # The others idle in the pool were most likely dropped too (a server
                    # restart): let the pool test them and replace the dead ones first.
                    with suppress(Exception):
                        self._reader_pool().check()
                    continue
                raise StoreError(f"query failed on {self._location}: {exc}") from None
            except psycopg.Error as exc:
                raise StoreError(f"query failed on {self._location}: {exc}") from None
        raise AssertionError("unreachable")

    # -- partitions -------------------------------------------------------------------

    def _ensure_partitions(
        self, conn: psycopg.Connection[Any], wanted: Sequence[Partition] | set[Partition]
    ) -> None:
        """Create the partitions in ``wanted`` that do not exist (own transaction)."""
        missing = [p for p in wanted if p.suffix not in self._partitions]
        if not missing:
            return
        with _locked(conn):
            existing = self._existing_suffixes(conn)
            for partition in missing:
                if partition.suffix not in existing:
                    for statement in partition.create_sql():
                        conn.execute(statement)
                    existing.add(partition.suffix)
        self._partitions = existing

    def _ensure_ahead(self, conn: psycopg.Connection[Any]) -> None:
        """Make this month's partitions and the next month's; remember until when that
        holds (the writer's first write of a new month makes the following one)."""
        ahead = partitions_ahead(time.time_ns())
        self._ensure_partitions(conn, ahead)
        self._ahead_until = ahead[0].high if ahead[0].high is not None else MAX_NS

    @staticmethod
    def _existing_suffixes(conn: psycopg.Connection[Any]) -> set[str]:
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'events'::regclass"
        ).fetchall()
        return {str(name)[len("events_") :] for (name,) in rows}

    # -- writes -----------------------------------------------------------------------

    @property
    def location(self) -> str:
        return self._location

    def write(self, records: Sequence[EventRecord]) -> int:
        """Store ``records`` in one transaction; return how many were new.

        A record whose (id, start time) is stored already is skipped. A record the
        server refuses on its own account (malformed JSON, a time out of range, a value
        too long for an index) is left out and the others are written.

        Raises:
            RejectedRecordsError: some records cannot be stored because of what they
                hold; all the others were written.
            StoreError: nothing was written (the server is unreachable, say).
        """
        if not records:
            return 0
        unique: dict[tuple[object, object], EventRecord] = {}
        for record in records:
            unique.setdefault((record.id, record.start_ns), record)
        batch = list(unique.values())
        # Before the lock: a child forked while another thread of the parent was writing
        # inherits the lock held, by a thread it does not have (sync mode deadlocked).
        self._forked()
        with self._write_lock:
            for attempt in range(2):
                conn = self._writer_connection()
                try:
                    return self._write_or_reject(conn, batch)
                except _Reconnect as exc:
                    # The connection was dropped (a server restart, an idle timeout):
                    # once more on a new one; idempotent, so a commit in doubt is harmless.
                    if attempt:
                        raise StoreError(f"cannot write to {self._location}: {exc}") from None
        raise AssertionError("unreachable")

    def _write_or_reject(self, conn: psycopg.Connection[Any], batch: list[EventRecord]) -> int:
        try:
            repartitioned = False
            for attempt in range(_TRANSIENT_RETRIES + 1):
                try:
                    if time.time_ns() >= self._ahead_until:
                        self._ensure_ahead(conn)
                    wanted = {partition_of(int(r.start_ns)) for r in batch}
                    self._ensure_partitions(conn, wanted)
                    return self._write_batch(conn, batch)
                except psycopg.errors.CheckViolation as exc:
                    if exc.sqlstate != _NO_PARTITION or repartitioned:
                        raise
                    repartitioned = True
                    self._partitions = set()  # pruned by another process: look again
                except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                    # Writers racing on the same spans (replicated ingest, a re-sent
                    # batch): the server aborted this one; the batch is whole again.
                    if attempt == _TRANSIENT_RETRIES:
                        raise
                    time.sleep(random.uniform(0.005, 0.05) * (attempt + 1))
        except Exception as exc:
            if conn.broken or conn.closed or not _about_row(exc):
                self._drop_writer()
                if isinstance(exc, psycopg.OperationalError) and _connection_lost(exc):
                    raise _Reconnect(str(exc)) from None
                if isinstance(exc, psycopg.Error):
                    raise StoreError(f"cannot write to {self._location}: {exc}") from None
                raise
        written, rejected = self._write_each(conn, batch)
        if rejected:
            raise RejectedRecordsError(self._location, written, rejected)
        return written

    @staticmethod
    def _rows(
        records: Sequence[EventRecord], seqs: Sequence[int] | None
    ) -> tuple[
        list[tuple[object, ...]],
        list[tuple[object, ...]],
        list[tuple[object, ...]],
        list[_Sealed],
    ]:
        """The rows of ``records`` for COPY: events (led by ``seqs`` if given, else by the
        batch position; with a fresh salt and the hashed payload), objects and tags (keyed
        by the seq if given, else by id and start time); and each event's digests.

        The digests hash the values exactly as PostgreSQL is given them (after U+0000
        and lone surrogates became U+FFFD), so the stored payload is what was hashed.
        """
        events: list[tuple[object, ...]] = []
        objects: list[tuple[object, ...]] = []
        tags: list[tuple[object, ...]] = []
        sealed: list[_Sealed] = []
        pool = os.urandom(16 * len(records))
        for n, r in enumerate(records):
            start = r.start_ns
            lead = n if seqs is None else seqs[n]
            row = (
                lead,
                r.id,
                r.trace_id,
                r.parent_id,
                start,
                r.duration_ns,
                _text(r.event_type),
                _text(r.description),
                _text(r.actor_type),
                _text(r.actor_id),
                _text(r.actor_name),
                _json(r.actor_json),
                _text(r.reasoning),
                _json(r.decision_json),
                _json(r.objects_json),
                _tags_json(r.tags),
                _text(r.outcome),
                _text(r.error),
                _json(r.metadata_json),
                _text(r.service_name),
            )
            types: list[str | None] = []
            ids: list[str | None] = []
            if r.object_types:
                for position, (given_type, given_id) in enumerate(
                    zip(r.object_types, r.object_ids, strict=False)
                ):
                    object_type, external_id = _text(given_type), _text(given_id)
                    types.append(object_type)
                    ids.append(external_id)
                    if seqs is None:
                        objects.append((r.id, start, position, object_type, external_id))
                    else:
                        objects.append((lead, position, object_type, external_id, start))
            salt = pool[16 * n : 16 * n + 16]
            payload = payload_bytes(_payload_of(row), ids)  # type: ignore[arg-type]
            sealed.append(
                (
                    _sha256(skeleton_bytes(_skeleton_of(row), types)).digest(),  # type: ignore[arg-type]
                    _sha256(salt + payload).digest(),
                )
            )
            events.append((*row, salt.hex(), payload.decode()))
            if r.tags:
                for tag in dict.fromkeys(r.tags):
                    tags.append(
                        (r.id, start, _text(tag)) if seqs is None else (_text(tag), lead, start)
                    )
        return events, objects, tags, sealed

    @staticmethod
    def _copy(
        conn: psycopg.Connection[Any], statement: str, rows: list[tuple[object, ...]]
    ) -> None:
        if rows:
            with conn.cursor().copy(statement) as copy:
                write_row = copy.write_row
                for row in rows:
                    write_row(row)

    def _copy_batch(
        self, conn: psycopg.Connection[Any], records: Sequence[EventRecord]
    ) -> list[_Sealed]:
        """COPY ``records`` into the session's staging tables (in the open transaction);
        return their digests."""
        events, objects, tags, sealed = self._rows(records, None)
        self._copy(conn, _COPY_EVENTS, events)
        self._copy(conn, _COPY_OBJECTS, objects)
        self._copy(conn, _COPY_TAGS, tags)
        return sealed

    def _copy_new(
        self, conn: psycopg.Connection[Any], records: Sequence[EventRecord]
    ) -> list[_NewEvent] | None:
        """The fast path of a batch: leave out the records already stored, and COPY the
        rest straight into the ledger (in the open transaction). None if another writer
        stored one of them meanwhile (a unique violation): the caller then rolls back
        and moves the batch through the staging tables, ``ON CONFLICT DO NOTHING``."""
        stored = {
            (event_id, start)
            for event_id, start in conn.execute(
                "SELECT id, start_ns FROM events WHERE id = ANY(%s)", ([r.id for r in records],)
            )
        }
        if stored:
            records = [r for r in records if (r.id, r.start_ns) not in stored]
            if not records:
                return []
        seqs = [
            int(row[0])
            for row in conn.execute(
                "SELECT nextval('events_seq') FROM generate_series(1, %s)", (len(records),)
            )
        ]
        events, objects, tags, sealed = self._rows(records, seqs)
        try:
            with conn.transaction():  # a savepoint: a unique violation undoes only this
                self._copy(conn, _COPY_LEDGER_EVENTS, events)
                self._copy(conn, _COPY_LEDGER_OBJECTS, objects)
                self._copy(conn, _COPY_LEDGER_TAGS, tags)
        except psycopg.errors.UniqueViolation:
            return None
        return [
            (seq, r.id, r.start_ns, skeleton, commitment)
            for seq, r, (skeleton, commitment) in zip(seqs, records, sealed, strict=True)
        ]

    def _move_batch(
        self, conn: psycopg.Connection[Any], records: Sequence[EventRecord], *, clear: bool = False
    ) -> list[_NewEvent]:
        """Stage ``records`` and move the new ones into the ledger (in the open
        transaction); return those that were new. The staging tables empty themselves at
        commit; ``clear`` empties them now (for several moves in one transaction)."""
        sealed = self._copy_batch(conn, records)
        new = [
            (int(seq), records[n].id, records[n].start_ns, *sealed[n])
            for n, seq in conn.execute(_MOVE_BATCH).fetchall()
        ]
        if clear:
            # DELETE, not TRUNCATE: a TRUNCATE per record (new files, catalog updates)
            # made a 600-event batch with one refused record take a minute to write.
            for table in ("dt_stage_events", "dt_stage_objects", "dt_stage_tags"):
                conn.execute(f"DELETE FROM {table}")
        return new

    @staticmethod
    def _chain_events(conn: psycopg.Connection[Any], new: Sequence[_NewEvent]) -> None:
        """Chain the events just inserted (in the open transaction, as its last work):
        take the chain lock, which the transaction holds to its commit, and append their
        entries after the head."""
        if not new:
            return
        conn.execute(f"SELECT pg_advisory_xact_lock({_CHAIN_LOCK_KEY})")
        position, previous = _chain_head(conn)
        rows: list[tuple[object, ...]] = []
        for seq, event_id, start_ns, skeleton, commitment in new:
            position += 1
            previous = entry_hash(previous, position, KIND_EVENT, start_ns, skeleton, commitment)
            rows.append(
                (
                    position,
                    KIND_EVENT,
                    event_id,
                    seq,
                    start_ns,
                    skeleton.hex(),
                    commitment.hex(),
                    previous.hex(),
                    None,
                )
            )
        PostgresLedger._copy(conn, _COPY_CHAIN, rows)

    def _write_batch(self, conn: psycopg.Connection[Any], records: Sequence[EventRecord]) -> int:
        with conn.transaction():
            new = self._copy_new(conn, records)
            if new is None:
                new = self._move_batch(conn, records)
            self._chain_events(conn, new)
            return len(new)

    def _write_each(
        self, conn: psycopg.Connection[Any], records: Sequence[EventRecord]
    ) -> tuple[int, list[tuple[str, str]]]:
        """Write ``records`` one at a time, each in its own savepoint of one transaction,
        leaving out (and returning) those refused on their own account."""
        new: list[_NewEvent] = []
        rejected: list[tuple[str, str]] = []
        try:
            with conn.transaction():
                for record in records:
                    try:
                        with conn.transaction():  # a savepoint
                            added = self._move_batch(conn, [record], clear=True)
                    except Exception as exc:
                        if conn.broken or not _about_row(exc):
                            raise
                        rejected.append((str(record.id), f"{type(exc).__name__}: {exc}"))
                        continue
                    new.extend(added)
                self._chain_events(conn, new)
        except psycopg.Error as exc:
            self._drop_writer()
            raise StoreError(f"cannot write to {self._location}: {exc}") from None
        return len(new), rejected

    # -- reads ------------------------------------------------------------------------

    def _events(self, conn: psycopg.Connection[Any], rows: list[Any]) -> list[TraceEvent]:
        if not rows:
            return []
        return events_from_rows(rows, self._linked_objects(conn, rows))

    @staticmethod
    def _linked_objects(
        conn: psycopg.Connection[Any], rows: list[Any]
    ) -> dict[int, list[tuple[str, str]]]:
        objects: dict[int, list[tuple[str, str]]] = {}
        if not rows:
            return objects
        seqs = [row[0] for row in rows]
        starts = list({row[4] for row in rows})
        for event_seq, object_type, external_id in conn.execute(
            "SELECT event_seq, object_type, external_id FROM event_objects "
            "WHERE event_seq = ANY(%s) AND start_ns = ANY(%s) ORDER BY event_seq, position",
            (seqs, starts),
        ):
            linked = objects.get(event_seq)
            if linked is None:
                objects[event_seq] = [(object_type, external_id)]
            else:
                linked.append((object_type, external_id))
        return objects

    def _select(self, sql: str, params: Sequence[Any]) -> list[TraceEvent]:
        def work(conn: psycopg.Connection[Any]) -> list[TraceEvent]:
            return self._events(conn, conn.execute(sql, params).fetchall())

        result: list[TraceEvent] = self._read(work)
        return result

    def _scalar_rows(self, sql: str, params: Sequence[Any]) -> list[Any]:
        rows: list[Any] = self._read(lambda conn: conn.execute(sql, params).fetchall())
        return rows

    def query(
        self,
        filters: EventFilters,
        *,
        limit: int | None = 100,
        offset: int = 0,
        order: Order = "desc",
    ) -> list[TraceEvent]:
        sql_limit, sql_offset = _check_limit(limit, offset)
        if order not in ("desc", "asc"):
            raise InvalidInputError("order", f"must be 'desc' or 'asc', got {order!r}")
        direction = "DESC" if order == "desc" else "ASC"
        where, params = _where(filters)
        sql = (
            f"{_SELECT}{where} ORDER BY e.start_ns {direction}, e.seq {direction} "
            "LIMIT %s OFFSET %s"
        )
        return self._select(sql, [*params, sql_limit, sql_offset])

    def _paged(
        self,
        page: Callable[[tuple[int, int] | None, int], tuple[str, list[Any]]],
        batch_size: int = 500,
    ) -> Generator[TraceEvent, None, None]:
        """The events ``page`` selects, ``batch_size`` at a time, each batch read on a
        pooled connection that is returned before any event is yielded."""
        after: tuple[int, int] | None = None
        while True:
            sql, params = page(after, batch_size)

            def work(conn: psycopg.Connection[Any]) -> tuple[list[Any], list[TraceEvent]]:
                rows = conn.execute(sql, params).fetchall()  # noqa: B023
                return rows, self._events(conn, rows)

            rows, events = self._read(work)
            if not rows:
                return
            last = rows[-1]
            after = (int(last[4]), int(last[0]))
            yield from events

    def iter_events(
        self, filters: EventFilters, *, order: Order = "asc"
    ) -> Generator[TraceEvent, None, None]:
        if order not in ("desc", "asc"):
            raise InvalidInputError("order", f"must be 'desc' or 'asc', got {order!r}")
        direction = "DESC" if order == "desc" else "ASC"
        op = "<" if order == "desc" else ">"
        where, params = _where(filters)
        joiner = " AND " if where else " WHERE "
        order_by = f" ORDER BY e.start_ns {direction}, e.seq {direction} LIMIT %s"

        def page(after: tuple[int, int] | None, size: int) -> tuple[str, list[Any]]:
            if after is None:
                return _SELECT + where + order_by, [*params, size]
            return (
                f"{_SELECT}{where}{joiner}(e.start_ns, e.seq) {op} (%s, %s){order_by}",
                [*params, after[0], after[1], size],
            )

        return self._paged(page)

    def iter_records(
        self, *, after: int = 0, batch_size: int = 500
    ) -> Generator[tuple[int, EventRecord], None, None]:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError("batch_size", f"must be a positive integer, got {batch_size!r}")
        last = int(after)
        while True:

            def work(conn: psycopg.Connection[Any]) -> tuple[list[Any], list[EventRecord]]:
                rows = conn.execute(
                    f"{_SELECT} WHERE e.seq > %s ORDER BY e.seq LIMIT %s",
                    (last, batch_size),  # noqa: B023
                ).fetchall()
                return rows, records_from_rows(rows, self._linked_objects(conn, rows))

            rows, records = self._read(work)
            if not rows:
                return
            for row, record in zip(rows, records, strict=True):
                yield int(row[0]), record
            last = int(rows[-1][0])

    def count(self, filters: EventFilters) -> int:
        where, params = _where(filters)
        return int(self._scalar_rows(f"SELECT count(*) FROM events AS e{where}", params)[0][0])

    def search(self, text: str, *, limit: int | None = 50) -> list[TraceEvent]:
        sql_limit = _check_limit(limit)[0]
        words = _search_text(text)
        if words is None:
            return []
        return self._select(
            f"{_SELECT} WHERE {_matches(words)} ORDER BY e.seq DESC LIMIT %s",
            [*words, sql_limit],
        )

    def iter_search(self, text: str) -> Generator[TraceEvent, None, None]:
        words = _search_text(text)

        if words is None:
            return _nothing()
        match = _matches(words)

        def page(after: tuple[int, int] | None, size: int) -> tuple[str, list[Any]]:
            return (
                f"{_SELECT} WHERE {match} AND e.seq < %s ORDER BY e.seq DESC LIMIT %s",
                [*words, _MAX_INT64 if after is None else after[1], size],
            )

        return self._paged(page)

    def get_event(self, event_id: str) -> TraceEvent | None:
        if not isinstance(event_id, str):
            raise InvalidInputError("event_id", f"must be a string, got {type(event_id).__name__}")
        wanted = _text(clean_text(event_id.lower()))
        events = self._select(f"{_SELECT} WHERE e.id = %s ORDER BY e.seq LIMIT 1", [wanted])
        return events[0] if events else None

    def event_ids_with_prefix(self, prefix: str, *, limit: int | None = 10) -> list[str]:
        if not isinstance(prefix, str):
            raise InvalidInputError("prefix", f"must be a string, got {type(prefix).__name__}")
        wanted = prefix.strip().lower()
        if not re.fullmatch(r"[0-9a-f]+", wanted):
            raise InvalidInputError("prefix", f"must be hex characters, got {prefix!r}")
        above = wanted[:-1] + chr(ord(wanted[-1]) + 1)
        rows = self._scalar_rows(
            "SELECT DISTINCT id FROM events WHERE id >= %s AND id < %s ORDER BY id LIMIT %s",
            [wanted, above, _check_limit(limit)[0]],
        )
        return [str(row[0]) for row in rows]

    def object_types_of(self, external_id: str) -> list[ObjectType]:
        if not isinstance(external_id, str) or not external_id:
            raise InvalidInputError("external_id", "must be a non-empty string")
        params: list[Any] = []
        condition = _in("external_id", [clean_text(external_id)], params, keyed=True)
        rows = self._scalar_rows(
            f"SELECT DISTINCT object_type FROM event_objects WHERE {condition}", params
        )
        found: set[ObjectType] = set()
        for (value,) in rows:
            try:
                found.add(ObjectType.parse(str(value), "object_type"))
            except InvalidInputError:
                found.add(ObjectType.OTHER)
        return [kind for kind in ObjectType if kind in found]

    def trace_id_of(self, event_id: str) -> str | None:
        rows = self._scalar_rows(
            "SELECT trace_id FROM events WHERE id = %s ORDER BY seq LIMIT 1", [_text(event_id)]
        )
        return str(rows[0][0]) if rows else None

    def get_chain(self, event_id: str) -> ChainNode:
        if not isinstance(event_id, str):
            raise InvalidInputError("event_id", f"must be a string, got {type(event_id).__name__}")
        wanted = clean_text(event_id.lower())
        events = self._select(
            f"{_SELECT} WHERE e.trace_id = (SELECT trace_id FROM events WHERE id = %s "
            "ORDER BY seq LIMIT 1) ORDER BY e.start_ns, e.seq",
            [_text(wanted)],
        )
        chain = build_chain(events, wanted)
        if chain is None:
            raise EventNotFoundError(event_id)
        return chain

    def object_history(
        self,
        external_id: str,
        object_type: ObjectType | str | None = None,
        *,
        limit: int | None = None,
    ) -> list[TraceEvent]:
        sql_limit = _check_limit(limit)[0]
        params: list[Any] = []
        linked = _object_links(external_id, object_type, params)
        return self._select(
            f"{_SELECT} JOIN ({linked}) AS h ON h.event_seq = e.seq AND h.start_ns = e.start_ns "
            "ORDER BY e.start_ns, e.seq LIMIT %s",
            [*params, sql_limit],
        )

    def iter_object_history(
        self, external_id: str, object_type: ObjectType | str | None = None
    ) -> Generator[TraceEvent, None, None]:
        params: list[Any] = []
        linked = _object_links(external_id, object_type, params)

        def page(after: tuple[int, int] | None, size: int) -> tuple[str, list[Any]]:
            args = list(params)
            keyset = ""
            if after is not None:
                keyset = " WHERE (e.start_ns, e.seq) > (%s, %s)"
                args += [after[0], after[1]]
            return (
                f"{_SELECT} JOIN ({linked}) AS h ON h.event_seq = e.seq "
                f"AND h.start_ns = e.start_ns{keyset} ORDER BY e.start_ns, e.seq LIMIT %s",
                [*args, size],
            )

        return self._paged(page)

    def count_object_history(
        self, external_id: str, object_type: ObjectType | str | None = None
    ) -> int:
        params: list[Any] = []
        linked = _object_links(external_id, object_type, params)
        return int(self._scalar_rows(f"SELECT count(*) FROM ({linked}) AS h", params)[0][0])

    def summary(self, *, days: int | None = None) -> LedgerSummary:
        sql_days = _check_limit(days)[0]

        def grouped(conn: psycopg.Connection[Any], column: str) -> list[Any]:
            return conn.execute(
                f"SELECT {column}, count(*) AS n FROM events GROUP BY {column} "
                f"ORDER BY n DESC, {column} NULLS FIRST"
            ).fetchall()

        def work(conn: psycopg.Connection[Any]) -> LedgerSummary:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                row = conn.execute(
                    "SELECT count(*), min(start_ns), max(start_ns) FROM events"
                ).fetchone()
                assert row is not None
                total, first_ns, last_ns = row
                counts = conn.execute(
                    "SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT object_type, "
                    "external_id FROM event_objects) AS d) FROM event_objects"
                ).fetchone()
                assert counts is not None
                by_day = conn.execute(
                    "SELECT to_char(to_timestamp(start_ns / 1000000000) AT TIME ZONE 'UTC', "
                    "'YYYY-MM-DD') COLLATE \"C\" AS day, count(*) FROM events "
                    "GROUP BY day ORDER BY day DESC LIMIT %s",
                    (sql_days,),
                ).fetchall()
                version = conn.execute(f"SELECT version FROM {VERSION_TABLE}").fetchone()
                return LedgerSummary(
                    events=int(total),
                    objects=int(counts[0]),
                    distinct_objects=int(counts[1]),
                    first=datetime_from_ns(first_ns) if first_ns is not None else None,
                    last=datetime_from_ns(last_ns) if last_ns is not None else None,
                    by_event_type=tuple((str(t), int(n)) for t, n in grouped(conn, "event_type")),
                    by_actor_type=tuple(
                        (str(t) if t is not None else None, int(n))
                        for t, n in grouped(conn, "actor_type")
                    ),
                    by_outcome=tuple((str(o), int(n)) for o, n in grouped(conn, "outcome")),
                    by_day=tuple((str(d), int(n)) for d, n in by_day),
                    schema_version=int(version[0]) if version is not None else 0,
                )

        summary: LedgerSummary = self._read(work)
        return summary

    # -- retention and maintenance ----------------------------------------------------

    # -- the chain (docs/proving.md) ----------------------------------------------------

    def chain_state(self) -> ChainState:
        def work(conn: psycopg.Connection[Any]) -> ChainState:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                meta = conn.execute(
                    "SELECT value FROM ledger_meta WHERE key = 'ledger_id'"
                ).fetchone()
                head = conn.execute(_CHAIN_HEAD).fetchone()
                entries = conn.execute("SELECT count(*) FROM chain").fetchone()
            return ChainState(
                ledger_id=str(meta[0]) if meta else "",
                position=int(head[0]) if head else 0,
                entries=int(entries[0]) if entries else 0,
                hash=_unhex(head[1]) if head else GENESIS,
            )

        state: ChainState = self._read(work)
        return state

    def verify(
        self,
        *,
        checkpoints: Sequence[Checkpoint] = (),
        max_problems: int = 100,
        progress: Callable[[int], object] | None = None,
    ) -> VerifyReport:
        """Check the chain (:func:`decision_trace.integrity.verify_entries`), reading it
        and the events in one snapshot. Each event's stored payload is hashed, and its
        queryable columns must agree with that payload (else it is reported changed).

        An event no chain entry names is reported ``inserted`` at its ``seq`` (it has no
        chain position); those come after the chain's own problems.
        """

        def work(conn: psycopg.Connection[Any]) -> VerifyReport:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                acts: list[Act] = []
                for row in conn.execute(f"{_CHAIN_SELECT} WHERE kind = 1 ORDER BY position"):
                    act = decode_act(_chain_entry(row))
                    if act is not None:
                        acts.append(act)
                chain = _iter_chain(conn)
                try:
                    return verify_entries(
                        chain,
                        acts,
                        checkpoints=checkpoints,
                        max_problems=max_problems,
                        progress=progress,
                    )
                finally:
                    chain.close()

        report: VerifyReport = self._read(work)
        return report

    def erase(
        self,
        subject_type: str,
        subject_id: str,
        *,
        reason: str,
        requested_by: str,
        dry_run: bool = False,
    ) -> ErasureReport:
        """Remove the personal payload of every event involving a subject (a user actor,
        or an object), keep their skeletons, and record the erasure in the chain (as
        :meth:`decision_trace.store.Store.erase`). The old row versions leave the
        tables at the next ``VACUUM`` (:meth:`compact`)."""
        subject_type, subject_id = parse_subject(f"{subject_type}:{subject_id}")
        if not reason.strip() or not requested_by.strip():
            raise InvalidInputError("reason", "an erasure needs a reason and who asked for it")
        params: list[Any] = []
        if subject_type == USER_SUBJECT:
            where = (
                _in("e.actor_type", [ActorType.USER.value], params, keyed=True)
                + " AND "
                + _in("e.actor_id", [subject_id], params, keyed=True)
            )
        else:
            kind = ObjectType.parse(subject_type, "subject type").value
            where = (
                "(e.seq, e.start_ns) IN (SELECT o.event_seq, o.start_ns FROM event_objects "
                "AS o WHERE "
                + _in("o.object_type", [kind], params, keyed=True)
                + " AND "
                + _in("o.external_id", [subject_id], params, keyed=True)
                + ")"
            )
        find = (
            "SELECT e.seq, e.id, c.position FROM events AS e LEFT JOIN chain AS c "
            f"ON c.event_seq = e.seq WHERE {where} AND e.salt IS NOT NULL "
            "ORDER BY c.position NULLS LAST, e.seq"
        )

        def statements(conn: psycopg.Connection[Any]) -> ErasureReport:
            key = _pseudonym_key(conn)
            found = conn.execute(find, params).fetchall()
            alias = pseudonym(key, subject_type, subject_id)
            position = None
            if found and not dry_run:
                _strip_payloads(conn, [int(seq) for seq, _, _ in found], key)
                positions = [int(p) for _, _, p in found if p is not None]
                position = _append_act(
                    conn, erasure_act(alias, subject_type, reason, requested_by, positions)
                ).position
            return ErasureReport(
                subject_type=subject_type,
                pseudonym=alias,
                events=len(found),
                event_ids=tuple(str(event_id) for _, event_id, _ in found),
                position=position,
            )

        if dry_run:

            def look(conn: psycopg.Connection[Any]) -> ErasureReport:
                with conn.transaction():
                    return statements(conn)

            report: ErasureReport = self._read(look)
            return report
        self._forked()
        with self._write_lock:
            conn = self._writer_connection()
            try:
                with conn.transaction():
                    return statements(conn)
            except psycopg.Error as exc:
                self._drop_writer()
                raise StoreError(f"cannot erase in {self._location}: {exc}") from None

    def prune(
        self,
        older_than_ns: int,
        *,
        dry_run: bool = False,
        force: bool = False,
        keep_skeleton: bool = False,
    ) -> PruneReport:
        """Delete events that started before ``older_than_ns`` (with their objects and
        tags) and record the prune in the chain (their chain entries stay, so ``verify``
        tells them pruned, not deleted); with ``keep_skeleton``, remove only their
        payloads (as an erasure does); with ``dry_run``, only count them. ``force``
        changes nothing here: a PostgreSQL ledger does not ship (it is the destination),
        so nothing waits in it.

        Partitions that lie wholly before the cut-off are dropped (their space goes back
        to the operating system at once); only the partition the cut-off falls in is
        deleted from row by row.
        """
        cutoff = int(older_than_ns)
        self._forked()  # before the lock, as in write()
        with self._write_lock:
            conn = self._writer_connection()
            try:
                with _locked(conn):
                    if keep_skeleton:
                        counts = self._prune_payloads(conn, cutoff, dry_run=dry_run)
                    else:
                        counts = self._prune_events(conn, cutoff, dry_run=dry_run)
                    if counts["events"] and not dry_run:
                        _append_act(
                            conn,
                            prune_act(cutoff, counts["events"], keep_skeleton=keep_skeleton),
                        )
            except psycopg.Error as exc:
                self._drop_writer()
                raise StoreError(f"cannot prune {self._location}: {exc}") from None
        return PruneReport(
            events=counts["events"],
            objects=counts["event_objects"],
            tags=counts["event_tags"],
            kept_skeleton=keep_skeleton,
        )

    @staticmethod
    def _prune_payloads(
        conn: psycopg.Connection[Any], cutoff: int, *, dry_run: bool
    ) -> dict[str, int]:
        """``prune --keep-skeleton``: strip the payloads of the events before ``cutoff``
        that still have one (in the open transaction); count them, their objects, tags."""
        seqs = [
            int(seq)
            for (seq,) in conn.execute(
                "SELECT seq FROM events WHERE start_ns < %s AND salt IS NOT NULL ORDER BY seq",
                (cutoff,),
            )
        ]
        counts = {"events": len(seqs), "event_objects": 0, "event_tags": 0}
        if not seqs:
            return counts
        for table in ("event_objects", "event_tags"):
            row = conn.execute(
                _sql.SQL(
                    "SELECT count(*) FROM {} WHERE event_seq = ANY(%s) AND start_ns < %s"
                ).format(_sql.Identifier(table)),
                (seqs, cutoff),
            ).fetchone()
            counts[table] = int(row[0]) if row is not None else 0
        if not dry_run:
            _strip_payloads(conn, seqs, _pseudonym_key(conn))
        return counts

    def _prune_events(
        self, conn: psycopg.Connection[Any], cutoff: int, *, dry_run: bool
    ) -> dict[str, int]:
        """Drop or delete the events before ``cutoff`` (in the open transaction); count
        them, their objects and tags. Their chain entries stay."""
        counts = {table: 0 for table in TABLES}
        dropped: list[Partition] = []
        for suffix in sorted(self._existing_suffixes(conn)):
            partition = partition_named(suffix)
            if partition is None:
                continue  # not one of ours: never touched
            if partition.covered_by(cutoff):
                for table in TABLES:
                    row = conn.execute(
                        _sql.SQL("SELECT count(*) FROM {}").format(
                            _sql.Identifier(partition.name(table))
                        )
                    ).fetchone()
                    counts[table] += int(row[0]) if row is not None else 0
                dropped.append(partition)
            elif partition.low is None or partition.low < cutoff:
                for table in TABLES:
                    name = _sql.Identifier(partition.name(table))
                    statement = (
                        "SELECT count(*) FROM {} WHERE start_ns < %s"
                        if dry_run
                        else "WITH gone AS (DELETE FROM {} WHERE start_ns < %s "
                        "RETURNING 1) SELECT count(*) FROM gone"
                    )
                    row = conn.execute(_sql.SQL(statement).format(name), (cutoff,)).fetchone()
                    counts[table] += int(row[0]) if row is not None else 0
        if not dry_run:
            for partition in dropped:
                for table in reversed(TABLES):
                    conn.execute(
                        _sql.SQL("DROP TABLE {}").format(_sql.Identifier(partition.name(table)))
                    )
                self._partitions.discard(partition.suffix)
        return counts

    def size_bytes(self) -> tuple[int, int]:
        rows = self._scalar_rows(
            "SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0) FROM pg_inherits AS i "
            "WHERE i.inhparent = ANY(ARRAY['events'::regclass, 'event_objects'::regclass, "
            "'event_tags'::regclass])",
            [],
        )
        return int(rows[0][0]), 0

    def confirm_writes(self) -> bool:
        return True

    def check(self) -> list[str]:
        """The schema version and the partitions' consistency: every range has its
        partition in all three tables, each with the bounds its name says."""

        def work(conn: psycopg.Connection[Any]) -> list[str]:
            problems: list[str] = []
            version = self._schema_version(conn)
            if version != SCHEMA_VERSION:
                problems.append(f"schema version {version}, expected {SCHEMA_VERSION}")
                return problems
            rows = conn.execute(
                "SELECT p.relname, c.relname, pg_get_expr(c.relpartbound, c.oid) "
                "FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
                "JOIN pg_class AS p ON p.oid = i.inhparent "
                "WHERE i.inhparent = ANY(ARRAY['events'::regclass, "
                "'event_objects'::regclass, 'event_tags'::regclass])"
            ).fetchall()
            by_table: dict[str, set[str]] = {table: set() for table in TABLES}
            for parent, child, bound in rows:
                suffix = str(child)[len(str(parent)) + 1 :]
                partition = partition_named(suffix)
                by_table[str(parent)].add(suffix)
                if partition is None:
                    problems.append(f"partition {child} is not one decision-trace made")
                    continue
                low = "MINVALUE" if partition.low is None else f"'{partition.low}'"
                high = "MAXVALUE" if partition.high is None else f"'{partition.high}'"
                expected = f"FOR VALUES FROM ({low}) TO ({high})"
                if str(bound) != expected:
                    problems.append(f"partition {child} has bounds {bound}, expected {expected}")
            every = set().union(*by_table.values())
            for table, suffixes in by_table.items():
                for suffix in sorted(every - suffixes):
                    problems.append(f"partition {table}_{suffix} is missing")
            return problems

        found: list[str] = self._read(work)
        return found

    def compact(self) -> bool:
        """``VACUUM`` the three tables: dead rows of pruned events give their space back
        to the tables (dropped partitions gave theirs back at once)."""
        if self.read_only:
            raise StoreError(f"{self._location} was opened read-only")
        try:
            conn = self._connect(autocommit=True)
        except StoreError:
            raise
        try:
            for table in TABLES:
                conn.execute(_sql.SQL("VACUUM {}").format(_sql.Identifier(table)))
        except psycopg.Error as exc:
            raise StoreError(f"cannot compact {self._location}: {exc}") from None
        finally:
            conn.close()
        return True

    def close(self) -> None:
        """Close the writer connection and the read pool. Idempotent."""
        self._closed = True
        if self._pid != os.getpid():
            return  # a forked child: the connections are the parent's
        with self._write_lock:
            self._drop_writer()
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            with suppress(Exception):
                pool.close(timeout=5.0)

    def __repr__(self) -> str:
        return f"PostgresLedger({self._location!r})"


def _nothing() -> Generator[TraceEvent, None, None]:
    yield from ()


def _read_only_session(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SET default_transaction_read_only = on")


def _tags_json(tags: Sequence[str]) -> str | None:
    if not tags:
        return None
    return json.dumps([_text(tag) for tag in tags], ensure_ascii=True, separators=(",", ":"))
