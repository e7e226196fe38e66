"""The one JSON shape of an event: what ``--json``, ``export`` and any HTTP API print.

Keys and their order are a promise to scripts that read them; add keys, never rename.
Each shape has its inverse here too (``event_from_json`` and the like), which the
``http://`` ledger uses to turn the read API's answers back into the models a local
ledger returns: ``event_from_json(event_to_json(event)) == event``.

Knows no OpenTelemetry and no SQL: it sits beside the storage layer, whose ``http://``
backend reads these shapes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from .errors import InvalidInputError
from .models import (
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
from .query import LedgerSummary
from .record import datetime_from_ns
from .storage.outbox import DestinationStatus, Rejection

__all__ = [
    "chain_from_json",
    "chain_to_json",
    "event_from_json",
    "event_to_json",
    "summary_from_json",
    "summary_to_json",
]


def event_to_json(event: TraceEvent) -> dict[str, Any]:
    """One event as a JSON-ready dict (the shape of ``--json`` and ``export``)."""
    actor = event.actor
    decision = event.decision
    return {
        "id": event.id,
        "timestamp": event.timestamp.isoformat(),
        "duration_ms": (event.duration // timedelta(microseconds=1)) / 1000,
        "event_type": event.event_type,
        "description": event.description,
        "actor": None
        if actor is None
        else {
            "type": actor.type.value,
            "id": actor.id,
            "name": actor.name,
            "email": actor.email,
            "role": actor.role,
            "model": actor.model,
            "version": actor.version,
            "service_name": actor.service_name,
            "metadata": dict(actor.metadata),
        },
        "decision": None
        if decision is None
        else {
            "reasoning": decision.reasoning,
            "context": dict(decision.context),
            "alternatives": [dict(a) for a in decision.alternatives],
            "rejection_reasons": dict(decision.rejection_reasons),
            "confidence": decision.confidence,
            "risk_level": decision.risk_level.value if decision.risk_level else None,
        },
        "objects": [
            {
                "object_type": o.object_type.value,
                "external_id": o.external_id,
                "state": dict(o.state),
                "state_before": dict(o.state_before) if o.state_before is not None else None,
                "state_after": dict(o.state_after) if o.state_after is not None else None,
            }
            for o in event.objects
        ],
        "outcome": event.outcome.value,
        "error": event.error,
        "tags": list(event.tags),
        "metadata": dict(event.metadata),
        "correlation_id": event.correlation_id,
        "parent_event_id": event.parent_event_id,
        "service_name": event.service_name,
    }


# --- the inverse: JSON back to the models ------------------------------------------------
#
# What a local ledger returns was validated when it was recorded, and is filled into the
# models without their input checks (``_rows.events_from_rows``); an unknown enum value a
# newer release wrote reads back as a fallback. The same goes here, so that an event read
# through the read API equals the event the server's own ledger returned, whatever it
# holds. Only the JSON *shape* is checked: a value of the wrong JSON type raises
# ``InvalidInputError`` naming the key.

_new = object.__new__
_fill = object.__setattr__


def _need(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(data, Mapping):
        raise InvalidInputError(where or "event", "must be a JSON object")
    if key not in data:
        raise InvalidInputError(f"{where}.{key}" if where else key, "is missing")
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in _kinds(kind))
        raise InvalidInputError(
            f"{where}.{key}" if where else key, f"must be {names}, got {type(value).__name__}"
        )
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


_TEXT = str
_OPTIONAL_TEXT = (str, type(None))
_OBJECT = dict
_OPTIONAL_OBJECT = (dict, type(None))


def _enum(parser: Any, value: str, fallback: Any) -> Any:
    try:
        return parser(value, "stored value")
    except InvalidInputError:
        return fallback


def _micros(value: Any, field: str) -> int:
    """Whole microseconds from ``duration_ms`` as ``event_to_json`` wrote it (microseconds
    divided by 1000, a float): exact for durations under 10^15 microseconds (31 years),
    the most a double's 15 significant digits carry."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(field, f"must be a number, got {type(value).__name__}")
    if isinstance(value, int):
        return value * 1000
    if value != value or value in (float("inf"), float("-inf")):
        raise InvalidInputError(field, f"must be a finite number, got {value!r}")
    return int((Decimal(repr(value)) * 1000).to_integral_value())


def _actor_from_json(data: Any) -> Actor | None:
    if data is None:
        return None
    where = "actor"
    actor_type = _need(data, "type", _TEXT, where)
    member = _enum(ActorType.parse, actor_type, ActorType.SYSTEM)
    actor = _new(Actor)
    _fill(
        actor,
        "__dict__",
        {
            "type": member,
            "id": _need(data, "id", _TEXT, where),
            "name": _need(data, "name", _OPTIONAL_TEXT, where),
            "email": _need(data, "email", _OPTIONAL_TEXT, where),
            "role": _need(data, "role", _OPTIONAL_TEXT, where),
            "model": _need(data, "model", _OPTIONAL_TEXT, where),
            "version": _need(data, "version", _OPTIONAL_TEXT, where),
            "service_name": _need(data, "service_name", _OPTIONAL_TEXT, where),
            "metadata": _need(data, "metadata", _OBJECT, where),
        },
    )
    return actor


def _decision_from_json(data: Any) -> DecisionTrace | None:
    if data is None:
        return None
    where = "decision"
    alternatives = _need(data, "alternatives", list, where)
    for index, alternative in enumerate(alternatives):
        if not isinstance(alternative, dict):
            raise InvalidInputError(f"decision.alternatives[{index}]", "must be a JSON object")
    confidence = _need(data, "confidence", (int, float, type(None)), where)
    risk = _need(data, "risk_level", _OPTIONAL_TEXT, where)
    decision = _new(DecisionTrace)
    _fill(
        decision,
        "__dict__",
        {
            "reasoning": _need(data, "reasoning", _TEXT, where),
            "context": _need(data, "context", _OBJECT, where),
            "alternatives": tuple(alternatives),
            "rejection_reasons": _need(data, "rejection_reasons", _OBJECT, where),
            "confidence": None if confidence is None else float(confidence),
            "risk_level": _enum(RiskLevel.parse, risk, None) if risk else None,
        },
    )
    return decision


def _object_from_json(data: Any, index: int) -> TrackedObject:
    where = f"objects[{index}]"
    obj = _new(TrackedObject)
    _fill(
        obj,
        "__dict__",
        {
            "object_type": _enum(
                ObjectType.parse, _need(data, "object_type", _TEXT, where), ObjectType.OTHER
            ),
            "external_id": _need(data, "external_id", _TEXT, where),
            "state": _need(data, "state", _OBJECT, where),
            "state_before": _need(data, "state_before", _OPTIONAL_OBJECT, where),
            "state_after": _need(data, "state_after", _OPTIONAL_OBJECT, where),
        },
    )
    return obj


def event_from_json(data: Mapping[str, Any]) -> TraceEvent:
    """The event :func:`event_to_json` described: ``event_from_json(event_to_json(e)) == e``.

    Keys this release does not know are ignored (a newer server may add some). An enum
    value this release does not know reads back as a local ledger reads it (an unknown
    object type as ``other``, actor type as ``system``, outcome as ``success``).

    Raises:
        InvalidInputError: ``data`` is not that shape: a key is missing or holds the
            wrong JSON type (the message names it).
    """
    timestamp_text = _need(data, "timestamp", _TEXT, "")
    try:
        timestamp = datetime.fromisoformat(timestamp_text)
    except ValueError:
        raise InvalidInputError(
            "timestamp", f"must be an ISO 8601 time, got {timestamp_text!r}"
        ) from None
    if timestamp.tzinfo is None:
        raise InvalidInputError("timestamp", f"must carry its UTC offset, got {timestamp_text!r}")
    tags = _need(data, "tags", list, "")
    if not all(isinstance(tag, str) for tag in tags):
        raise InvalidInputError("tags", "must be a list of strings")
    objects = _need(data, "objects", list, "")
    event = _new(TraceEvent)
    _fill(
        event,
        "__dict__",
        {
            "id": _need(data, "id", _TEXT, ""),
            "timestamp": timestamp,
            "duration": timedelta(microseconds=_micros(data.get("duration_ms"), "duration_ms")),
            "event_type": _need(data, "event_type", _TEXT, ""),
            "description": _need(data, "description", _TEXT, ""),
            "actor": _actor_from_json(_need(data, "actor", _OPTIONAL_OBJECT, "")),
            "decision": _decision_from_json(_need(data, "decision", _OPTIONAL_OBJECT, "")),
            "objects": tuple(_object_from_json(o, i) for i, o in enumerate(objects)),
            "outcome": _enum(Outcome.parse, _need(data, "outcome", _TEXT, ""), Outcome.SUCCESS),
            "error": _need(data, "error", _OPTIONAL_TEXT, ""),
            "tags": tuple(tags),
            "metadata": _need(data, "metadata", _OBJECT, ""),
            "correlation_id": _need(data, "correlation_id", _TEXT, ""),
            "parent_event_id": _need(data, "parent_event_id", _OPTIONAL_TEXT, ""),
            "service_name": _need(data, "service_name", _OPTIONAL_TEXT, ""),
        },
    )
    return event


def chain_to_json(root: ChainNode) -> list[dict[str, Any]]:
    """A chain as ``chain --json`` prints it: each event with its ``depth`` in the tree,
    depth first (the root at depth 0, then each child's subtree, oldest child first).

    Flat, not nested: a chain thousands of events deep stays one shallow JSON document.
    """
    return [{"depth": depth, **event_to_json(event)} for depth, event in root.walk()]


def chain_from_json(rows: Iterable[Mapping[str, Any]]) -> ChainNode:
    """The tree :func:`chain_to_json` flattened (no recursion, however deep).

    Raises:
        InvalidInputError: ``rows`` is empty, or a depth does not follow its predecessor
            (the first must be 0, each next one at most one deeper, never below 1).
    """
    events: list[TraceEvent] = []
    children: list[list[int]] = []
    path: list[int] = []  # the indices of the current node's ancestors and itself
    for index, row in enumerate(rows):
        depth = _need(row, "depth", int, "")
        if index == 0 and depth != 0:
            raise InvalidInputError("[0].depth", f"must be 0 (the root), got {depth}")
        if index > 0 and not 1 <= depth <= len(path):
            raise InvalidInputError(
                f"[{index}].depth", f"must be between 1 and {len(path)}, got {depth}"
            )
        del path[depth:]
        if path:
            children[path[-1]].append(index)
        path.append(index)
        events.append(event_from_json(row))
        children.append([])
    if not events:
        raise InvalidInputError("chain", "holds no event")
    built: list[ChainNode | None] = [None] * len(events)
    for index in range(len(events) - 1, -1, -1):  # every child comes after its parent
        built[index] = ChainNode(
            events[index],
            tuple(built[child] for child in children[index]),  # type: ignore[misc]
        )
    root = built[0]
    assert root is not None
    return root


def summary_to_json(
    summary: LedgerSummary, *, location: str, size_bytes: int, wal_bytes: int
) -> dict[str, Any]:
    """A ledger's counts as ``stats --json`` prints them (``location`` is the ledger's
    :attr:`~decision_trace.storage.Ledger.location`, the sizes its ``size_bytes()``).

    ``by_actor_type`` names events without an actor ``"none"``.
    """
    return {
        "db": location,
        "size_bytes": size_bytes,
        "wal_bytes": wal_bytes,
        "schema_version": summary.schema_version,
        "events": summary.events,
        "objects": summary.objects,
        "distinct_objects": summary.distinct_objects,
        "first": summary.first.isoformat() if summary.first else None,
        "last": summary.last.isoformat() if summary.last else None,
        "span_seconds": (summary.last - summary.first).total_seconds()
        if summary.first and summary.last
        else None,
        "by_event_type": dict(summary.by_event_type),
        "by_actor_type": {k or "none": n for k, n in summary.by_actor_type},
        "by_outcome": dict(summary.by_outcome),
        "by_day": dict(summary.by_day),
    }


def _counts(data: Mapping[str, Any], key: str) -> tuple[tuple[str, int], ...]:
    counts = _need(data, key, dict, "")
    for name, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int):
            raise InvalidInputError(f"{key}.{name}", "must be an integer")
    return tuple(counts.items())


def _optional_time(data: Mapping[str, Any], key: str) -> datetime | None:
    text = _need(data, key, _OPTIONAL_TEXT, "")
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(key, f"must be an ISO 8601 time, got {text!r}") from None


def summary_from_json(data: Mapping[str, Any]) -> LedgerSummary:
    """The :class:`~decision_trace.query.LedgerSummary` that :func:`summary_to_json`
    described (``"none"`` in ``by_actor_type`` back to None).

    Raises:
        InvalidInputError: ``data`` is not that shape (the message names the key).
    """
    return LedgerSummary(
        events=_need(data, "events", int, ""),
        objects=_need(data, "objects", int, ""),
        distinct_objects=_need(data, "distinct_objects", int, ""),
        first=_optional_time(data, "first"),
        last=_optional_time(data, "last"),
        by_event_type=_counts(data, "by_event_type"),
        by_actor_type=tuple(
            (None if name == "none" else name, n) for name, n in _counts(data, "by_actor_type")
        ),
        by_outcome=_counts(data, "by_outcome"),
        by_day=_counts(data, "by_day"),
        schema_version=_need(data, "schema_version", int, ""),
    )


def destination_status_to_json(
    status: DestinationStatus, *, now_ns: int, rejections: Sequence[Rejection] = ()
) -> dict[str, Any]:
    """One shipping destination's status as ``stats --json`` prints it (under
    ``"shipping"``); ages are seconds before ``now_ns``; ``rejections`` are the first few
    events it refused (``rejected`` counts them all)."""

    def iso(ns: int | None) -> str | None:
        return datetime_from_ns(ns).isoformat() if ns is not None else None

    oldest = status.oldest_unshipped_ns
    return {
        "destination": status.destination,
        "shipped_up_to": status.position,
        "shipped": status.shipped,
        "backlog": status.backlog,
        "oldest_unshipped": iso(oldest),
        "oldest_unshipped_age_seconds": (now_ns - oldest) / 1e9 if oldest is not None else None,
        "rejected": status.rejected,
        "rejected_events": [
            {"position": r.position, "event_id": r.event_id, "message": r.message}
            for r in rejections
        ],
        "last_error": status.last_error,
        "last_error_at": iso(status.last_error_ns),
        "updated_at": iso(status.updated_ns),
    }
