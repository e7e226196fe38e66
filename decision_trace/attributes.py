"""Every span attribute key decision-trace emits (and the type of an attribute value).

This module is the wire format. The builder encodes models into span attributes with
it; the SQLite exporter decodes finished spans into :class:`EventRecord` rows with it;
the query module turns stored records back into :class:`~decision_trace.models.TraceEvent`
with it. No other module spells an attribute key.

OpenTelemetry semantic conventions are used where one exists (``user.*``, ``gen_ai.*``,
``service.*``), so any tracing backend understands actors without knowing
decision-trace. Everything else lives under ``decision_trace.*``. Structured values are
JSON strings.

The encoding lives beside it: ``_json`` (how values are stored), ``_encode`` (arguments
and models to attributes), ``_decode`` (a finished span to an
:class:`~decision_trace.record.EventRecord`).
"""

from __future__ import annotations

from collections.abc import Sequence

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


AttributeValue = str | bool | int | float | Sequence[str]
