"""The OpenAPI 3.1 document of the read API, served at ``/openapi.json``.

Written as data beside the routes (``api.py``) and checked against the running server
by the tests (schemathesis: every answer the server gives to requests generated from
this document must be one it describes).
"""

from __future__ import annotations

import copy
from typing import Any

from ..models import ActorType, ObjectType, Outcome, RiskLevel
from ..storage.http import API_PREFIX, MAX_PAGE

__all__ = ["openapi_document"]

_MAX_INT64 = 2**63 - 1
_MAX_NS_PARAM = 10**30 - 1


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_STRING = {"type": "string"}
_OBJECT = {"type": "object"}  # JSON values as recorded

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["status", "error"],
        "properties": {
            "status": {"type": "integer", "description": "The HTTP status, repeated."},
            "error": {"type": "string", "description": "What went wrong, for a person."},
            "field": {"type": "string", "description": "The parameter at fault (400)."},
        },
    },
    "Actor": {
        "type": "object",
        "required": [
            "type",
            "id",
            "name",
            "email",
            "role",
            "model",
            "version",
            "service_name",
            "metadata",
        ],
        "properties": {
            "type": {"type": "string", "examples": [a.value for a in ActorType]},
            "id": _STRING,
            "name": _nullable(_STRING),
            "email": _nullable(_STRING),
            "role": _nullable(_STRING),
            "model": _nullable(_STRING),
            "version": _nullable(_STRING),
            "service_name": _nullable(_STRING),
            "metadata": _OBJECT,
        },
    },
    "Decision": {
        "type": "object",
        "required": [
            "reasoning",
            "context",
            "alternatives",
            "rejection_reasons",
            "confidence",
            "risk_level",
        ],
        "properties": {
            "reasoning": _STRING,
            "context": _OBJECT,
            "alternatives": {"type": "array", "items": _OBJECT},
            "rejection_reasons": {"type": "object", "additionalProperties": _STRING},
            "confidence": _nullable({"type": "number"}),
            "risk_level": _nullable({"type": "string", "examples": [r.value for r in RiskLevel]}),
        },
    },
    "TrackedObject": {
        "type": "object",
        "required": ["object_type", "external_id", "state", "state_before", "state_after"],
        "properties": {
            "object_type": {"type": "string", "examples": [o.value for o in ObjectType]},
            "external_id": _STRING,
            "state": _OBJECT,
            "state_before": _nullable(_OBJECT),
            "state_after": _nullable(_OBJECT),
        },
    },
    "Event": {
        "type": "object",
        "description": "One event: the shape of `decision-trace show --json`.",
        "required": [
            "id",
            "timestamp",
            "duration_ms",
            "event_type",
            "description",
            "actor",
            "decision",
            "objects",
            "outcome",
            "error",
            "tags",
            "metadata",
            "correlation_id",
            "parent_event_id",
            "service_name",
        ],
        "properties": {
            "id": {"type": "string", "description": "The span id, 16 lowercase hex."},
            "timestamp": {"type": "string", "format": "date-time"},
            "duration_ms": {"type": "number"},
            "event_type": _STRING,
            "description": _STRING,
            "actor": _nullable(_ref("Actor")),
            "decision": _nullable(_ref("Decision")),
            "objects": {"type": "array", "items": _ref("TrackedObject")},
            "outcome": {"type": "string", "examples": [o.value for o in Outcome]},
            "error": _nullable(_STRING),
            "tags": {"type": "array", "items": _STRING},
            "metadata": _OBJECT,
            "correlation_id": {"type": "string", "description": "The trace id, 32 hex."},
            "parent_event_id": _nullable(_STRING),
            "service_name": _nullable(_STRING),
        },
    },
    "ChainEvent": {
        "allOf": [
            _ref("Event"),
            {
                "type": "object",
                "required": ["depth"],
                "properties": {"depth": {"type": "integer", "minimum": 0}},
            },
        ]
    },
    "EventPage": {
        "type": "object",
        "required": ["events", "next_cursor"],
        "properties": {
            "events": {"type": "array", "items": _ref("Event"), "maxItems": MAX_PAGE},
            "next_cursor": _nullable(
                {"type": "string", "description": "Pass as `cursor` for the next page."}
            ),
        },
    },
    "HistoryPage": {
        "type": "object",
        "required": ["object_type", "external_id", "events", "next_cursor"],
        "properties": {
            "object_type": _STRING,
            "external_id": _STRING,
            "events": {"type": "array", "items": _ref("Event"), "maxItems": MAX_PAGE},
            "next_cursor": _nullable(_STRING),
        },
    },
    "Chain": {
        "type": "object",
        "required": ["events"],
        "properties": {
            "events": {
                "type": "array",
                "minItems": 1,
                "items": _ref("ChainEvent"),
                "description": "Depth first from the topmost stored ancestor (depth 0).",
            }
        },
    },
    "Count": {
        "type": "object",
        "required": ["count"],
        "properties": {"count": {"type": "integer", "minimum": 0}},
    },
    "EventIds": {
        "type": "object",
        "required": ["ids"],
        "properties": {"ids": {"type": "array", "items": _STRING, "maxItems": MAX_PAGE}},
    },
    "ObjectTypes": {
        "type": "object",
        "required": ["external_id", "types"],
        "properties": {
            "external_id": _STRING,
            "types": {"type": "array", "items": {"enum": [o.value for o in ObjectType]}},
        },
    },
    "Stats": {
        "type": "object",
        "description": "The shape of `decision-trace stats --json`.",
        "required": [
            "db",
            "size_bytes",
            "wal_bytes",
            "schema_version",
            "events",
            "objects",
            "distinct_objects",
            "first",
            "last",
            "span_seconds",
            "by_event_type",
            "by_actor_type",
            "by_outcome",
            "by_day",
        ],
        "properties": {
            "db": _STRING,
            "size_bytes": {"type": "integer"},
            "wal_bytes": {"type": "integer"},
            "schema_version": {"type": "integer"},
            "events": {"type": "integer"},
            "objects": {"type": "integer"},
            "distinct_objects": {"type": "integer"},
            "first": _nullable({"type": "string", "format": "date-time"}),
            "last": _nullable({"type": "string", "format": "date-time"}),
            "span_seconds": _nullable({"type": "number"}),
            "by_event_type": {"type": "object", "additionalProperties": {"type": "integer"}},
            "by_actor_type": {
                "type": "object",
                "additionalProperties": {"type": "integer"},
                "description": '"none" counts the events without an actor.',
            },
            "by_outcome": {"type": "object", "additionalProperties": {"type": "integer"}},
            "by_day": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
    },
    "Health": {"type": "object", "required": ["ok"], "properties": {"ok": {"const": True}}},
    "Ready": {"type": "object", "required": ["ready"], "properties": {"ready": {"const": True}}},
}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


_ERRORS = {
    "400": _json("Error", "A parameter is wrong (`field` names it)."),
    "401": _json("Error", "The bearer token is missing or wrong."),
    "404": _json("Error", "No such event, or no such path."),
    "503": _json("Error", "The ledger cannot be read now."),
}


def _query(
    name: str, schema: dict[str, Any], description: str, *, required: bool = False
) -> dict[str, Any]:
    parameter: dict[str, Any] = {
        "name": name,
        "in": "query",
        "required": required,
        "schema": schema,
        "description": description,
    }
    if schema.get("type") == "array":
        parameter.update(style="form", explode=True)
    return parameter


def _path(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


def _list(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


_TIME_TEXT = (
    "An ISO 8601 time (2026-03-01, 2026-03-01T12:00:00Z, ...T12:00:00.5+02:00); no offset "
    "means UTC."
)
_NS = {"type": "integer", "minimum": -_MAX_NS_PARAM, "maximum": _MAX_NS_PARAM}

_FILTER_PARAMETERS = [
    _query("start", {"type": "string"}, "Events at or after this time. " + _TIME_TEXT),
    _query("end", {"type": "string"}, "Events before this time. " + _TIME_TEXT),
    _query("start_ns", _NS, "As `start`, in nanoseconds since 1970 (not with `start`)."),
    _query("end_ns", _NS, "As `end`, in nanoseconds since 1970 (not with `end`)."),
    _query("event_type", _list(_STRING), "Event types (repeat for several)."),
    _query(
        "actor_type",
        _list({"type": "string", "enum": [a.value for a in ActorType]}),
        "Actor types.",
    ),
    _query("actor_id", _list(_STRING), "Actor ids."),
    _query(
        "object_type",
        _list({"type": "string", "enum": [o.value for o in ObjectType]}),
        "Types of an affected object.",
    ),
    _query(
        "object_id",
        _list(_STRING),
        "External ids of an affected object (with `object_type`: the same object).",
    ),
    _query("tag", _list(_STRING), "Events carrying any of these tags."),
    _query("outcome", {"type": "string", "enum": [o.value for o in Outcome]}, "How it ended."),
    _query("correlation_id", _STRING, "The trace id (32 hex)."),
]


def _limit(default: int) -> dict[str, Any]:
    return _query(
        "limit",
        {"type": "integer", "minimum": 0, "maximum": MAX_PAGE, "default": default},
        f"At most this many (a page; at most {MAX_PAGE}).",
    )


_CURSOR = _query("cursor", _STRING, "The `next_cursor` of the previous page.")
_SECURED: list[dict[str, list[str]]] = [{"bearer": []}]


def _get(
    operation_id: str,
    summary: str,
    parameters: list[dict[str, Any]],
    ok: dict[str, Any],
    *,
    secured: bool = True,
    errors: tuple[str, ...] = ("400", "401", "404", "503"),
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "parameters": parameters,
        "responses": {"200": ok, **{code: _ERRORS[code] for code in errors}},
    }
    operation["security"] = _SECURED if secured else []
    return {"get": operation}


_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "decision-trace ledger service: read API",
        "version": "1",
        "description": (
            "Read the team's decision ledger: events with every filter of `query()`, one "
            "event, its chain, an object's history, full-text search and counts, as JSON in "
            "the shapes of the command line's `--json`. Lists are pages: pass `next_cursor` "
            "back as `cursor`. Events are written over OTLP (`POST /v1/traces`), not here."
        ),
    },
    "components": {
        "schemas": _SCHEMAS,
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "The service's token (`decision-trace serve --token`), when set.",
            }
        },
    },
    "security": _SECURED,
    "paths": {
        "/healthz": _get(
            "healthz",
            "The process is up (always 200).",
            [],
            _json("Health", "Up."),
            secured=False,
            errors=(),
        ),
        "/readyz": _get(
            "readyz",
            "The ledger can be read (200), or not (503).",
            [],
            _json("Ready", "Ready."),
            secured=False,
            errors=("503",),
        ),
        f"{API_PREFIX}/events": _get(
            "listEvents",
            "Events matching the filters, newest first (order=asc: oldest first), paged.",
            [
                *_FILTER_PARAMETERS,
                _query("order", {"type": "string", "enum": ["desc", "asc"], "default": "desc"}, ""),
                _limit(100),
                _query(
                    "offset",
                    {"type": "integer", "minimum": 0, "maximum": _MAX_INT64},
                    "Skip this many first (first page only; not with `cursor`).",
                ),
                _CURSOR,
            ],
            _json("EventPage", "A page of events."),
        ),
        f"{API_PREFIX}/events/count": _get(
            "countEvents",
            "How many events match the filters.",
            list(_FILTER_PARAMETERS),
            _json("Count", "The count."),
        ),
        f"{API_PREFIX}/events/{{event_id}}": _get(
            "getEvent",
            "One event (404 when no event has this id).",
            [_path("event_id", {"type": "string", "minLength": 1}, "16 hex characters.")],
            _json("Event", "The event."),
        ),
        f"{API_PREFIX}/events/{{event_id}}/chain": _get(
            "getChain",
            "The chain the event belongs to: its topmost stored ancestor and every "
            "descendant, depth first, each with its depth.",
            [_path("event_id", {"type": "string", "minLength": 1}, "16 hex characters.")],
            _json("Chain", "The chain."),
        ),
        f"{API_PREFIX}/event-ids": _get(
            "eventIdsWithPrefix",
            "The stored event ids that start with a prefix, in id order.",
            [
                _query(
                    "prefix",
                    {"type": "string", "pattern": "^[0-9A-Fa-f]+$"},
                    "Hex characters.",
                    required=True,
                ),
                _limit(10),
            ],
            _json("EventIds", "The ids."),
        ),
        f"{API_PREFIX}/objects": _get(
            "objectTypesOf",
            "The types of the objects with this external id that some event touched.",
            [_query("id", {"type": "string", "minLength": 1}, "An external id.", required=True)],
            _json("ObjectTypes", "The types."),
        ),
        f"{API_PREFIX}/objects/{{object_type}}/{{external_id}}/history": _get(
            "objectHistory",
            "Every event that touched the object, oldest first, paged.",
            [
                _path(
                    "object_type",
                    {"type": "string", "enum": [o.value for o in ObjectType]},
                    "The object's type.",
                ),
                _path(
                    "external_id",
                    {"type": "string", "minLength": 1},
                    "The object's id in the application (percent-encoded; may hold '/').",
                ),
                _limit(100),
                _CURSOR,
            ],
            _json("HistoryPage", "A page of the object's history."),
        ),
        f"{API_PREFIX}/search": _get(
            "search",
            "Events whose description, reasoning or context hold every word of `q`, most "
            "recently stored first, paged. Any text is safe.",
            [
                _query("q", _STRING, "The words to search for.", required=True),
                _limit(50),
                _CURSOR,
            ],
            _json("EventPage", "A page of matches."),
        ),
        f"{API_PREFIX}/stats": _get(
            "stats",
            "Counts by event type, actor type, outcome and day; the ledger's size.",
            [
                _query(
                    "days",
                    {"type": "integer", "minimum": 0, "maximum": _MAX_INT64},
                    "Per-day counts for the newest N days with events (default: all).",
                )
            ],
            _json("Stats", "The counts."),
        ),
        "/openapi.json": _get(
            "openapi",
            "This document.",
            [],
            {"description": "The OpenAPI document.", "content": {"application/json": {}}},
            errors=("401",),
        ),
    },
}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the read API (a fresh copy, safe to change)."""
    return copy.deepcopy(_DOCUMENT)
