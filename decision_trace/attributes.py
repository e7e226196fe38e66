"""Every span attribute key decision-trace emits, and the encoding both ways.

This module is the wire format. The builder encodes models into span attributes with
it; the SQLite exporter decodes finished spans into :class:`EventRecord` rows with it;
the query module turns stored records back into :class:`~decision_trace.models.TraceEvent`
with it. No other module spells an attribute key.

OpenTelemetry semantic conventions are used where one exists (``user.*``, ``gen_ai.*``,
``service.*``), so any tracing backend understands actors without knowing
decision-trace. Everything else lives under ``decision_trace.*``. Structured values are
JSON strings.

Coercion rules (how values JSON cannot hold are stored; applied to ``context``,
``alternatives``, object ``state`` and ``metadata`` values, at any depth):

====================================  ==================================================
value                                 stored as
====================================  ==================================================
``str``, ``int``, ``bool``, ``None``  itself (integers of any size stay exact; over
                                      4300 digits is an error)
finite ``float``                      itself
NaN, +inf, -inf (float or Decimal)    the strings ``"NaN"``, ``"Infinity"``,
                                      ``"-Infinity"``
``Decimal``                           a JSON number if a float prints back to the same
                                      decimal (every two-decimal money amount below
                                      10**13 does), else its string (``"0.1234567890123456789"``)
``datetime``, ``date``, ``time``      ISO 8601 string (``datetime.isoformat()``)
``timedelta``                         its total seconds, a number
``UUID``, ``pathlib.Path``            ``str(value)``
``bytes``, ``bytearray``              standard base64 string
``Enum``                              its ``.value``, coerced again
dataclass instance                    a dict of its fields
``set``, ``frozenset``                a list, sorted by each item's JSON form
``tuple``, ``list``, other sequences  a list
mapping                               a dict; keys must be ``str``, ``int``, ``float``,
                                      ``bool``, ``None`` or an ``Enum`` (stored as JSON
                                      would: ``1`` -> ``"1"``, ``True`` -> ``"true"``);
                                      two keys of one mapping that become the same
                                      string (``1`` and ``"1"``) are not an error: the
                                      one given last is the value read back
====================================  ==================================================

(Finding such a pair would mean walking every mapping of every value on ``record()``'s
path, to catch what is almost always a bug in the caller's own data.)

Any other type, a structure that contains itself, and lists or dicts nested more than
500 deep raise :class:`~decision_trace.errors.InvalidInputError` naming the field
(``context['items'][2]``).
Strings are never truncated. Inside JSON values every string is kept exactly, lone
surrogates included; in plain text fields (description, reasoning, ids, names, tags) a
lone surrogate, which UTF-8 cannot hold, is replaced by U+FFFD.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import json.encoder
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from enum import Enum
from functools import partial
from pathlib import PurePath
from typing import Any
from uuid import UUID

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from .errors import InvalidInputError
from .models import (
    DEFERRED_KEY,
    Actor,
    ActorType,
    DecisionTrace,
    ObjectType,
    Outcome,
    RiskLevel,
    TraceEvent,
    TrackedObject,
)

# --- Semantic-convention keys -------------------------------------------------------

USER_ID = "user.id"
"""Semconv: the acting user's id (``Actor.id`` of a user)."""
USER_NAME = "user.name"
"""Semconv: the acting user's name (``Actor.name`` of a user)."""
USER_EMAIL = "user.email"
"""Semconv: the acting user's e-mail address. Personal data."""
USER_ROLES = "user.roles"
"""Semconv: the acting user's roles, a string array (``[Actor.role]``)."""
GEN_AI_AGENT_ID = "gen_ai.agent.id"
"""Semconv: the acting AI agent's id."""
GEN_AI_AGENT_NAME = "gen_ai.agent.name"
"""Semconv: the acting AI agent's name."""
GEN_AI_AGENT_VERSION = "gen_ai.agent.version"
"""Semconv: the acting AI agent's version."""
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
"""Semconv: the model the AI agent runs."""
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
"""Semconv: set to ``invoke_agent`` on events whose actor is an AI agent."""
GEN_AI_OPERATION_INVOKE_AGENT = "invoke_agent"
"""The ``gen_ai.operation.name`` value for an agent's decision."""
SERVICE_NAME = "service.name"
"""Semconv (resource): the service that recorded the event."""
SERVICE_PEER_NAME = "service.peer.name"
"""Semconv: the name of an external actor's service."""

# --- decision-trace keys ------------------------------------------------------------

NAMESPACE = "decision_trace."
"""The prefix of every key of ours."""
EVENT_TYPE = "decision_trace.event_type"
"""What happened (``order.created``). Its presence marks a span as a decision event."""
DESCRIPTION = "decision_trace.description"
"""A sentence describing the event."""
ACTOR_TYPE = "decision_trace.actor.type"
"""The kind of actor: one of :class:`~decision_trace.models.ActorType`'s values."""
ACTOR_ID = "decision_trace.actor.id"
"""The actor's id, whatever its type."""
ACTOR_NAME = "decision_trace.actor.name"
"""The actor's display name."""
ACTOR_VERSION = "decision_trace.actor.version"
"""The version of a job or system actor (AI agents use ``gen_ai.agent.version``)."""
ACTOR_SERVICE_NAME = "decision_trace.actor.service_name"
"""The service a compute, system or external actor runs as."""
ACTOR_METADATA = "decision_trace.actor.metadata"
"""Other facts about the actor, JSON object."""
REASONING = "decision_trace.reasoning"
"""Why the action was taken, in words."""
CONTEXT = "decision_trace.context"
"""The facts the decision was based on, JSON object."""
ALTERNATIVES = "decision_trace.alternatives"
"""Options considered, JSON array of objects."""
REJECTION_REASONS = "decision_trace.rejection_reasons"
"""Why each alternative was rejected, JSON object keyed by action."""
CONFIDENCE = "decision_trace.confidence"
"""The actor's confidence, a float from 0 to 1."""
RISK_LEVEL = "decision_trace.risk_level"
"""One of :class:`~decision_trace.models.RiskLevel`'s values."""
OBJECT_TYPES = "decision_trace.object.types"
"""The types of the objects touched, string array aligned with ``object.ids``."""
OBJECT_IDS = "decision_trace.object.ids"
"""The ids of the objects touched, string array (searchable in any backend)."""
OBJECT_STATES = "decision_trace.object.states"
"""JSON array aligned with ``object.ids``: ``{"state":…,"before":…,"after":…}``."""
TAGS = "decision_trace.tags"
"""Free-form labels, string array."""
METADATA = "decision_trace.metadata"
"""Extra data attached with ``with_metadata()``, JSON object."""
OUTCOME = "decision_trace.outcome"
"""One of :class:`~decision_trace.models.Outcome`'s values."""
ERROR = "decision_trace.error"
"""The error message of a failed event."""

# --- JSON coercion ------------------------------------------------------------------

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_INT_DIGITS_LIMIT = 4300
_INT_LIMIT = 10**_INT_DIGITS_LIMIT  # the smallest integer of 4301 digits


def clean_text(value: str) -> str:
    """Replace lone surrogates (which UTF-8 cannot hold) with U+FFFD; else unchanged."""
    if value.isascii():
        return value
    return _LONE_SURROGATE.sub("\ufffd", value)


def exception_message(error: BaseException) -> str:
    """``str(error)`` as plain text (lone surrogates replaced), never raising: an
    exception whose ``__str__`` fails gives ``"<exception str() failed>"``, as
    :mod:`traceback` shows it."""
    try:
        message = str(error)
    except Exception:
        return "<exception str() failed>"
    return clean_text(message)


def exception_text(error: BaseException) -> str:
    """The error text of a failed event: ``"<type name>: <message>"``, plain text."""
    return clean_text(type(error).__name__) + ": " + exception_message(error)


def _float_value(value: float) -> float | str:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _decimal_value(value: Decimal) -> float | str:
    if not value.is_finite():
        return "NaN" if value.is_nan() else ("Infinity" if value > 0 else "-Infinity")
    as_float = float(value)
    if math.isfinite(as_float) and Decimal(repr(as_float)) == value:
        return as_float
    return str(value)


def _key(key: Any, path: str) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, Enum):
        return _key(key.value, path)
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)
    raise InvalidInputError(path, f"keys must be strings, got {type(key).__name__} {key!r}")


def coerce_json(value: Any, path: str) -> Any:
    """Return ``value`` made of JSON types only, by the rules in this module's docstring.

    Args:
        value: Any Python value.
        path: The field's name, used in error messages (``"context"``).

    Raises:
        InvalidInputError: the value holds a type with no rule, or contains itself.
    """
    return _coerce(value, path, set())


def _coerce(value: Any, path: str, seen: set[int]) -> Any:
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, Enum):
        return _coerce(value.value, path, seen)
    if isinstance(value, int):
        if not -_INT_LIMIT < value < _INT_LIMIT:
            raise InvalidInputError(path, "integer too large to store (over 4300 digits)")
        return int(value)
    if isinstance(value, float):
        return _float_value(value)
    if isinstance(value, Decimal):
        return _decimal_value(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, UUID | PurePath):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    marker = id(value)
    if marker in seen:
        raise InvalidInputError(path, "contains a reference to itself (a cycle)")
    seen.add(marker)
    try:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {
                f.name: _coerce(getattr(value, f.name), f"{path}.{f.name}", seen)
                for f in dataclasses.fields(value)
            }
        if isinstance(value, Mapping):
            result: dict[str, Any] = {}
            for key, item in value.items():
                name = _key(key, path)
                result[name] = _coerce(item, f"{path}[{name!r}]", seen)
            return result
        if isinstance(value, set | frozenset):
            items = [_coerce(item, f"{path}[…]", seen) for item in value]
            return sorted(items, key=_canonical)
        if isinstance(value, Sequence):
            return [_coerce(item, f"{path}[{i}]", seen) for i, item in enumerate(value)]
    finally:
        seen.discard(marker)
    raise InvalidInputError(
        path,
        f"cannot store a value of type {type(value).__name__}; "
        "convert it to a string, number, list or dict first",
    )


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=True)


def dumps(value: Any, path: str) -> str:
    """Encode ``value`` as compact JSON, coercing as documented above.

    Raises:
        InvalidInputError: the value cannot be stored; the message names ``path``.
    """
    try:
        # Fast path: most values are plain JSON already.
        encoded = _encode(value)
    except (TypeError, ValueError, RecursionError):
        try:
            encoded = _encode(coerce_json(value, path))
        except RecursionError:
            raise InvalidInputError(path, "is nested too deeply to store") from None
    if len(encoded) <= MAX_DEPTH:  # too short to nest deeper (the usual case)
        return encoded
    return _check_depth(encoded, path)


MAX_DEPTH = 500
"""Deepest nesting of lists and dicts a value may have (SQLite's JSON functions, which
index the context for search, refuse documents nested about 1000 deep)."""

_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _check_depth(encoded: str, path: str) -> str:
    if len(encoded) <= MAX_DEPTH or encoded.count("[") + encoded.count("{") <= MAX_DEPTH:
        return encoded
    depth = 0
    for token in _JSON_TOKEN.findall(encoded):
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise InvalidInputError(path, f"is nested more than {MAX_DEPTH} levels deep")
        elif token in "]}":
            depth -= 1
    return encoded


def _not_json(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _make_encoder() -> Callable[[Any], str]:
    """Compact, ASCII-only, NaN-refusing JSON encoding, built once.

    ``json.dumps()`` with options builds a new encoder on every call; the C encoder is
    reused here instead. It runs without the circular-reference check (a cycle ends in
    RecursionError, which ``dumps`` turns into the coercion path that names the cycle).
    """
    c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if c_make_encoder is None:  # pragma: no cover - CPython always has it
        return json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode
    iterencode = c_make_encoder(
        None, _not_json, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False
    )
    join = "".join

    def encode(value: Any) -> str:
        return join(iterencode(value, 0))

    return encode


_encode = _make_encoder()

_scan_json: Callable[[str, int], tuple[Any, int]] = json.decoder.JSONDecoder().scan_once  # type: ignore[attr-defined]


def loads_json(text: str) -> Any:
    """Decode JSON text this module wrote (compact, one value): ``json.loads`` without
    its two whitespace regex passes; anything else goes through ``json.loads``."""
    try:
        value, end = _scan_json(text, 0)
    except StopIteration:
        return json.loads(text)  # raises the usual JSONDecodeError
    return value if end == len(text) else json.loads(text)


# --- Encoding: models -> attributes -------------------------------------------------

AttributeValue = str | bool | int | float | Sequence[str]


def actor_attributes(actor: Actor) -> dict[str, AttributeValue]:
    """The span attributes that describe ``actor``, semconv keys included."""
    return actor_fields_attributes(
        actor.type,
        actor.id,
        actor.name,
        actor.email,
        actor.role,
        actor.model,
        actor.version,
        actor.service_name,
        actor.metadata,
    )


def actor_fields_attributes(
    actor_type: ActorType,
    actor_id: str,
    name: str | None = None,
    email: str | None = None,
    role: str | None = None,
    model: str | None = None,
    version: str | None = None,
    service_name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, AttributeValue]:
    """:func:`actor_attributes` from the fields of a validated actor (the builder's fast
    path, which checks the fields without building an :class:`Actor`)."""
    actor_id = clean_text(actor_id)
    attrs: dict[str, AttributeValue] = {ACTOR_TYPE: actor_type.value, ACTOR_ID: actor_id}
    if name is not None:
        name = clean_text(name)
        attrs[ACTOR_NAME] = name
    if actor_type is ActorType.USER:
        attrs[USER_ID] = actor_id
        if name is not None:
            attrs[USER_NAME] = name
    elif actor_type is ActorType.AI_AGENT:
        attrs[GEN_AI_OPERATION_NAME] = GEN_AI_OPERATION_INVOKE_AGENT
        attrs[GEN_AI_AGENT_ID] = actor_id
        if name is not None:
            attrs[GEN_AI_AGENT_NAME] = name
    if email is not None:
        attrs[USER_EMAIL] = clean_text(email)
    if role is not None:
        attrs[USER_ROLES] = [clean_text(role)]
    if model is not None:
        attrs[GEN_AI_REQUEST_MODEL] = clean_text(model)
    if version is not None:
        attrs[GEN_AI_AGENT_VERSION if actor_type is ActorType.AI_AGENT else ACTOR_VERSION] = (
            clean_text(version)
        )
    if service_name is not None:
        service_name = clean_text(service_name)
        attrs[ACTOR_SERVICE_NAME] = service_name
        if actor_type is ActorType.EXTERNAL:
            attrs[SERVICE_PEER_NAME] = service_name
    if metadata:
        attrs[ACTOR_METADATA] = dumps(metadata, "actor.metadata")
    return attrs


def decision_attributes(decision: DecisionTrace) -> dict[str, AttributeValue]:
    """The span attributes that describe ``decision``."""
    return decision_fields_attributes(
        decision.reasoning,
        decision.context,
        decision.alternatives,
        decision.rejection_reasons,
        decision.confidence,
        decision.risk_level,
    )


def decision_fields_attributes(
    reasoning: str,
    context: Mapping[str, Any],
    alternatives: Sequence[Mapping[str, Any]],
    rejection_reasons: Mapping[str, str],
    confidence: float | None = None,
    risk_level: RiskLevel | None = None,
) -> dict[str, AttributeValue]:
    """:func:`decision_attributes` from the fields of a validated decision."""
    attrs: dict[str, AttributeValue] = {REASONING: clean_text(reasoning)}
    if context:
        attrs[CONTEXT] = dumps(context, "context")
    if alternatives:
        attrs[ALTERNATIVES] = dumps(alternatives, "alternatives")
    if rejection_reasons:
        attrs[REJECTION_REASONS] = dumps(rejection_reasons, "rejection_reasons")
    if confidence is not None:
        attrs[CONFIDENCE] = confidence
    if risk_level is not None:
        attrs[RISK_LEVEL] = risk_level.value
    return attrs


def object_state_json(obj: TrackedObject) -> str:
    """The JSON element of ``decision_trace.object.states`` for one object."""
    return object_fields_state_json(obj.object_type, obj.state, obj.state_before, obj.state_after)


def object_fields_state_json(
    object_type: ObjectType,
    state: Mapping[str, Any] | None,
    state_before: Mapping[str, Any] | None = None,
    state_after: Mapping[str, Any] | None = None,
) -> str:
    """:func:`object_state_json` from the fields of a validated object."""
    if not state and state_before is None and state_after is None:
        return EMPTY_OBJECT_STATE
    name = object_type.value
    encoded = '{"state":' + (dumps(state, f"{name} state") if state else "{}")
    if state_before is not None:
        encoded += ',"before":' + dumps(state_before, f"{name} state_before")
    if state_after is not None:
        encoded += ',"after":' + dumps(state_after, f"{name} state_after")
    return encoded + "}"


EMPTY_OBJECT_STATE = '{"state":{}}'
"""The state element of an object recorded with no state."""


def objects_attributes(
    types: Sequence[str], ids: Sequence[str], states: Sequence[str]
) -> dict[str, AttributeValue]:
    """The span attributes for the objects touched (aligned lists of types, ids, states)."""
    if not ids:
        return {}
    attrs: dict[str, AttributeValue] = {OBJECT_TYPES: types, OBJECT_IDS: ids}
    if states.count(EMPTY_OBJECT_STATE) != len(states):
        attrs[OBJECT_STATES] = "[" + ",".join(states) + "]"
    return attrs


# --- Decoding: spans -> records -> models -------------------------------------------


@dataclass(slots=True)
class EventRecord:
    """One event in the flat form the store keeps: ids, integers, text and JSON text."""

    id: str
    trace_id: str
    parent_id: str | None
    start_ns: int
    duration_ns: int
    event_type: str
    description: str
    actor_type: str | None
    actor_id: str | None
    actor_name: str | None
    actor_json: str | None
    reasoning: str | None
    decision_json: str | None
    object_types: tuple[str, ...]
    object_ids: tuple[str, ...]
    objects_json: str | None
    tags: tuple[str, ...]
    outcome: str
    error: str | None
    metadata_json: str | None
    service_name: str | None


def span_id_hex(span_id: int) -> str:
    """A span id as 16 lowercase hex characters."""
    return format(span_id, "016x")


def trace_id_hex(trace_id: int) -> str:
    """A trace id as 32 lowercase hex characters."""
    return format(trace_id, "032x")


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


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def datetime_from_ns(ns: int) -> datetime:
    """An aware UTC datetime from nanoseconds since the epoch (microsecond precision)."""
    return _EPOCH + timedelta(microseconds=ns // 1000)


MIN_NS = -(2**63)
"""The earliest storable time, 1677-09-21T00:12:43.145224192Z: times are 64-bit
nanosecond counts since the epoch (SQLite integers; OpenTelemetry span times)."""
MAX_NS = 2**63 - 1
"""The latest storable time, 2262-04-11T23:47:16.854775807Z."""


def epoch_ns(value: datetime, field: str) -> int:
    """Nanoseconds since the epoch, however far from it; a naive datetime is taken as
    UTC. :func:`ns_from_datetime` also checks that the result can be stored.

    Raises:
        InvalidInputError: ``value`` is not a datetime, or its timezone gives no offset.
    """
    if not isinstance(value, datetime):
        raise InvalidInputError(field, f"must be a datetime, got {type(value).__name__}")
    try:
        if value.tzinfo is None or value.utcoffset() is None:
            value = value.replace(tzinfo=timezone.utc)
        delta = value - _EPOCH
    except Exception as exc:  # a tzinfo whose utcoffset() fails
        raise InvalidInputError(field, f"cannot be converted to UTC: {exc!r}") from None
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def ns_from_datetime(value: datetime, field: str) -> int:
    """Nanoseconds since the epoch; a naive datetime is taken as UTC.

    Raises:
        InvalidInputError: ``value`` is not a datetime, or lies outside the storable
            range (1677-09-21 to 2262-04-11 UTC, :data:`MIN_NS` to :data:`MAX_NS`).
    """
    ns = epoch_ns(value, field)
    if not MIN_NS <= ns <= MAX_NS:
        raise InvalidInputError(
            field,
            "must be between 1677-09-21T00:12:43.145225Z and 2262-04-11T23:47:16.854775Z "
            f"(times are stored as 64-bit nanoseconds since 1970), got {value.isoformat()}",
        )
    return ns


def span_ns_from_datetime(value: datetime, field: str) -> int:
    """:func:`ns_from_datetime` for a span's own time (``at()``), which OpenTelemetry
    also sends over OTLP: there a time is an unsigned count, so one before 1970 would
    make the whole export batch fail.

    Raises:
        InvalidInputError: ``value`` is not a datetime, or lies outside 1970-01-01 to
            2262-04-11 UTC (0 to :data:`MAX_NS`).
    """
    ns = epoch_ns(value, field)
    if not 0 <= ns <= MAX_NS:
        raise InvalidInputError(
            field,
            "must be between 1970-01-01T00:00:00Z and 2262-04-11T23:47:16.854775Z "
            "(a span's time is a 64-bit count of nanoseconds since 1970, unsigned in "
            f"OpenTelemetry's wire format), got {value.isoformat()}",
        )
    return ns


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
StoredRow = Sequence[Any]
"""An ``events`` row: rowid, id, trace_id, parent_id, start_ns, duration_ns, event_type,
description, actor_type, actor_id, actor_name, actor_json, reasoning, decision_json,
objects_json, tags_json, outcome, error, metadata_json, service_name."""


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
