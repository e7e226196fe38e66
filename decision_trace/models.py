"""The value types of decision-trace: who acted, why, on what, and the recorded event.

These are plain frozen dataclasses. They know nothing of OpenTelemetry or SQLite: the
builder turns them into span attributes (``_encode.py``) and the query module turns
stored rows back into the same types.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any

from .errors import InvalidInputError

__all__ = [
    "Actor",
    "ActorType",
    "ChainNode",
    "DecisionTrace",
    "ObjectType",
    "Outcome",
    "RiskLevel",
    "TraceEvent",
    "TrackedObject",
    "clean_text",
]


class _ValueEnum(str, Enum):
    """A ``str`` enum that parses its values case-insensitively."""

    @classmethod
    def parse(cls, value: Any, field_name: str) -> Any:
        """Return the member for ``value`` (a member, its value or its name, any case).

        Raises:
            InvalidInputError: ``value`` names no member; the message lists the valid ones.
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            member = cls._value2member_map_.get(value)  # exact value: no scan
            if member is not None:
                return member
            wanted = value.strip().lower()
            for member in cls:
                if wanted in (member.value, member.name.lower()):
                    return member
        valid = ", ".join(repr(m.value) for m in cls)
        raise InvalidInputError(field_name, f"must be one of {valid}, got {value!r}")

    def __str__(self) -> str:
        return str(self.value)


class ActorType(_ValueEnum):
    """Who performed an action."""

    USER = "user"
    """A human: a customer, a support agent, an operator."""
    AI_AGENT = "ai_agent"
    """An AI or ML model acting on its own judgement."""
    COMPUTE = "compute"
    """An automated script, scheduled job or worker."""
    SYSTEM = "system"
    """The platform itself (rules engines, workflow engines)."""
    EXTERNAL = "external"
    """A third-party service (payment provider, carrier, marketplace)."""


class ObjectType(_ValueEnum):
    """The kinds of business object an event can affect."""

    ORDER = "order"
    ORDER_ITEM = "order_item"
    CART = "cart"
    PRODUCT = "product"
    PRICE = "price"
    CUSTOMER = "customer"
    INVENTORY = "inventory"
    WAREHOUSE = "warehouse"
    SUPPLIER = "supplier"
    PURCHASE_ORDER = "purchase_order"
    PAYMENT = "payment"
    REFUND = "refund"
    SHIPMENT = "shipment"
    RETURN = "return"
    CAMPAIGN = "campaign"
    PROMOTION = "promotion"
    COUPON = "coupon"
    REVIEW = "review"
    RECOMMENDATION = "recommendation"
    REPORT = "report"
    WORKFLOW = "workflow"
    OTHER = "other"


class Outcome(_ValueEnum):
    """How an event ended."""

    SUCCESS = "success"
    FAILURE = "failure"
    PENDING = "pending"


class RiskLevel(_ValueEnum):
    """How risky a decision was judged to be."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


def require_text(value: Any, field_name: str) -> str:
    """Return ``value`` if it is a non-blank ``str``, else raise naming ``field_name``."""
    if not isinstance(value, str):
        raise InvalidInputError(field_name, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidInputError(field_name, "must not be empty")
    return value


def _optional_text(value: Any, field_name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(field_name, f"must be a string, got {type(value).__name__}")
    return value


# The field checks below are shared by the models' ``__post_init__`` and the builder,
# which validates the same arguments without building the models on its hot path.


def check_actor_fields(
    actor_id: Any,
    name: Any,
    email: Any,
    role: Any,
    model: Any,
    version: Any,
    service_name: Any,
    metadata: Any,
) -> None:
    """Validate an actor's fields as :class:`Actor` does (its type is checked apart).

    Raises:
        InvalidInputError: naming the field (``actor.id``, ``actor.email``, …).
    """
    require_text(actor_id, "actor.id")
    for field_name, value in (
        ("name", name),
        ("email", email),
        ("role", role),
        ("model", model),
        ("version", version),
        ("service_name", service_name),
    ):
        if value is not None and type(value) is not str:
            _optional_text(value, f"actor.{field_name}")
    if type(metadata) is not dict and not isinstance(metadata, Mapping):
        raise InvalidInputError("actor.metadata", "must be a mapping")


def check_decision_fields(
    context: Any, alternatives: Any, rejection_reasons: Any
) -> tuple[Mapping[str, Any], ...]:
    """Validate a decision's structured fields as :class:`DecisionTrace` does; return the
    alternatives as a tuple.

    Raises:
        InvalidInputError: naming the field (``context``, ``alternatives[1]``, …).
    """
    # ``type(x) is dict`` first: the ABC checks cost more than the rest of the function.
    if type(context) is not dict and not isinstance(context, Mapping):
        raise InvalidInputError("context", "must be a mapping")
    if type(alternatives) not in (list, tuple) and (
        isinstance(alternatives, (str, bytes)) or not isinstance(alternatives, Sequence)
    ):
        raise InvalidInputError("alternatives", "must be a list of mappings")
    for index, alternative in enumerate(alternatives):
        if type(alternative) is not dict and not isinstance(alternative, Mapping):
            raise InvalidInputError(f"alternatives[{index}]", "must be a mapping")
    if type(rejection_reasons) is not dict and not isinstance(rejection_reasons, Mapping):
        raise InvalidInputError("rejection_reasons", "must be a mapping")
    for key, reason in rejection_reasons.items():
        if (type(key) is not str or type(reason) is not str) and (
            not isinstance(key, str) or not isinstance(reason, str)
        ):
            raise InvalidInputError(
                "rejection_reasons", f"keys and reasons must be strings, got {key!r}"
            )
    return alternatives if type(alternatives) is tuple else tuple(alternatives)


def check_object_fields(
    object_type: Any, external_id: Any, state: Any, state_before: Any, state_after: Any
) -> ObjectType:
    """Validate a tracked object's fields as :class:`TrackedObject` does; return its type.

    Raises:
        InvalidInputError: naming the field (``object_type``, ``order id``, ``state``, …).
    """
    kind = ObjectType._value2member_map_.get(object_type) if type(object_type) is str else None
    if kind is None:
        kind = ObjectType.parse(object_type, "object_type")
    require_text(external_id, f"{kind.value} id")
    for field_name, value in (
        ("state", state),
        ("state_before", state_before),
        ("state_after", state_after),
    ):
        if value is not None and type(value) is not dict and not isinstance(value, Mapping):
            raise InvalidInputError(field_name, "must be a mapping")
    return kind  # type: ignore[return-value]


@dataclass(frozen=True)
class Actor:
    """Who performed an action.

    Build one with the constructor that matches the kind of actor::

        Actor.user("user-123", "John Doe", email="john@example.com", role="support")
        Actor.ai_agent("pricing-ai", "Dynamic Pricing", model="gpt-4", version="2.1")
        Actor.compute("cron-job", "Inventory Sync", service_name="warehouse-api")

    Attributes:
        type: The kind of actor.
        id: A stable identifier (user id, agent id, job name).
        name: A display name.
        email: A user's e-mail address (personal data).
        role: A user's role, such as ``"support"`` or ``"customer"``.
        model: The model an AI agent runs.
        version: The version of an agent or job.
        service_name: The service a job, system or external actor runs as.
        metadata: Anything else worth keeping about the actor (JSON-compatible values).
    """

    type: ActorType
    id: str
    name: str | None = None
    email: str | None = None
    role: str | None = None
    model: str | None = None
    version: str | None = None
    service_name: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", ActorType.parse(self.type, "actor.type"))
        check_actor_fields(
            self.id,
            self.name,
            self.email,
            self.role,
            self.model,
            self.version,
            self.service_name,
            self.metadata,
        )

    @classmethod
    def user(
        cls,
        user_id: str,
        name: str | None = None,
        *,
        email: str | None = None,
        role: str | None = None,
        **metadata: Any,
    ) -> Actor:
        """A human user (customer, support agent, operator)."""
        return cls(ActorType.USER, user_id, name, email=email, role=role, metadata=metadata)

    @classmethod
    def ai_agent(
        cls,
        agent_id: str,
        name: str | None = None,
        *,
        model: str | None = None,
        version: str | None = None,
        **metadata: Any,
    ) -> Actor:
        """An AI agent; ``model`` is what it runs (``"gpt-4"``), ``version`` its own version."""
        return cls(
            ActorType.AI_AGENT, agent_id, name, model=model, version=version, metadata=metadata
        )

    @classmethod
    def compute(
        cls,
        job_id: str,
        name: str | None = None,
        *,
        service_name: str | None = None,
        version: str | None = None,
        **metadata: Any,
    ) -> Actor:
        """An automated job, script or worker."""
        return cls(
            ActorType.COMPUTE,
            job_id,
            name,
            service_name=service_name,
            version=version,
            metadata=metadata,
        )

    @classmethod
    def system(
        cls,
        system_id: str,
        name: str | None = None,
        *,
        service_name: str | None = None,
        **metadata: Any,
    ) -> Actor:
        """The platform itself (a rules or workflow engine)."""
        return cls(ActorType.SYSTEM, system_id, name, service_name=service_name, metadata=metadata)

    @classmethod
    def external(
        cls,
        service_id: str,
        name: str | None = None,
        *,
        service_name: str | None = None,
        **metadata: Any,
    ) -> Actor:
        """A third-party service; ``service_name`` is how it is known on the network."""
        return cls(
            ActorType.EXTERNAL, service_id, name, service_name=service_name, metadata=metadata
        )


@dataclass(frozen=True)
class DecisionTrace:
    """Why an action was taken.

    Attributes:
        reasoning: The explanation, in words. Full-text searchable.
        context: The facts the decision was based on.
        alternatives: Options that were considered, each a mapping (``{"action": ...}``).
        rejection_reasons: Why each alternative was not taken, keyed by its action.
        confidence: How sure the actor was, from 0 to 1.
        risk_level: How risky the decision was judged to be.
    """

    reasoning: str
    context: Mapping[str, Any] = field(default_factory=dict)
    alternatives: Sequence[Mapping[str, Any]] = ()
    rejection_reasons: Mapping[str, str] = field(default_factory=dict)
    confidence: float | None = None
    risk_level: RiskLevel | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.reasoning, str):
            raise InvalidInputError("reasoning", "must be a string")
        alternatives = check_decision_fields(
            self.context, self.alternatives, self.rejection_reasons
        )
        object.__setattr__(self, "alternatives", alternatives)
        if self.confidence is not None:
            object.__setattr__(self, "confidence", check_confidence(self.confidence))
        if self.risk_level is not None:
            object.__setattr__(self, "risk_level", RiskLevel.parse(self.risk_level, "risk_level"))


def check_confidence(value: Any) -> float:
    """Return ``value`` as a float in [0, 1], or raise naming the ``confidence`` field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError("confidence", f"must be a number, got {type(value).__name__}")
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise InvalidInputError("confidence", f"must be between 0 and 1, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class TrackedObject:
    """A business object an event touched.

    Attributes:
        object_type: What kind of object it is.
        external_id: The object's id in the application (order number, SKU…).
        state: Facts about the object at the time of the event.
        state_before: The relevant fields before the change, if the event changed it.
        state_after: The same fields after the change.
    """

    object_type: ObjectType
    external_id: str
    state: Mapping[str, Any] = field(default_factory=dict)
    state_before: Mapping[str, Any] | None = None
    state_after: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "object_type",
            check_object_fields(
                self.object_type, self.external_id, self.state, self.state_before, self.state_after
            ),
        )


@dataclass(frozen=True)
class TraceEvent:
    """One recorded event, as read back from the store.

    Attributes:
        id: The span id, 16 lowercase hex characters.
        timestamp: When the event started (timezone-aware, UTC).
        duration: How long it took (zero for instantaneous events).
        event_type: What happened, such as ``"order.created"``.
        description: A sentence describing the event.
        actor: Who did it, if known.
        decision: Why it was done, if recorded.
        objects: The business objects it touched.
        outcome: How it ended.
        error: The error message when the outcome is a failure.
        tags: Free-form labels.
        metadata: Extra JSON-compatible data (for spans not made by decision-trace, their
            attributes).
        correlation_id: The trace id, 32 lowercase hex characters.
        parent_event_id: The parent span id, or None for a root event.
        service_name: The ``service.name`` of the process that recorded it.

    Events read from the store decode ``actor``, ``decision``, ``objects`` and
    ``metadata`` (the JSON-backed fields) on first access of any of them; the other
    fields are set when the event is read. This is invisible: the type, equality,
    ``repr``, hashing, ``dataclasses.replace``/``asdict``, copying and pickling behave
    as for an event built by the constructor. A stored value that cannot be decoded
    raises on that first access instead of from the query.
    """

    id: str
    timestamp: datetime
    duration: timedelta
    event_type: str
    description: str
    actor: Actor | None
    decision: DecisionTrace | None
    objects: tuple[TrackedObject, ...]
    outcome: Outcome
    error: str | None
    tags: tuple[str, ...]
    metadata: Mapping[str, Any]
    correlation_id: str
    parent_event_id: str | None
    service_name: str | None = None

    # Lazy fields: a query listing many events rarely reads every decision, and decoding
    # the JSON behind those four fields is most of the cost of reading an event. The
    # read side (``attributes.events_from_rows``) leaves them out of the instance
    # ``__dict__`` and stores under ``DEFERRED_KEY`` a callable returning them as a dict;
    # ``__getattr__`` (only called for names missing from ``__dict__``) fills them in.
    # Hidden from type checkers, which would otherwise accept any attribute name.
    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            state = self.__dict__
            fill = state.get(DEFERRED_KEY)
            if fill is not None and name in _TRACE_EVENT_FIELDS:
                _fill(state, fill)
                if name in state:
                    return state[name]
            elif name in state:  # another thread filled it in meanwhile
                return state[name]
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {name!r}", name=name, obj=self
            )

    def __getstate__(self) -> dict[str, Any]:
        """The fields for ``copy`` and ``pickle``, lazy ones decoded (never the callable
        that decodes them), in declaration order as for a constructed event."""
        state = self.__dict__
        fill = state.get(DEFERRED_KEY)
        if fill is None:
            return state
        _fill(state, fill)
        ordered = {name: state[name] for name in _FIELD_ORDER if name in state}
        ordered.update(state)
        return ordered

    def objects_of(self, object_type: ObjectType | str) -> tuple[TrackedObject, ...]:
        """The objects of one type that this event touched."""
        wanted = ObjectType.parse(object_type, "object_type")
        return tuple(o for o in self.objects if o.object_type is wanted)


DEFERRED_KEY = "_deferred"
"""The ``TraceEvent.__dict__`` key of the callable that returns its lazy fields."""
_FIELD_ORDER = tuple(TraceEvent.__dataclass_fields__)
_TRACE_EVENT_FIELDS = frozenset(_FIELD_ORDER)


def _fill(state: dict[str, Any], fill: Callable[[], Mapping[str, Any]]) -> None:
    """Store in ``state`` (a ``TraceEvent.__dict__``) the fields its deferred filler
    ``fill`` returns, then drop the filler.

    The fields go in before the filler is removed: a thread that finds the filler gone
    finds the fields there (two threads racing may both decode; equal values, the last
    one written stays).
    """
    try:
        values = fill()
    except AttributeError as exc:
        # Not "no such attribute": that would make getattr()/hasattr() hide the error.
        raise ValueError(f"event {state.get('id')!r}: stored fields cannot be decoded") from exc
    state.update(values)
    state.pop(DEFERRED_KEY, None)


@dataclass(frozen=True, eq=False)
class ChainNode:
    """One event of a chain and the events recorded as its children (oldest first).

    Every method works without recursion, so a chain thousands of events deep can be
    walked, searched, compared and printed.
    """

    event: TraceEvent
    children: tuple[ChainNode, ...] = ()

    def walk(self, depth: int = 0) -> Iterator[tuple[int, TraceEvent]]:
        """Yield ``(depth, event)`` for this node and its descendants, depth first."""
        for node_depth, node in self._nodes(depth):
            yield node_depth, node.event

    def find(self, event_id: str) -> ChainNode | None:
        """The node of ``event_id`` within this tree, if present."""
        for _, node in self._nodes(0):
            if node.event.id == event_id:
                return node
        return None

    def _nodes(self, depth: int) -> Iterator[tuple[int, ChainNode]]:
        """``(depth, node)`` for this node and its descendants, depth first (pre-order),
        with an explicit stack instead of recursion."""
        stack: list[tuple[int, ChainNode]] = [(depth, self)]
        while stack:
            node_depth, node = stack.pop()
            yield node_depth, node
            children = node.children
            if children:
                stack.extend((node_depth + 1, child) for child in reversed(children))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChainNode):
            return NotImplemented
        pairs: list[tuple[ChainNode, ChainNode]] = [(self, other)]
        while pairs:
            mine, theirs = pairs.pop()
            if mine is theirs:
                continue
            if mine.event != theirs.event or len(mine.children) != len(theirs.children):
                return False
            pairs.extend(zip(mine.children, theirs.children, strict=True))
        return True

    def __hash__(self) -> int:
        return hash(self.event.id)

    def __repr__(self) -> str:
        count = len(self.children)
        return (
            f"ChainNode(event={self.event.event_type!r} {self.event.id}, "
            f"children={count} node{'' if count == 1 else 's'})"
        )


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(value: str) -> str:
    """Replace lone surrogates (which UTF-8 cannot hold) with U+FFFD; else unchanged."""
    if value.isascii():
        return value
    return _LONE_SURROGATE.sub("\ufffd", value)
