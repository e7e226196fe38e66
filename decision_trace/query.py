"""The read side: filters become SQL, rows become :class:`TraceEvent` models.

Every function takes an open SQLite connection from
:meth:`decision_trace.store.Store.reader`; every value is bound as a parameter.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import integrity
from ._rows import EVENT_COLUMNS, build_chain, events_from_rows, records_from_rows
from .errors import EventNotFoundError, InvalidInputError, StoreError
from .models import ChainNode, ObjectType, TraceEvent, clean_text
from .record import MAX_NS, MIN_NS, EventRecord, datetime_from_ns, loads_json
from .storage.filters import EventFilters, Order
from .storage.outbox import DestinationStatus, Rejection

__all__ = ["ChainNode", "QueryFilters", "fts_query"]

_COLUMNS = ", ".join(f"e.{column}" for column in EVENT_COLUMNS)
_SELECT = f"SELECT {_COLUMNS} FROM events AS e"


def _placeholders(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


@dataclass(frozen=True)
class QueryFilters:
    """:class:`~decision_trace.storage.filters.EventFilters` as an SQLite ``WHERE`` clause
    over ``events AS e``, with its parameters."""

    where: str
    params: tuple[Any, ...]
    tags: tuple[str, ...] | None = None
    """The tag filter's values (its clause is in ``where``), for :meth:`tags_first`."""

    def tags_first(self) -> QueryFilters:
        """The same filter with the tag clause as a set of rows to look up, instead of a
        check on each candidate event: far faster for a tag few events carry, far
        slower (a sort of them all) for a tag many carry; see :func:`_rare_tags`."""
        if self.tags is None:
            return self
        exists = _TAG_EXISTS.format(values=_placeholders(self.tags))
        lookup = _TAG_LOOKUP.format(values=_placeholders(self.tags))
        return QueryFilters(self.where.replace(exists, lookup, 1), self.params, None)

    @classmethod
    def build(cls, **filters: Any) -> QueryFilters:
        """Validate ``query()``'s arguments (see :meth:`EventFilters.build`) into SQL."""
        return cls.of(EventFilters.build(**filters))

    @classmethod
    def of(cls, filters: EventFilters) -> QueryFilters:
        """The SQL of already validated ``filters``.

        A time bound before or after every time a ledger can hold (1677-09-21 to
        2262-04-11 UTC) is clamped to that range, so it selects all events or none.
        """
        clauses: list[str] = []
        params: list[Any] = []
        if filters.start_ns is not None:
            if filters.start_ns > MAX_NS:
                clauses.append("0")  # after every storable time: nothing matches
            elif filters.start_ns > MIN_NS:  # (at or before the first: no bound at all)
                clauses.append("e.start_ns >= ?")
                params.append(filters.start_ns)
        if filters.end_ns is not None:
            if filters.end_ns <= MIN_NS:
                clauses.append("0")  # nothing starts before the first storable time
            elif filters.end_ns <= MAX_NS:  # (past the last: no bound at all)
                clauses.append("e.start_ns < ?")
                params.append(filters.end_ns)
        for column, values in (
            ("e.event_type", filters.event_types),
            ("e.actor_type", filters.actor_types),
            ("e.actor_id", filters.actor_ids),
        ):
            if values is not None:
                clauses.append(f"{column} IN ({_placeholders(values)})")
                params.extend(values)
        object_types, object_ids = filters.object_types, filters.object_ids
        if object_types is not None or object_ids is not None:
            # With ids: the (few) events linked to them, found by the object index. Types
            # alone: each candidate event's own links, by primary key (the '+' keeps
            # SQLite from scanning every link of the type once per event instead).
            sub = [] if object_ids is not None else ["o.event_rowid = e.rowid"]
            if object_types is not None:
                sub.append(f"+o.object_type IN ({_placeholders(object_types)})")
                params.extend(object_types)
            if object_ids is not None:
                if object_types is not None:
                    sub[-1] = sub[-1][1:]  # both columns lead the object index: use it
                sub.append(f"o.external_id IN ({_placeholders(object_ids)})")
                params.extend(object_ids)
                clauses.append(
                    "e.rowid IN (SELECT o.event_rowid FROM event_objects AS o "
                    f"WHERE {' AND '.join(sub)})"
                )
            else:
                clauses.append(
                    f"EXISTS (SELECT 1 FROM event_objects AS o WHERE {' AND '.join(sub)})"
                )
        if filters.tags is not None:
            clauses.append(_TAG_EXISTS.format(values=_placeholders(filters.tags)))
            params.extend(filters.tags)
        if filters.outcome is not None:
            clauses.append("e.outcome = ?")
            params.append(filters.outcome)
        if filters.correlation_id is not None:
            clauses.append("e.trace_id = ?")
            params.append(filters.correlation_id)
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        return cls(where=where, params=tuple(params), tags=filters.tags)


_TAG_EXISTS = (
    "EXISTS (SELECT 1 FROM event_tags AS t WHERE t.event_rowid = e.rowid AND t.tag IN ({values}))"
)
_TAG_LOOKUP = "e.rowid IN (SELECT t.event_rowid FROM event_tags AS t WHERE t.tag IN ({values}))"

RARE_TAG_ROWS = 2_000
"""Up to this many events with the filter's tags, a page of events is found from the tag
index and sorted (milliseconds); beyond it, by walking the time index newest first and
checking each event's tags, which finds a page of a common tag at once but walks the
whole ledger for a tag no event has (2 s on 1,000,000 events)."""


def _rare_tags(conn: sqlite3.Connection, tags: tuple[str, ...]) -> bool:
    """Whether at most :data:`RARE_TAG_ROWS` events carry one of ``tags`` (one bounded
    read of the tag index)."""
    found = _run(
        conn,
        f"SELECT count(*) FROM (SELECT 1 FROM event_tags WHERE tag IN ({_placeholders(tags)}) "
        "LIMIT ?)",
        [*tags, RARE_TAG_ROWS + 1],
    )
    return int(found[0][0]) <= RARE_TAG_ROWS


def _check_limit(limit: int | None, offset: int) -> tuple[int, int]:
    """``(limit, offset)`` as SQL binds them: -1 for no limit; counts beyond a 64-bit
    integer (more rows than a ledger can hold) are clamped to the largest one."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise InvalidInputError("limit", f"must be a non-negative integer or None, got {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidInputError("offset", f"must be a non-negative integer, got {offset!r}")
    return (-1 if limit is None else min(int(limit), _MAX_INT64)), min(int(offset), _MAX_INT64)


_MAX_INT64 = 2**63 - 1


def _run(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.Error as exc:
        raise StoreError(f"query failed: {exc}") from exc


def _linked_objects(conn: sqlite3.Connection, rows: list[Any]) -> dict[int, list[tuple[str, str]]]:
    """``rowid -> [(object_type, external_id), ...]`` of ``events`` rows, in order."""
    objects: dict[int, list[tuple[str, str]]] = {}
    rowids = [row[0] for row in rows]
    for chunk_start in range(0, len(rowids), 500):
        chunk = rowids[chunk_start : chunk_start + 500]
        for event_rowid, object_type, external_id in _run(
            conn,
            "SELECT event_rowid, object_type, external_id FROM event_objects "
            f"WHERE event_rowid IN ({_placeholders(chunk)}) ORDER BY event_rowid, position",
            chunk,
        ):
            linked = objects.get(event_rowid)
            if linked is None:
                objects[event_rowid] = [(object_type, external_id)]
            else:
                linked.append((object_type, external_id))
    return objects


def _events(conn: sqlite3.Connection, rows: list[Any]) -> list[TraceEvent]:
    """Turn ``events`` rows (``_COLUMNS`` order) into models, objects included."""
    if not rows:
        return []
    return events_from_rows(rows, _linked_objects(conn, rows))


def iter_records(
    conn: sqlite3.Connection, *, after: int = 0, batch_size: int = 500
) -> Generator[tuple[int, EventRecord], None, None]:
    """``(rowid, record)`` of every stored event with a rowid above ``after``, in rowid
    (storage) order, as written: ``batch_size`` rows a short read transaction."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError("batch_size", f"must be a positive integer, got {batch_size!r}")
    last = int(after)
    while True:
        own_transaction = not conn.in_transaction
        try:
            if own_transaction:
                conn.execute("BEGIN")
            rows = conn.execute(
                f"{_SELECT} WHERE e.rowid > ? ORDER BY e.rowid LIMIT ?", (last, batch_size)
            ).fetchall()
            records = records_from_rows(rows, _linked_objects(conn, rows)) if rows else []
        except sqlite3.Error as exc:
            raise StoreError(f"query failed: {exc}") from exc
        finally:
            if own_transaction and conn.in_transaction:
                conn.execute("COMMIT")
        if not rows:
            return
        for row, record in zip(rows, records, strict=True):
            yield int(row[0]), record
        last = int(rows[-1][0])


def query_events(
    conn: sqlite3.Connection,
    filters: QueryFilters,
    *,
    limit: int | None,
    offset: int = 0,
    order: Order = "desc",
) -> list[TraceEvent]:
    """Events matching ``filters``, newest first (``order="desc"``) or oldest first."""
    sql_limit, sql_offset = _check_limit(limit, offset)
    if order not in ("desc", "asc"):
        raise InvalidInputError("order", f"must be 'desc' or 'asc', got {order!r}")
    direction = "DESC" if order == "desc" else "ASC"
    if filters.tags is not None and _rare_tags(conn, filters.tags):
        filters = filters.tags_first()
    sql = f"{_SELECT}{filters.where} ORDER BY e.start_ns {direction}, e.rowid {direction}"
    params = list(filters.params)
    if limit is not None or offset:
        sql += " LIMIT ? OFFSET ?"
        params += [sql_limit, sql_offset]
    return _events(conn, _run(conn, sql, params))


def count_events(conn: sqlite3.Connection, filters: QueryFilters) -> int:
    """How many events match ``filters``."""
    # A count visits every match: from the tag index it never walks the other events.
    filters = filters.tags_first()
    return int(_run(conn, f"SELECT count(*) FROM events AS e{filters.where}", filters.params)[0][0])


_TOKEN = re.compile(r"\S+")


def fts_query(text: str) -> str | None:
    """Turn user text into a safe FTS5 query: every word quoted, words ANDed.

    Quotes, ``AND``/``OR``/``NEAR``, ``*``, ``-``, ``:`` and parentheses are matched as
    text, never parsed as FTS5 syntax. Returns None when the text has no words.
    """
    if not isinstance(text, str):
        raise InvalidInputError("text", f"must be a string, got {type(text).__name__}")
    cleaned = clean_text(text.replace("\x00", " "))
    tokens = ['"' + token.replace('"', '""') + '"' for token in _TOKEN.findall(cleaned)]
    return " ".join(tokens) if tokens else None


def search_events(conn: sqlite3.Connection, text: str, *, limit: int | None) -> list[TraceEvent]:
    """Events whose description, reasoning or context contain every word of ``text``,
    most recently stored first."""
    sql_limit = _check_limit(limit, 0)[0]
    match = fts_query(text)
    if match is None:
        return []
    return _events(conn, _run(conn, _SEARCH_SQL, [match, sql_limit]))


_SEARCH_SQL = (
    f"{_SELECT} WHERE e.rowid IN (SELECT rowid FROM events_fts WHERE events_fts MATCH ? "
    "ORDER BY rowid DESC LIMIT ?) ORDER BY e.rowid DESC"
)
_SEARCH_PAGE_SQL = (
    f"{_SELECT} WHERE e.rowid IN (SELECT rowid FROM events_fts WHERE events_fts MATCH ? "
    "AND rowid < ? ORDER BY rowid DESC LIMIT ?) ORDER BY e.rowid DESC"
)


def iter_search(
    conn: sqlite3.Connection, text: str, *, batch_size: int = 500
) -> Generator[TraceEvent, None, None]:
    """:func:`search_events` without a limit, read ``batch_size`` rows at a time, each
    batch in its own short read transaction (see :func:`iter_events`)."""
    match = fts_query(text)
    if match is None:
        return

    def page(after: tuple[int, int] | None, size: int) -> tuple[str, list[Any]]:
        return _SEARCH_PAGE_SQL, [match, _MAX_ROWID if after is None else after[1], size]

    yield from _paged(conn, page, batch_size)


def get_event(conn: sqlite3.Connection, event_id: str) -> TraceEvent | None:
    """The event with this id, or None."""
    if not isinstance(event_id, str):
        raise InvalidInputError("event_id", f"must be a string, got {type(event_id).__name__}")
    wanted = clean_text(event_id.lower())
    events = _events(conn, _run(conn, f"{_SELECT} WHERE e.id = ?", [wanted]))
    return events[0] if events else None


_HEX = re.compile(r"^[0-9a-f]+$")


def event_ids_with_prefix(
    conn: sqlite3.Connection, prefix: str, *, limit: int | None = 10
) -> list[str]:
    """The stored event ids that start with ``prefix`` (hex, any case), in id order.

    Raises:
        InvalidInputError: ``prefix`` is not hex text.
    """
    if not isinstance(prefix, str):
        raise InvalidInputError("prefix", f"must be a string, got {type(prefix).__name__}")
    wanted = prefix.strip().lower()
    if not _HEX.match(wanted):
        raise InvalidInputError("prefix", f"must be hex characters, got {prefix!r}")
    sql_limit = _check_limit(limit, 0)[0]
    # A range on the unique id index: every id starting with the prefix sorts at or after
    # it and before the prefix with its last character incremented ('f' + 1 is 'g').
    above = wanted[:-1] + chr(ord(wanted[-1]) + 1)
    rows = _run(
        conn,
        "SELECT id FROM events WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
        [wanted, above, sql_limit],
    )
    return [str(row[0]) for row in rows]


def object_types_of(conn: sqlite3.Connection, external_id: str) -> list[ObjectType]:
    """The types of the objects with this external id that some stored event touched,
    in the order of :class:`ObjectType`."""
    if not isinstance(external_id, str) or not external_id:
        raise InvalidInputError("external_id", "must be a non-empty string")
    rows = _run(
        conn,
        "SELECT DISTINCT object_type FROM event_objects WHERE external_id = ?",
        [clean_text(external_id)],
    )
    found: set[ObjectType] = set()
    for (value,) in rows:
        try:
            found.add(ObjectType.parse(str(value), "object_type"))
        except InvalidInputError:  # a type a newer release wrote reads back as OTHER
            found.add(ObjectType.OTHER)
    return [kind for kind in ObjectType if kind in found]


def trace_id_of(conn: sqlite3.Connection, event_id: str) -> str | None:
    """The trace id of a stored event, or None."""
    rows = _run(conn, "SELECT trace_id FROM events WHERE id = ?", [event_id])
    return str(rows[0][0]) if rows else None


def get_chain(conn: sqlite3.Connection, event_id: str) -> ChainNode:
    """The tree containing ``event_id``: its topmost stored ancestor and all descendants.

    Raises:
        EventNotFoundError: no stored event has that id.
    """
    if not isinstance(event_id, str):
        raise InvalidInputError("event_id", f"must be a string, got {type(event_id).__name__}")
    wanted = clean_text(event_id.lower())
    # One statement: the event is among its trace's events, so its trace id is all that
    # is needed, and no rows at all means no such event.
    events = _events(
        conn,
        _run(
            conn,
            f"{_SELECT} WHERE e.trace_id = (SELECT trace_id FROM events WHERE id = ?) "
            "ORDER BY e.start_ns, e.rowid",
            [wanted],
        ),
    )
    chain = build_chain(events, wanted)
    if chain is None:
        raise EventNotFoundError(event_id)
    return chain


def object_history(
    conn: sqlite3.Connection,
    external_id: str,
    object_type: ObjectType | str | None = None,
    *,
    limit: int | None = None,
) -> list[TraceEvent]:
    """Every event that touched the object, oldest first."""
    sql_limit = _check_limit(limit, 0)[0]
    linked, params = _object_links(external_id, object_type)
    sql = (
        f"{_SELECT} JOIN ({linked}) AS h ON h.event_rowid = e.rowid "
        "ORDER BY h.start_ns, e.rowid LIMIT ?"
    )
    return _events(conn, _run(conn, sql, [*params, sql_limit]))


def _object_links(external_id: str, object_type: ObjectType | str | None) -> tuple[str, list[Any]]:
    """The SQL (and its parameters) of the distinct events that touched an object."""
    if not isinstance(external_id, str) or not external_id:
        raise InvalidInputError("external_id", "must be a non-empty string")
    sql = "SELECT DISTINCT event_rowid, start_ns FROM event_objects WHERE external_id = ?"
    params: list[Any] = [clean_text(external_id)]
    if object_type is not None:
        sql += " AND object_type = ?"
        params.append(ObjectType.parse(object_type, "object_type").value)
    return sql, params


def iter_object_history(
    conn: sqlite3.Connection,
    external_id: str,
    object_type: ObjectType | str | None = None,
    *,
    batch_size: int = 500,
) -> Generator[TraceEvent, None, None]:
    """:func:`object_history` without a limit, read ``batch_size`` rows at a time, each
    batch in its own short read transaction (see :func:`iter_events`)."""
    linked, params = _object_links(external_id, object_type)

    def page(after: tuple[int, int] | None, size: int) -> tuple[str, list[Any]]:
        sub, args = linked, list(params)
        if after is not None:
            sub += " AND start_ns >= ? AND (start_ns > ? OR event_rowid > ?)"
            args += [after[0], after[0], after[1]]
        sql = (
            f"{_SELECT} JOIN ({sub} ORDER BY start_ns, event_rowid LIMIT ?) AS h "
            "ON h.event_rowid = e.rowid ORDER BY h.start_ns, e.rowid"
        )
        return sql, [*args, size]

    yield from _paged(conn, page, batch_size)


def count_object_history(
    conn: sqlite3.Connection, external_id: str, object_type: ObjectType | str | None = None
) -> int:
    """How many events touched the object (what :func:`object_history` returns)."""
    linked, params = _object_links(external_id, object_type)
    return int(_run(conn, f"SELECT count(*) FROM ({linked})", params)[0][0])


def iter_events(
    conn: sqlite3.Connection,
    filters: QueryFilters,
    *,
    order: Order = "asc",
    batch_size: int = 500,
) -> Generator[TraceEvent, None, None]:
    """Every event matching ``filters``, oldest first by default, read ``batch_size`` rows
    at a time so that memory stays bounded however many events match.

    Each batch is read in its own short read transaction, and none is open while the
    caller holds the iterator between batches: a consumer that stalls (a pager left
    open) never keeps the write-ahead log from being checkpointed. Each batch resumes
    strictly after the ``(start time, rowid)`` of the last event returned, so no event
    is returned twice and every event stored before the iteration began (and still
    stored when its batch is read) is returned once, whatever is written meanwhile.
    Events recorded during the iteration are returned when they sort after that point.
    """
    if order not in ("desc", "asc"):
        raise InvalidInputError("order", f"must be 'desc' or 'asc', got {order!r}")
    direction = "DESC" if order == "desc" else "ASC"
    after_op = "<" if order == "desc" else ">"
    base = f"{_SELECT}{filters.where}"
    joiner = " AND " if filters.where else " WHERE "
    order_by = f" ORDER BY e.start_ns {direction}, e.rowid {direction} LIMIT ?"

    def page(after: tuple[int, int] | None, size: int) -> tuple[str, list[Any]]:
        if after is None:
            return base + order_by, [*filters.params, size]
        keyset = f"e.start_ns {after_op}= ? AND (e.start_ns {after_op} ? OR e.rowid {after_op} ?)"
        return (
            base + joiner + keyset + order_by,
            [*filters.params, after[0], after[0], after[1], size],
        )

    yield from _paged(conn, page, batch_size)


_MAX_ROWID = 2**63 - 1

_Page = Callable[[tuple[int, int] | None, int], tuple[str, list[Any]]]
"""``page(after, size)``: the SQL and parameters of the next ``size`` rows (``_COLUMNS``
first) after the ``(start_ns, rowid)`` of the last row returned (None: from the start)."""


def _paged(
    conn: sqlite3.Connection, page: _Page, batch_size: int
) -> Generator[TraceEvent, None, None]:
    """The events ``page`` selects, ``batch_size`` rows at a time, each batch (its rows
    and their objects) read in one short read transaction that ends before any event
    is yielded. Inside a transaction the caller already has open, every batch reads
    that transaction's snapshot instead."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError("batch_size", f"must be a positive integer, got {batch_size!r}")
    after: tuple[int, int] | None = None
    while True:
        sql, params = page(after, batch_size)
        own_transaction = not conn.in_transaction
        try:
            if own_transaction:
                conn.execute("BEGIN")
            rows = conn.execute(sql, params).fetchall()
            events = _events(conn, rows)
        except sqlite3.Error as exc:
            raise StoreError(f"query failed: {exc}") from exc
        finally:
            if own_transaction and conn.in_transaction:
                conn.execute("COMMIT")
        if not rows:
            return
        last = rows[-1]
        after = (int(last[4]), int(last[0]))  # (start_ns, rowid): see _COLUMNS
        yield from events


@dataclass(frozen=True)
class LedgerSummary:
    """Counts describing a whole ledger file (what ``decision-trace stats`` shows).

    Attributes:
        events: How many events are stored.
        objects: How many (event, object) links are stored.
        distinct_objects: How many different business objects were touched.
        first: When the oldest event started, or None for an empty ledger.
        last: When the newest event started, or None for an empty ledger.
        by_event_type: ``(event_type, count)``, most frequent first.
        by_actor_type: ``(actor_type, count)``, most frequent first; None for no actor.
        by_outcome: ``(outcome, count)``, most frequent first.
        by_day: ``(YYYY-MM-DD, count)`` per UTC day that has events, newest first.
        schema_version: The file's ``PRAGMA user_version``.
    """

    events: int
    objects: int
    distinct_objects: int
    first: datetime | None
    last: datetime | None
    by_event_type: tuple[tuple[str, int], ...]
    by_actor_type: tuple[tuple[str | None, int], ...]
    by_outcome: tuple[tuple[str, int], ...]
    by_day: tuple[tuple[str, int], ...]
    schema_version: int


def summarize(conn: sqlite3.Connection, *, days: int | None = None) -> LedgerSummary:
    """Count the ledger's events by type, actor type, outcome and UTC day.

    Args:
        days: Keep only the newest ``days`` days that have events in ``by_day``
            (None for every day).
    """
    sql_days = _check_limit(days, 0)[0]

    def grouped(column: str) -> list[Any]:
        return _run(
            conn,
            f"SELECT {column}, count(*) AS n FROM events GROUP BY {column} "
            f"ORDER BY n DESC, {column}",
            [],
        )

    own_transaction = not conn.in_transaction
    try:
        if own_transaction:
            conn.execute("BEGIN")
        total, first_ns, last_ns = _run(
            conn, "SELECT count(*), min(start_ns), max(start_ns) FROM events", []
        )[0]
        objects, distinct_objects = _run(
            conn,
            "SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT object_type, external_id "
            "FROM event_objects)) FROM event_objects",
            [],
        )[0]
        by_day = _run(
            conn,
            "SELECT date(start_ns / 1000000000, 'unixepoch') AS day, count(*) FROM events "
            "GROUP BY day ORDER BY day DESC LIMIT ?",
            [sql_days],
        )
        summary = LedgerSummary(
            events=int(total),
            objects=int(objects),
            distinct_objects=int(distinct_objects),
            first=datetime_from_ns(first_ns) if first_ns is not None else None,
            last=datetime_from_ns(last_ns) if last_ns is not None else None,
            by_event_type=tuple((str(t), int(n)) for t, n in grouped("event_type")),
            by_actor_type=tuple(
                (str(t) if t is not None else None, int(n)) for t, n in grouped("actor_type")
            ),
            by_outcome=tuple((str(o), int(n)) for o, n in grouped("outcome")),
            by_day=tuple((str(d), int(n)) for d, n in by_day),
            schema_version=int(_run(conn, "PRAGMA user_version", [])[0][0]),
        )
    except sqlite3.Error as exc:
        raise StoreError(f"query failed: {exc}") from exc
    finally:
        if own_transaction and conn.in_transaction:
            conn.execute("COMMIT")
    return summary


# -- the outbox (docs/shipping.md) ---------------------------------------------------


def outbox_status(conn: sqlite3.Connection) -> list[DestinationStatus]:
    """Every shipping destination the ledger knows, with its backlog (one short read
    transaction, so the counts agree with each other)."""
    own_transaction = not conn.in_transaction
    try:
        if own_transaction:
            conn.execute("BEGIN")
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'outbox'").fetchone():
            return []  # a ledger of schema version 2, opened read-only (not migrated)
        rows = conn.execute(
            "SELECT destination, position, shipped, rejected, last_error, last_error_ns, "
            "updated_ns FROM outbox ORDER BY destination"
        ).fetchall()
        statuses = []
        for destination, position, shipped, rejected, error, error_ns, updated_ns in rows:
            backlog = conn.execute(
                "SELECT count(*) FROM events WHERE rowid > ?", (position,)
            ).fetchone()[0]
            first = conn.execute(
                "SELECT start_ns FROM events WHERE rowid > ? ORDER BY rowid LIMIT 1", (position,)
            ).fetchone()
            statuses.append(
                DestinationStatus(
                    destination=str(destination),
                    position=int(position),
                    shipped=int(shipped),
                    rejected=int(rejected),
                    backlog=int(backlog),
                    oldest_unshipped_ns=int(first[0]) if first else None,
                    last_error=error,
                    last_error_ns=error_ns,
                    updated_ns=int(updated_ns),
                )
            )
        return statuses
    except sqlite3.Error as exc:
        raise StoreError(f"query failed: {exc}") from exc
    finally:
        if own_transaction and conn.in_transaction:
            conn.execute("COMMIT")


def rejections(
    conn: sqlite3.Connection, destination: str, *, limit: int | None = 100
) -> list[Rejection]:
    """The events ``destination`` refused, in position order."""
    sql_limit, _ = _check_limit(limit, 0)
    try:
        rows = conn.execute(
            "SELECT position, event_id, message FROM outbox_rejected WHERE destination = ? "
            "ORDER BY position LIMIT ?",
            (destination, sql_limit),
        ).fetchall()
    except sqlite3.Error as exc:
        raise StoreError(f"query failed: {exc}") from exc
    return [Rejection(int(p), str(e), str(m)) for p, e, m in rows]


# -- the chain (decision_trace/integrity.py, docs/proving.md) ----------------------------

_CHAIN_SELECT = (
    "SELECT position, kind, event_id, start_ns, skeleton, commitment, hash, body FROM chain"
)


def _has_chain(conn: sqlite3.Connection) -> bool:
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'chain'"
    ).fetchone()
    if found is None:
        raise StoreError(
            "this ledger has no chain yet (it was written by an earlier release): open it "
            "writable once (any decision-trace command that writes, or the client) to "
            "adopt its events"
        )
    return True


def _entry(row: Sequence[Any]) -> integrity.ChainEntry:
    return integrity.ChainEntry(
        row[0],
        row[1],
        row[2],
        row[3],
        bytes.fromhex(row[4]),
        bytes.fromhex(row[5]),
        bytes.fromhex(row[6]),
        row[7],
    )


def chain_acts(conn: sqlite3.Connection) -> list[integrity.Act]:
    """Every act recorded in the chain (erasures, prunes, adoption), in chain order; an
    entry whose body is not an act is left out (``verify`` reports it as changed)."""
    _has_chain(conn)
    acts = []
    for row in conn.execute(f"{_CHAIN_SELECT} WHERE kind = 1 ORDER BY position"):
        act = integrity.decode_act(_entry(row))
        if act is not None:
            acts.append(act)
    return acts


def chain_state(conn: sqlite3.Connection) -> integrity.ChainState:
    """Where the chain stands (what a checkpoint signs)."""
    _has_chain(conn)
    with _snapshot(conn):
        meta = conn.execute("SELECT value FROM ledger_meta WHERE key = 'ledger_id'").fetchone()
        head = conn.execute("SELECT position, hash FROM chain ORDER BY position DESC LIMIT 1")
        last = head.fetchone()
        entries = conn.execute("SELECT count(*) FROM chain").fetchone()[0]
    return integrity.ChainState(
        ledger_id=meta[0] if meta else "",
        position=int(last[0]) if last else 0,
        entries=int(entries),
        hash=bytes.fromhex(last[1]) if last else integrity.GENESIS,
    )


class _snapshot:
    """One read transaction: the reads inside see one state of the file."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.began = False

    def __enter__(self) -> None:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN")
            self.began = True

    def __exit__(self, *exc: object) -> None:
        if self.began and self.conn.in_transaction:
            self.conn.execute("COMMIT")


# The canonical bytes of each event, made by SQLite (C) rather than Python: json_array
# writes text, integers and NULL byte for byte as integrity._dumps does (tested over
# every code point, tests/test_integrity.py). Any digest that disagrees is recomputed
# from the row by integrity.py itself before it is reported, so this only ever
# accelerates. The object types' list also turns into a mismatch when an object row's
# time disagrees with its event's (an index the chain does not hash otherwise).
_CANONICAL = (
    "json_array('dt-skeleton-1', e.id, e.trace_id, e.parent_id, e.start_ns, e.duration_ns, "
    "e.event_type, e.actor_type, e.outcome, e.service_name, (SELECT json_group_array("
    "CASE WHEN o.start_ns = e.start_ns THEN o.object_type END) FROM (SELECT object_type, "
    "start_ns FROM event_objects WHERE event_rowid = e.rowid ORDER BY position) AS o)), "
    "json_array('dt-payload-1', e.description, e.actor_id, e.actor_name, e.actor_json, "
    "e.reasoning, e.decision_json, e.objects_json, e.tags_json, e.error, e.metadata_json, "
    "(SELECT json_group_array(o.external_id) FROM (SELECT external_id FROM event_objects "
    "WHERE event_rowid = e.rowid ORDER BY position) AS o))"
)
_CHAIN_AND_EVENTS = (
    "SELECT c.position, c.kind, c.event_id, c.start_ns, c.skeleton, c.commitment, c.hash, "
    f"c.body, e.rowid, e.id, e.salt, {_CANONICAL}, {{missing_tags}} FROM chain AS c "
    "LEFT JOIN events AS e ON e.rowid = c.position ORDER BY c.position"
)
# Tag rows are an index of each event's hashed tags_json, which verify checks two ways
# (tag rows missing for an event count in _CHAIN_AND_EVENTS, its last column): when the
# ledger holds as many tag rows as its events hold distinct tags, and none is missing,
# none was added either. Only when the totals disagree are the added rows looked for.
_TAG_TOTALS = (
    "SELECT (SELECT count(*) FROM event_tags), (SELECT sum((SELECT count(DISTINCT value) "
    "FROM json_each(tags_json))) FROM events WHERE json_valid(tags_json))"
)
_ADDED_TAGS = (
    "SELECT DISTINCT t.event_rowid FROM event_tags AS t LEFT JOIN events AS e "
    "ON e.rowid = t.event_rowid WHERE e.rowid IS NULL OR NOT EXISTS (SELECT 1 FROM "
    "json_each(CASE WHEN json_valid(e.tags_json) THEN e.tags_json END) AS j "
    "WHERE j.value = t.tag)"
)
_MISSING_TAGS = (
    "(SELECT count(*) FROM json_each(CASE WHEN json_valid(e.tags_json) THEN e.tags_json "
    "END) AS j WHERE NOT EXISTS (SELECT 1 FROM event_tags AS t WHERE t.tag = j.value "
    "AND t.event_rowid = e.rowid))"
)


def _found_in_python(
    conn: sqlite3.Connection, rowid: int, tags_added: bool
) -> integrity.FoundEvent:
    """The event at ``rowid`` as verify finds it, computed by integrity.py from the row
    (the reference for the fast path), its object rows' times and its tag rows checked
    (``tags_added``: ``_ADDED_TAGS`` found rows of it its hashed tags may lack, which
    SQLite's JSON functions can be wrong about: a NUL cuts their strings)."""
    row = conn.execute(f"{_SELECT_WITH_SALT} WHERE e.rowid = ?", (rowid,)).fetchone()
    linked = conn.execute(
        "SELECT object_type, external_id, start_ns FROM event_objects "
        "WHERE event_rowid = ? ORDER BY position",
        (rowid,),
    ).fetchall()
    types = [link[0] for link in linked]
    ids = [link[1] for link in linked]
    salt = row[-1]
    skeleton, commitment = integrity.row_digests(
        row, types, ids, bytes.fromhex(salt) if salt is not None else None
    )
    mismatch = None
    if commitment is None and not integrity.erased_form(integrity.payload_of(row), ids):
        mismatch = "the payload of this erased event"
    elif any(link[2] != row[4] for link in linked):
        mismatch = "the time of its object rows"
    elif not _tags_agree(conn, rowid, row[15], all_rows=tags_added):
        mismatch = "its tag rows (they disagree with its hashed tags)"
    return integrity.FoundEvent(rowid, row[1], skeleton, commitment, mismatch)


def _tags_agree(
    conn: sqlite3.Connection, rowid: int, tags_json: str | None, *, all_rows: bool
) -> bool:
    """Whether the event's tag rows are its hashed tags: every one has its row (looked
    up by the table's key), and, with ``all_rows``, there is no other (a scan of the
    table, which has no index by event: only for events suspected of added rows)."""
    try:
        hashed = set(loads_json(tags_json)) if tags_json else set()
    except (ValueError, TypeError):
        return False
    if all_rows:
        return {tag for (tag,) in conn.execute(_TAGS_OF, (rowid,))} == hashed
    return all(conn.execute(_TAG_STORED, (tag, rowid)).fetchone() is not None for tag in hashed)


_SELECT_WITH_SALT = f"SELECT {_COLUMNS}, e.salt FROM events AS e"


def _is_erased_form(payload: str) -> bool:
    try:
        values = loads_json(payload)
    except ValueError:
        return False
    return integrity.erased_form(values[1:-1], values[-1])


_TAG_STORED = "SELECT 1 FROM event_tags WHERE tag = ? AND event_rowid = ?"
_TAGS_OF = "SELECT tag FROM event_tags WHERE event_rowid = ?"


def iter_chain(
    conn: sqlite3.Connection,
) -> Generator[tuple[integrity.ChainEntry | None, integrity.FoundEvent | None], None, None]:
    """Every chain entry with the event stored at its position (what
    :func:`integrity.verify_entries` takes), then every event no entry names, as
    ``(None, found)``; read in one snapshot."""
    _has_chain(conn)
    sha256 = hashlib.sha256
    fromhex = bytes.fromhex
    entry_of = integrity.ChainEntry
    found_of = integrity.FoundEvent
    with _snapshot(conn):
        tag_rows, tags = conn.execute(_TAG_TOTALS).fetchone()
        suspect: set[int] = set()
        if tag_rows != (tags or 0):
            suspect = {rowid for (rowid,) in conn.execute(_ADDED_TAGS)}
        cursor = conn.execute(_CHAIN_AND_EVENTS.format(missing_tags=_MISSING_TAGS))
        try:
            while rows := cursor.fetchmany(1000):
                for row in rows:
                    skeleton, commitment = fromhex(row[4]), fromhex(row[5])
                    entry = entry_of(
                        row[0],
                        row[1],
                        row[2],
                        row[3],
                        skeleton,
                        commitment,
                        fromhex(row[6]),
                        row[7],
                    )
                    rowid = row[8]
                    if rowid is None:
                        yield entry, None
                        continue
                    salt = row[10]
                    if row[13] or rowid in suspect or sha256(row[11].encode()).digest() != skeleton:
                        yield entry, _found_in_python(conn, rowid, rowid in suspect)
                    elif salt is None:
                        if _is_erased_form(row[12]):
                            yield entry, found_of(rowid, row[9], skeleton, None)
                        else:
                            yield entry, _found_in_python(conn, rowid, rowid in suspect)
                    elif sha256(fromhex(salt) + row[12].encode()).digest() != commitment:
                        yield entry, _found_in_python(conn, rowid, rowid in suspect)
                    else:
                        yield entry, found_of(rowid, row[9], skeleton, commitment)
        finally:
            cursor.close()
        for (rowid,) in conn.execute(
            "SELECT rowid FROM events AS e WHERE NOT EXISTS "
            "(SELECT 1 FROM chain AS c WHERE c.position = e.rowid) ORDER BY rowid"
        ).fetchall():
            yield None, _found_in_python(conn, rowid, rowid in suspect)
