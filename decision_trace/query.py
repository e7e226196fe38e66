"""The read side: filters become SQL, rows become :class:`TraceEvent` models.

Every function takes an open SQLite connection from
:meth:`decision_trace.store.Store.reader`; every value is bound as a parameter.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .attributes import (
    clean_text,
    datetime_from_ns,
    events_from_rows,
)
from .errors import EventNotFoundError, InvalidInputError, StoreError
from .models import ObjectType, TraceEvent
from .storage.filters import EventFilters, Order, check_limit

__all__ = ["ChainNode", "QueryFilters", "fts_query"]

_COLUMNS = (
    "e.rowid, e.id, e.trace_id, e.parent_id, e.start_ns, e.duration_ns, e.event_type, "
    "e.description, e.actor_type, e.actor_id, e.actor_name, e.actor_json, e.reasoning, "
    "e.decision_json, e.objects_json, e.tags_json, e.outcome, e.error, e.metadata_json, "
    "e.service_name"
)
_SELECT = f"SELECT {_COLUMNS} FROM events AS e"


@dataclass(frozen=True)
class ChainNode:
    """One event of a chain and the events recorded as its children (oldest first)."""

    event: TraceEvent
    children: tuple[ChainNode, ...] = ()

    def walk(self, depth: int = 0) -> Iterator[tuple[int, TraceEvent]]:
        """Yield ``(depth, event)`` for this node and its descendants, depth first."""
        yield depth, self.event
        for child in self.children:
            yield from child.walk(depth + 1)

    def find(self, event_id: str) -> ChainNode | None:
        """The node of ``event_id`` within this tree, if present."""
        for node in self._nodes():
            if node.event.id == event_id:
                return node
        return None

    def _nodes(self) -> Iterator[ChainNode]:
        yield self
        for child in self.children:
            yield from child._nodes()


def _placeholders(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


@dataclass(frozen=True)
class QueryFilters:
    """:class:`~decision_trace.storage.filters.EventFilters` as an SQLite ``WHERE`` clause
    over ``events AS e``, with its parameters."""

    where: str
    params: tuple[Any, ...]

    @classmethod
    def build(cls, **filters: Any) -> QueryFilters:
        """Validate ``query()``'s arguments (see :meth:`EventFilters.build`) into SQL."""
        return cls.of(EventFilters.build(**filters))

    @classmethod
    def of(cls, filters: EventFilters) -> QueryFilters:
        """The SQL of already validated ``filters``."""
        clauses: list[str] = []
        params: list[Any] = []
        if filters.start_ns is not None:
            clauses.append("e.start_ns >= ?")
            params.append(filters.start_ns)
        if filters.end_ns is not None:
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
        if filters.object_types is not None or filters.object_ids is not None:
            sub = ["o.event_rowid = e.rowid"]
            if filters.object_types is not None:
                sub.append(f"o.object_type IN ({_placeholders(filters.object_types)})")
                params.extend(filters.object_types)
            if filters.object_ids is not None:
                sub.append(f"o.external_id IN ({_placeholders(filters.object_ids)})")
                params.extend(filters.object_ids)
            clauses.append(f"EXISTS (SELECT 1 FROM event_objects AS o WHERE {' AND '.join(sub)})")
        if filters.tags is not None:
            clauses.append(
                "EXISTS (SELECT 1 FROM event_tags AS t WHERE t.event_rowid = e.rowid "
                f"AND t.tag IN ({_placeholders(filters.tags)}))"
            )
            params.extend(filters.tags)
        if filters.outcome is not None:
            clauses.append("e.outcome = ?")
            params.append(filters.outcome)
        if filters.correlation_id is not None:
            clauses.append("e.trace_id = ?")
            params.append(filters.correlation_id)
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        return cls(where=where, params=tuple(params))


_check_limit = check_limit


def _run(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.Error as exc:
        raise StoreError(f"query failed: {exc}") from exc


def _events(conn: sqlite3.Connection, rows: list[Any]) -> list[TraceEvent]:
    """Turn ``events`` rows (``_COLUMNS`` order) into models, objects included."""
    if not rows:
        return []
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
    return events_from_rows(rows, objects)


def query_events(
    conn: sqlite3.Connection,
    filters: QueryFilters,
    *,
    limit: int | None,
    offset: int = 0,
    order: Order = "desc",
) -> list[TraceEvent]:
    """Events matching ``filters``, newest first (``order="desc"``) or oldest first."""
    _check_limit(limit, offset)
    if order not in ("desc", "asc"):
        raise InvalidInputError("order", f"must be 'desc' or 'asc', got {order!r}")
    direction = "DESC" if order == "desc" else "ASC"
    sql = f"{_SELECT}{filters.where} ORDER BY e.start_ns {direction}, e.rowid {direction}"
    params = list(filters.params)
    if limit is not None or offset:
        sql += " LIMIT ? OFFSET ?"
        params += [-1 if limit is None else limit, offset]
    return _events(conn, _run(conn, sql, params))


def count_events(conn: sqlite3.Connection, filters: QueryFilters) -> int:
    """How many events match ``filters``."""
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
    _check_limit(limit, 0)
    match = fts_query(text)
    if match is None:
        return []
    return _events(conn, _run(conn, _SEARCH_SQL, [match, -1 if limit is None else limit]))


_SEARCH_SQL = (
    f"{_SELECT} WHERE e.rowid IN (SELECT rowid FROM events_fts WHERE events_fts MATCH ? "
    "ORDER BY rowid DESC LIMIT ?) ORDER BY e.rowid DESC"
)


def iter_search(
    conn: sqlite3.Connection, text: str, *, batch_size: int = 500
) -> Generator[TraceEvent, None, None]:
    """:func:`search_events` without a limit, read ``batch_size`` rows at a time (see
    :func:`iter_events`): memory stays bounded however many events match."""
    match = fts_query(text)
    if match is None:
        return
    yield from _stream(conn, _SEARCH_SQL, [match, -1], batch_size)


def get_event(conn: sqlite3.Connection, event_id: str) -> TraceEvent | None:
    """The event with this id, or None."""
    if not isinstance(event_id, str):
        raise InvalidInputError("event_id", f"must be a string, got {type(event_id).__name__}")
    events = _events(conn, _run(conn, f"{_SELECT} WHERE e.id = ?", [event_id.lower()]))
    return events[0] if events else None


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
    wanted = event_id.lower()
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
    if not events:
        raise EventNotFoundError(event_id)
    by_id = {e.id: e for e in events}
    children: dict[str, list[TraceEvent]] = {}
    for e in events:
        parent = e.parent_event_id
        if parent is not None and parent in by_id:
            kids = children.get(parent)
            if kids is None:
                children[parent] = [e]
            else:
                kids.append(e)
    root = by_id[wanted]
    seen = {wanted}
    while root.parent_event_id in by_id and root.parent_event_id not in seen:
        root = by_id[root.parent_event_id]
        seen.add(root.id)
    # Each event has one parent, so the only event that can come back as a descendant
    # (a cycle in the stored parent ids) is the root: skipping it as a child keeps the
    # tree finite. Built bottom-up without recursion, however deep the chain.
    root_id = root.id
    order = [root]
    for node in order:  # grows while iterating: breadth-first from the root
        order.extend(c for c in children.get(node.id, ()) if c.id != root_id)
    built: dict[str, ChainNode] = {}
    for node in reversed(order):
        kids = children.get(node.id)
        built[node.id] = _chain_node(
            node, tuple(built[c.id] for c in kids if c.id != root_id) if kids else ()
        )
    return built[root_id]


def _chain_node(event: TraceEvent, children: tuple[ChainNode, ...]) -> ChainNode:
    """``ChainNode(event, children)`` without the frozen dataclass's per-field setattr."""
    node: ChainNode = object.__new__(ChainNode)
    object.__setattr__(node, "__dict__", {"event": event, "children": children})
    return node


def object_history(
    conn: sqlite3.Connection,
    external_id: str,
    object_type: ObjectType | str | None = None,
    *,
    limit: int | None = None,
) -> list[TraceEvent]:
    """Every event that touched the object, oldest first."""
    _check_limit(limit, 0)
    linked, params = _object_links(external_id, object_type)
    sql = (
        f"{_SELECT} JOIN ({linked}) AS h ON h.event_rowid = e.rowid "
        "ORDER BY h.start_ns, e.rowid LIMIT ?"
    )
    return _events(conn, _run(conn, sql, [*params, -1 if limit is None else limit]))


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
    """:func:`object_history` without a limit, read ``batch_size`` rows at a time (see
    :func:`iter_events`)."""
    linked, params = _object_links(external_id, object_type)
    sql = f"{_SELECT} JOIN ({linked}) AS h ON h.event_rowid = e.rowid ORDER BY h.start_ns, e.rowid"
    yield from _stream(conn, sql, params, batch_size)


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

    The whole iteration reads one snapshot of the file (a read transaction that ends when
    the iterator is exhausted or closed), so concurrent writes or prunes never make it
    skip or repeat an event.
    """
    if order not in ("desc", "asc"):
        raise InvalidInputError("order", f"must be 'desc' or 'asc', got {order!r}")
    direction = "DESC" if order == "desc" else "ASC"
    sql = f"{_SELECT}{filters.where} ORDER BY e.start_ns {direction}, e.rowid {direction}"
    yield from _stream(conn, sql, filters.params, batch_size)


def _stream(
    conn: sqlite3.Connection, sql: str, params: Sequence[Any], batch_size: int
) -> Generator[TraceEvent, None, None]:
    """The events ``sql`` selects (``_COLUMNS`` first), ``batch_size`` rows at a time,
    all read from one snapshot: a read transaction that ends with the iteration (or
    with a transaction the caller already has open)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError("batch_size", f"must be a positive integer, got {batch_size!r}")
    own_transaction = not conn.in_transaction
    try:
        if own_transaction:
            conn.execute("BEGIN")
        cursor = conn.execute(sql, params)
        while True:
            rows = cursor.fetchmany(batch_size)
            if not rows:
                break
            yield from _events(conn, rows)
    except sqlite3.Error as exc:
        raise StoreError(f"query failed: {exc}") from exc
    finally:
        if own_transaction and conn.in_transaction:
            conn.execute("COMMIT")


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
    _check_limit(days, 0)

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
            [-1 if days is None else days],
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
