"""Arguments and models to span attributes (the builder's side of the wire format)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._json import dumps
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
    GEN_AI_AGENT_ID,
    GEN_AI_AGENT_NAME,
    GEN_AI_AGENT_VERSION,
    GEN_AI_OPERATION_INVOKE_AGENT,
    GEN_AI_OPERATION_NAME,
    GEN_AI_REQUEST_MODEL,
    METADATA,
    OBJECT_IDS,
    OBJECT_STATES,
    OBJECT_TYPES,
    OUTCOME,
    REASONING,
    REJECTION_REASONS,
    RISK_LEVEL,
    SERVICE_PEER_NAME,
    TAGS,
    USER_EMAIL,
    USER_ID,
    USER_NAME,
    USER_ROLES,
    AttributeValue,
)
from .models import (
    Actor,
    ActorType,
    DecisionTrace,
    ObjectType,
    RiskLevel,
    TrackedObject,
    clean_text,
)
from .record import EventRecord, loads_json

# --- Encoding: models -> attributes -------------------------------------------------


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


# --- Encoding: a stored record -> attributes (what shipping sends) ------------------


def record_attributes(record: EventRecord) -> dict[str, AttributeValue]:
    """The span attributes of a stored event: the inverse of
    :func:`decision_trace._decode.record_from_span`, so that a receiver decoding them
    stores the same record (its JSON text re-encoded, with the same values).

    Shipping (:mod:`decision_trace.shipping`) sends events as spans built from these.
    An event that came from another library's span is sent as a decision-trace event of
    the same type, its attributes in ``decision_trace.metadata`` as stored.
    """
    attrs: dict[str, AttributeValue] = {EVENT_TYPE: record.event_type}
    if record.description:
        attrs[DESCRIPTION] = record.description
    if record.actor_type is not None:
        attrs.update(_record_actor_attributes(record))
    if record.reasoning is not None:
        attrs[REASONING] = record.reasoning
    if record.decision_json is not None:
        decision = loads_json(record.decision_json)
        if not isinstance(decision, dict):
            decision = {}
        # Always sent, even empty: the receiver keeps a decision only if one key is there.
        attrs[CONTEXT] = dumps(decision.get("context") or {}, "context")
        alternatives = decision.get("alternatives")
        if alternatives:
            attrs[ALTERNATIVES] = dumps(alternatives, "alternatives")
        reasons = decision.get("rejection_reasons")
        if reasons:
            attrs[REJECTION_REASONS] = dumps(reasons, "rejection_reasons")
        confidence = decision.get("confidence")
        if isinstance(confidence, (int, float)) and not isinstance(confidence, bool):
            attrs[CONFIDENCE] = confidence
        risk = decision.get("risk_level")
        if isinstance(risk, str):
            attrs[RISK_LEVEL] = risk
    if record.object_ids:
        attrs[OBJECT_TYPES] = list(record.object_types)
        attrs[OBJECT_IDS] = list(record.object_ids)
    if record.objects_json is not None:
        attrs[OBJECT_STATES] = record.objects_json
    if record.tags:
        attrs[TAGS] = list(record.tags)
    attrs[OUTCOME] = record.outcome
    if record.error is not None:
        attrs[ERROR] = record.error
    if record.metadata_json is not None:
        attrs[METADATA] = record.metadata_json
    return attrs


def _record_actor_attributes(record: EventRecord) -> dict[str, AttributeValue]:
    extras = loads_json(record.actor_json) if record.actor_json else {}
    if not isinstance(extras, dict):
        extras = {}

    def text(key: str) -> str | None:
        value = extras.get(key)
        return value if isinstance(value, str) else None

    metadata = extras.get("metadata")
    try:
        actor_type = ActorType(record.actor_type)
    except ValueError:
        actor_type = None
    if actor_type is not None and record.actor_id is not None:
        attrs = actor_fields_attributes(
            actor_type,
            record.actor_id,
            record.actor_name,
            text("email"),
            text("role"),
            text("model"),
            text("version"),
            text("service_name"),
            metadata if isinstance(metadata, dict) else None,
        )
    else:  # not one of ours (a newer release's actor type?): its fields as stored
        attrs = {ACTOR_TYPE: str(record.actor_type)}
        if record.actor_id is not None:
            attrs[ACTOR_ID] = record.actor_id
        if record.actor_name is not None:
            attrs[ACTOR_NAME] = record.actor_name
    if metadata == {}:
        attrs[ACTOR_METADATA] = "{}"
    return attrs
