"""Stored rows back to :class:`~decision_trace.models.TraceEvent` models, decoding the
JSON columns lazily (the read side of every backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import partial
from typing import Any

from .errors import InvalidInputError
from .models import (
    DEFERRED_KEY,
    Actor,
    ActorType,
    ChainNode,
    DecisionTrace,
    ObjectType,
    Outcome,
    RiskLevel,
    TraceEvent,
    TrackedObject,
)
from .record import _EPOCH, EventRecord, _scan_json, loads_json


def _enum_or(parser: Any, value: str, fallback: Any) -> Any:
    try:
        return parser(value, "stored value")
    except InvalidInputError:
        return fallback


# Stored values are the enums' own values: look them up directly (parse() scans members).
_ACTOR_TYPE_BY_VALUE = {m.value: m for m in ActorType}
_OBJECT_TYPE_BY_VALUE = {m.value: m for m in ObjectType}
_OUTCOME_BY_VALUE = {m.value: m for m in Outcome}
_RISK_BY_VALUE = {m.value: m for m in RiskLevel}


_EMPTY: Mapping[str, Any] = {}
_new = object.__new__
_set_dict = object.__setattr__
_NO_DURATION = timedelta(0)
_TAGS_CACHE: dict[str, tuple[str, ...]] = {}
_TAGS_CACHE_SIZE = 4096
EVENT_COLUMNS = (
    "rowid",
    "id",
    "trace_id",
    "parent_id",
    "start_ns",
    "duration_ns",
    "event_type",
    "description",
    "actor_type",
    "actor_id",
    "actor_name",
    "actor_json",
    "reasoning",
    "decision_json",
    "objects_json",
    "tags_json",
    "outcome",
    "error",
    "metadata_json",
    "service_name",
)
"""The columns of a stored event, in the one order every row is written and read in: the
store's inserts and the queries' selects are built from this tuple, and the decoder below
reads rows by these positions (tests/test_store.py checks all of them agree)."""

StoredRow = Sequence[Any]
"""An ``events`` row, its values in :data:`EVENT_COLUMNS` order."""


def _stored_tags(text: str | None) -> tuple[str, ...]:
    """The tags of a ``tags_json`` value; tuples of strings are immutable, so the few
    distinct tag lists a ledger holds are decoded once and shared."""
    if not text:
        return ()
    tags = _TAGS_CACHE.get(text)
    if tags is None:
        tags = tuple(loads_json(text))
        if len(_TAGS_CACHE) >= _TAGS_CACHE_SIZE:
            _TAGS_CACHE.clear()
        _TAGS_CACHE[text] = tags
    return tags


def _row_json(row: StoredRow) -> list[Any]:
    """The row's actor, decision, objects and metadata JSON columns (None when empty),
    decoded with one scan of all four instead of one per value."""
    parts = [row[11] or "null", row[13] or "null", row[14] or "null", row[18] or "null"]
    try:
        text = "[" + ",".join(parts) + "]"
        values, end = _scan_json(text, 0)
        if end == len(text) and len(values) == 4:
            return values  # type: ignore[no-any-return]
    except (StopIteration, ValueError, TypeError):
        pass
    # A value this module did not write: decode each alone (raising as json.loads does).
    return [None if part == "null" else loads_json(part) for part in parts]


_LAZY_FIELDS = frozenset({"actor", "decision", "objects", "metadata"})
"""The :class:`TraceEvent` fields ``events_from_rows`` leaves to :func:`_lazy_fields`."""


def _lazy_fields(row: StoredRow, linked: Sequence[tuple[str, str]] | None) -> dict[str, Any]:
    """The JSON-backed fields of a stored event (``_LAZY_FIELDS``), decoded when the
    event's first of them is read; ``linked`` is what ``event_objects`` holds for it."""
    extras, data, states, metadata = _row_json(row)
    actor = None
    actor_type = row[8]
    if actor_type is not None and row[9]:
        member = _ACTOR_TYPE_BY_VALUE.get(actor_type)
        if member is None:
            member = _enum_or(ActorType.parse, actor_type, ActorType.SYSTEM)
        actor = _new(Actor)
        if extras is None:
            fields = {
                "type": member,
                "id": row[9],
                "name": row[10],
                "email": None,
                "role": None,
                "model": None,
                "version": None,
                "service_name": None,
                "metadata": {},
            }
        else:
            fields = {
                "type": member,
                "id": row[9],
                "name": row[10],
                "email": extras.get("email"),
                "role": extras.get("role"),
                "model": extras.get("model"),
                "version": extras.get("version"),
                "service_name": extras.get("service_name"),
                "metadata": extras.get("metadata") or {},
            }
        _set_dict(actor, "__dict__", fields)
    decision = None
    if row[13] is not None:
        confidence = data.get("confidence")
        risk = data.get("risk_level")
        if risk:
            level = _RISK_BY_VALUE.get(risk)
            risk = level if level is not None else _enum_or(RiskLevel.parse, risk, None)
        else:
            risk = None
        decision = _new(DecisionTrace)
        _set_dict(
            decision,
            "__dict__",
            {
                "reasoning": row[12] or "",
                "context": data.get("context") or {},
                "alternatives": tuple(data.get("alternatives") or ()),
                "rejection_reasons": data.get("rejection_reasons") or {},
                "confidence": float(confidence) if confidence is not None else None,
                "risk_level": risk,
            },
        )
    if linked:
        touched = []
        count = len(states) if states else 0
        for position, (object_type, external_id) in enumerate(linked):
            state = states[position] if position < count else _EMPTY
            kind = _OBJECT_TYPE_BY_VALUE.get(object_type)
            if kind is None:
                kind = _enum_or(ObjectType.parse, object_type, ObjectType.OTHER)
            obj = _new(TrackedObject)
            _set_dict(
                obj,
                "__dict__",
                {
                    "object_type": kind,
                    "external_id": external_id,
                    "state": state.get("state") or {},
                    "state_before": state.get("before"),
                    "state_after": state.get("after"),
                },
            )
            touched.append(obj)
        objs: tuple[TrackedObject, ...] = tuple(touched)
    else:
        objs = ()
    return {
        "actor": actor,
        "decision": decision,
        "objects": objs,
        "metadata": {} if metadata is None else metadata,
    }


def events_from_rows(
    rows: Sequence[StoredRow], objects: Mapping[int, Sequence[tuple[str, str]]]
) -> list[TraceEvent]:
    """Turn stored ``events`` rows (:data:`StoredRow` order) into models; ``objects``
    maps a row's rowid to the ``(object_type, external_id)`` it touched, in order.

    The values were validated when recorded, so the models are filled directly, without
    their ``__post_init__`` input validation: reading is the hot path of every query.
    The plain columns are set now; ``actor``, ``decision``, ``objects`` and ``metadata``
    (JSON to decode, most of the cost, and often never read when many events are
    listed) are decoded by :func:`_lazy_fields` on first access (see ``TraceEvent``).
    """
    events: list[TraceEvent] = []
    append = events.append
    get_linked = objects.get
    for row in rows:
        outcome = _OUTCOME_BY_VALUE.get(row[16])
        if outcome is None:
            outcome = _enum_or(Outcome.parse, row[16], Outcome.SUCCESS)
        duration_ns = row[5]
        event = _new(TraceEvent)
        _set_dict(
            event,
            "__dict__",
            {
                "id": row[1],
                # datetime_from_ns and timedelta(microseconds=ns / 1000), positionally.
                "timestamp": _EPOCH + timedelta(0, 0, row[4] // 1000),
                "duration": timedelta(0, 0, duration_ns / 1000) if duration_ns else _NO_DURATION,
                "event_type": row[6],
                "description": row[7],
                "outcome": outcome,
                "error": row[17],
                "tags": _stored_tags(row[15]),
                "correlation_id": row[2],
                "parent_event_id": row[3],
                "service_name": row[19],
                DEFERRED_KEY: partial(_lazy_fields, row, get_linked(row[0])),
            },
        )
        append(event)
    return events


_EAGER_FIELDS = frozenset(
    {
        "id",
        "timestamp",
        "duration",
        "event_type",
        "description",
        "outcome",
        "error",
        "tags",
        "correlation_id",
        "parent_event_id",
        "service_name",
    }
)
"""The :class:`TraceEvent` fields ``events_from_rows`` sets when it reads a row."""


def _check_model_fields() -> None:
    """``events_from_rows`` and ``_lazy_fields`` fill every field of these models by
    name: fail at import if a model gains or loses one without the decoder being
    updated, or if a ``TraceEvent`` field is not set exactly once (now or lazily)."""
    expected = {
        Actor: 9,
        DecisionTrace: 6,
        TrackedObject: 5,
        TraceEvent: 15,
    }
    for cls, count in expected.items():
        if len(cls.__dataclass_fields__) != count:  # type: ignore[attr-defined]
            raise AssertionError(f"events_from_rows does not fill every field of {cls.__name__}")
    row: tuple[Any, ...] = (0, "0" * 16, "0" * 32, None, 0, 0, "t", "") + (None,) * 8
    row += (Outcome.SUCCESS.value, None, None, None)
    event = events_from_rows([row], {})[0]
    eager = set(event.__dict__) - {DEFERRED_KEY}
    lazy = set(_lazy_fields(row, None))
    if (
        eager != _EAGER_FIELDS
        or lazy != _LAZY_FIELDS
        or eager & lazy
        or eager | lazy != set(TraceEvent.__dataclass_fields__)
    ):
        raise AssertionError("events_from_rows must fill each TraceEvent field exactly once")


_check_model_fields()


def records_from_rows(
    rows: Sequence[StoredRow], objects: Mapping[int, Sequence[tuple[str, str]]]
) -> list[EventRecord]:
    """Stored ``events`` rows (:data:`StoredRow` order) back to the
    :class:`~decision_trace.record.EventRecord` they were written from, their text and
    JSON as the ledger holds them (what ``decision-trace copy`` moves between ledgers);
    ``objects`` is as for :func:`events_from_rows`."""
    records: list[EventRecord] = []
    for row in rows:
        linked = objects.get(row[0]) or ()
        records.append(
            EventRecord(
                id=row[1],
                trace_id=row[2],
                parent_id=row[3],
                start_ns=int(row[4]),
                duration_ns=int(row[5]),
                event_type=row[6],
                description=row[7],
                actor_type=row[8],
                actor_id=row[9],
                actor_name=row[10],
                actor_json=row[11],
                reasoning=row[12],
                decision_json=row[13],
                object_types=tuple(object_type for object_type, _ in linked),
                object_ids=tuple(external_id for _, external_id in linked),
                objects_json=row[14],
                tags=_stored_tags(row[15]),
                outcome=row[16],
                error=row[17],
                metadata_json=row[18],
                service_name=row[19],
            )
        )
    return records


def build_chain(events: Sequence[TraceEvent], wanted: str) -> ChainNode | None:
    """The tree of ``events`` (one trace's, oldest first) that holds the event with id
    ``wanted``: its topmost ancestor among them and all its descendants; None if
    ``wanted`` is not among them."""
    if not any(e.id == wanted for e in events):
        return None
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
