"""A finished OpenTelemetry span to an :class:`~decision_trace.record.EventRecord`: the
one decoder the exporter, and anything else that receives spans, uses."""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Mapping
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from ._json import _encode, dumps
from .attributes import (
    ACTOR_ID,
    ACTOR_METADATA,
    ACTOR_NAME,
    ACTOR_SERVICE_NAME,
    ACTOR_TYPE,
    ACTOR_VERSION,
    ALTERNATIVES,
    CONFIDENCE,
    CONTEXT,
    DESCRIPTION,
    ERROR,
    EVENT_TYPE,
    GEN_AI_AGENT_VERSION,
    GEN_AI_REQUEST_MODEL,
    METADATA,
    OBJECT_IDS,
    OBJECT_STATES,
    OBJECT_TYPES,
    OUTCOME,
    REASONING,
    REJECTION_REASONS,
    RISK_LEVEL,
    SERVICE_NAME,
    TAGS,
    USER_EMAIL,
    USER_ID,
    USER_NAME,
    USER_ROLES,
)
from .models import (
    ActorType,
    Outcome,
    clean_text,
)
from .record import EventRecord, span_id_hex, trace_id_hex


def _json_or_null(value: Any) -> str:
    return value if isinstance(value, str) else "null"


def _str_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if type(value) is tuple:
        # The SDK stores sequences as tuples; ours hold only strings, which join() checks
        # (in C) faster than converting each item again.
        try:
            "".join(value)
        except TypeError:
            pass
        else:
            return value
    return tuple(map(str, value))


def _decode_span(
    span_id: int,
    trace_id: int,
    parent_span_id: int | None,
    name: str,
    start_ns: int,
    end_ns: int,
    attrs: Mapping[str, Any],
    service_name: str | None,
    status_error: str | None,
    failed: bool,
) -> EventRecord:
    """Decode one finished span's data into an :class:`EventRecord`.

    Spans made by decision-trace carry ``decision_trace.event_type``. Any other span (an
    auto-instrumented HTTP request, say) becomes an event whose type is the span name,
    whose actor comes from ``user.id`` or the resource's ``service.name``, and whose
    metadata holds all its attributes, so ``get_chain`` shows what led to a decision.
    """
    # Runs for every span in the thread that ends it (the ledger processor's on_end), so
    # it is part of record()'s cost: plain lookups, positional construction.
    get = attrs.get
    event_type = get(EVENT_TYPE)
    if event_type is None:
        return _foreign_record(
            span_id,
            trace_id,
            parent_span_id,
            name,
            start_ns,
            end_ns,
            attrs,
            service_name,
            status_error,
            failed,
        )
    actor_type = get(ACTOR_TYPE)
    actor_json = None
    if actor_type is not None:
        extras = {field: attrs[key] for field, key in _ACTOR_EXTRA_KEYS if key in attrs}
        if USER_ROLES in attrs:
            roles = _str_tuple(attrs[USER_ROLES])
            if roles:
                extras["role"] = roles[0]
        if ACTOR_METADATA in attrs:
            extras["metadata"] = _RawJSON(attrs[ACTOR_METADATA])
        if extras:
            actor_json = _dump_with_raw(extras)
    context = get(CONTEXT)
    alternatives = get(ALTERNATIVES)
    rejection_reasons = get(REJECTION_REASONS)
    confidence = get(CONFIDENCE)
    risk = get(RISK_LEVEL)
    reasoning = get(REASONING)
    decision_json = None
    if (
        reasoning is not None
        or context is not None
        or alternatives is not None
        or rejection_reasons is not None
        or confidence is not None
        or risk is not None
    ):
        decision_json = (
            '{"context":'
            + (context if context is not None else "{}")
            + ',"alternatives":'
            + (alternatives if alternatives is not None else "[]")
            + ',"rejection_reasons":'
            + (rejection_reasons if rejection_reasons is not None else "{}")
            + ',"confidence":'
            + (json.dumps(confidence) if confidence is not None else "null")
            + ',"risk_level":'
            + (json.dumps(risk) if risk is not None else "null")
            + "}"
        )
    outcome = get(OUTCOME) or (_FAILURE if failed else _SUCCESS)
    error = get(ERROR)
    if error is None and failed and status_error is not None:
        error = clean_text(status_error)  # set by hand on the span, not by the builder
    types = get(OBJECT_TYPES)
    ids = get(OBJECT_IDS)
    tags = get(TAGS)
    return EventRecord(
        format(span_id, "016x"),
        format(trace_id, "032x"),
        format(parent_span_id, "016x") if parent_span_id else None,
        start_ns,
        end_ns - start_ns if end_ns > start_ns else 0,
        str(event_type),
        str(get(DESCRIPTION, "")),
        actor_type,
        get(ACTOR_ID),
        get(ACTOR_NAME),
        actor_json,
        reasoning,
        decision_json,
        _str_tuple(types) if types is not None else (),
        _str_tuple(ids) if ids is not None else (),
        get(OBJECT_STATES),
        _str_tuple(tags) if tags is not None else (),
        str(outcome),
        error,
        get(METADATA),
        service_name,
    )


_SUCCESS = Outcome.SUCCESS.value
_FAILURE = Outcome.FAILURE.value


_ACTOR_EXTRA_KEYS = (
    ("email", USER_EMAIL),
    ("model", GEN_AI_REQUEST_MODEL),
    ("version", GEN_AI_AGENT_VERSION),
    ("version", ACTOR_VERSION),
    ("service_name", ACTOR_SERVICE_NAME),
)


class _RawJSON(str):
    """A string that is already JSON, to splice into a larger JSON document."""


def _dump_with_raw(values: Mapping[str, Any]) -> str:
    parts = []
    for key, value in values.items():
        encoded = str(value) if isinstance(value, _RawJSON) else _encode(value)
        parts.append(f"{_encode(key)}:{encoded}")
    return "{" + ",".join(parts) + "}"


def _foreign_record(
    span_id: int,
    trace_id: int,
    parent_span_id: int | None,
    name: str,
    start_ns: int,
    end_ns: int,
    attrs: Mapping[str, Any],
    service_name: str | None,
    status_error: str | None,
    failed: bool,
) -> EventRecord:
    actor_type: str | None = None
    actor_id: str | None = None
    actor_name: str | None = None
    # Another library's span: its text is made plain text here, as the builder does.
    if attrs.get(USER_ID):
        actor_type, actor_id = ActorType.USER.value, clean_text(str(attrs[USER_ID]))
        actor_name = clean_text(str(attrs[USER_NAME])) if attrs.get(USER_NAME) else None
    elif service_name:
        actor_type, actor_id = ActorType.SYSTEM.value, service_name
    metadata = {key: list(v) if isinstance(v, tuple) else v for key, v in attrs.items()}
    return EventRecord(
        id=span_id_hex(span_id),
        trace_id=trace_id_hex(trace_id),
        parent_id=span_id_hex(parent_span_id) if parent_span_id else None,
        start_ns=start_ns,
        duration_ns=max(0, end_ns - start_ns),
        event_type=clean_text(name) or "span",
        description="",
        actor_type=actor_type,
        actor_id=actor_id,
        actor_name=actor_name,
        actor_json=None,
        reasoning=None,
        decision_json=None,
        object_types=(),
        object_ids=(),
        objects_json=None,
        tags=(),
        outcome=Outcome.FAILURE.value if failed else Outcome.SUCCESS.value,
        error=clean_text(status_error) if failed and status_error is not None else None,
        metadata_json=dumps(metadata, "attributes") if metadata else None,
        service_name=service_name,
    )


def _plain_attributes(span: ReadableSpan) -> Mapping[str, Any]:
    """The span's attributes as a plain dict, for fast lookups (most keys looked up are
    absent, and a miss on the SDK's mapping raises and catches a KeyError in Python).

    A finished SDK span keeps them in ``BoundedAttributes._dict``; read it directly when
    it is there (read only: the span has ended), else copy through the public mapping.
    """
    raw = getattr(getattr(span, "_attributes", None), "_dict", None)
    if type(raw) is dict:
        return raw
    attributes = span.attributes
    return dict(attributes) if attributes else {}


def record_from_span(span: ReadableSpan) -> EventRecord:
    """Decode one finished SDK span into an :class:`EventRecord`."""
    global _last_resource
    context = span.context
    if context is None:
        raise ValueError("span has no context")
    parent = span.parent
    status = span.status
    start_ns = span.start_time or 0
    resource = span.resource
    cached_resource, service_name = _last_resource
    if resource is not cached_resource:
        # Every span of a provider shares its resource: look the name up once.
        service = resource.attributes.get(SERVICE_NAME) if resource is not None else None
        service_name = clean_text(str(service)) if service is not None else None
        _last_resource = (resource, service_name)
    return _decode_span(
        context.span_id,
        context.trace_id,
        parent.span_id if parent is not None else None,
        span.name,
        start_ns,
        span.end_time or start_ns,
        _plain_attributes(span),
        service_name,
        status.description,
        status.status_code is StatusCode.ERROR,
    )


_last_resource: tuple[object, str | None] = (object(), None)
"""The last span's resource and its service name (a tuple: replaced in one step)."""
