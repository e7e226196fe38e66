"""``TraceBuilder``: the fluent API that turns one business event into one span.

Get a builder from :meth:`DecisionTraceClient.trace` (recorded by ``record()``) or
:meth:`DecisionTraceClient.span` (a context manager, recorded when the block ends with
its real duration). Every method validates its input at once, raising
:class:`~decision_trace.errors.InvalidInputError` naming the field, and returns the
builder so calls chain::

    client.trace("order.cancelled", "Order cancelled by customer") \\
        .by_user("cust-123", "John Doe") \\
        .affecting_order("ord-456", {"status": "cancelled"}) \\
        .because("Customer found better price elsewhere") \\
        .record()
"""

from __future__ import annotations

import logging
import traceback as _traceback
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.trace import Span, SpanContext, Status, StatusCode, Tracer

from . import _encode
from . import attributes as keys
from ._json import dumps, exception_message, exception_text
from .attributes import AttributeValue
from .errors import DecisionTraceError, InvalidInputError
from .models import (
    Actor,
    ActorType,
    DecisionTrace,
    ObjectType,
    Outcome,
    RiskLevel,
    TrackedObject,
    check_actor_fields,
    check_confidence,
    check_decision_fields,
    check_object_fields,
    clean_text,
    require_text,
)
from .record import span_ns_from_datetime

if TYPE_CHECKING:
    from .redaction import Redaction

__all__ = ["TraceBuilder"]

_logger = logging.getLogger(__name__)


class Recorder(Protocol):
    """What a :class:`TraceBuilder` needs of whatever records its events.

    :class:`~decision_trace.client.DecisionTraceClient` gives its builders one; a test can
    give a builder a small fake over any ``TracerProvider``.
    """

    @property
    def tracer(self) -> Tracer:
        """Starts each event's span."""
        ...

    @property
    def redaction(self) -> Redaction | None:
        """What to redact from values before they enter the span, or None."""
        ...

    def remember(self, span: Span) -> str:
        """Note a just-started event's span (so ``child_of`` finds it before it is
        stored) and return the event id."""
        ...

    def parent_context(self, parent: str) -> SpanContext:
        """The span context of an event id or W3C ``traceparent`` given to ``child_of``.

        Raises:
            InvalidInputError: ``parent`` is neither.
            EventNotFoundError: no such event.
        """
        ...


class TraceBuilder:
    """Collects one event's actor, decision, objects and tags, then records it as a span.

    Builders are mutable and single-use: a second ``record()`` raises instead of writing
    a duplicate event.
    """

    # Slots: a builder is made for every event, and attribute access is the hot path.
    __slots__ = (
        "_actor_keys",
        "_as_span",
        "_attrs",
        "_error",
        "_event_type",
        "_metadata",
        "_object_ids",
        "_object_states",
        "_object_types",
        "_outcome",
        "_parent",
        "_recorded_id",
        "_recorder",
        "_span",
        "_start_ns",
        "_tags",
        "_token",
    )

    def __init__(
        self,
        recorder: Recorder,
        event_type: str,
        description: str = "",
        *,
        as_span: bool = False,
    ) -> None:
        require_text(event_type, "event_type")
        if type(description) is not str and not isinstance(description, str):
            raise InvalidInputError(
                "description", f"must be a string, got {type(description).__name__}"
            )
        self._recorder = recorder
        self._event_type = clean_text(event_type)
        self._attrs: dict[str, AttributeValue] = {
            keys.EVENT_TYPE: self._event_type,
            keys.DESCRIPTION: clean_text(description),
        }
        self._actor_keys: tuple[str, ...] = ()
        self._object_types: list[str] = []
        self._object_ids: list[str] = []
        self._object_states: list[str] = []
        self._tags: list[str] = []
        self._metadata: dict[str, Any] = {}
        self._outcome: Outcome | None = None
        self._error: str | None = None
        self._parent: SpanContext | None = None
        self._as_span = as_span
        self._span: Span | None = None
        self._token: object | None = None
        self._recorded_id: str | None = None
        self._start_ns: int | None = None

    # -- who ---------------------------------------------------------------------------

    def by(self, actor: Actor) -> TraceBuilder:
        """Set who performed the action (replaces any actor set before)."""
        if not isinstance(actor, Actor):
            raise InvalidInputError("actor", f"must be an Actor, got {type(actor).__name__}")
        if self._recorder.redaction is not None:
            actor = self._recorder.redaction.actor(actor)
        self._set_actor(_encode.actor_attributes(actor))
        return self

    def _set_actor(self, actor_attrs: dict[str, AttributeValue]) -> None:
        for key in self._actor_keys:
            self._attrs.pop(key, None)
        self._actor_keys = tuple(actor_attrs)
        self._attrs.update(actor_attrs)

    def _by_fields(
        self,
        actor_type: ActorType,
        actor_id: str,
        name: str | None,
        email: str | None,
        role: str | None,
        model: str | None,
        version: str | None,
        service_name: str | None,
        metadata: dict[str, Any],
    ) -> TraceBuilder:
        # The same checks and attributes as by(Actor(...)), without building the Actor
        # (record() is on the caller's hot path); redaction works on the model.
        if self._recorder.redaction is not None:
            actor = Actor(
                actor_type, actor_id, name, email, role, model, version, service_name, metadata
            )
            return self.by(actor)
        check_actor_fields(actor_id, name, email, role, model, version, service_name, metadata)
        self._set_actor(
            _encode.actor_fields_attributes(
                actor_type, actor_id, name, email, role, model, version, service_name, metadata
            )
        )
        return self

    def by_user(
        self,
        user_id: str,
        name: str | None = None,
        *,
        email: str | None = None,
        role: str | None = None,
        **metadata: Any,
    ) -> TraceBuilder:
        """Performed by a human user; see :meth:`Actor.user`."""
        return self._by_fields(
            ActorType.USER, user_id, name, email, role, None, None, None, metadata
        )

    def by_ai_agent(
        self,
        agent_id: str,
        name: str | None = None,
        *,
        model: str | None = None,
        version: str | None = None,
        **metadata: Any,
    ) -> TraceBuilder:
        """Performed by an AI agent; see :meth:`Actor.ai_agent`."""
        return self._by_fields(
            ActorType.AI_AGENT, agent_id, name, None, None, model, version, None, metadata
        )

    def by_compute(
        self,
        job_id: str,
        name: str | None = None,
        *,
        service_name: str | None = None,
        version: str | None = None,
        **metadata: Any,
    ) -> TraceBuilder:
        """Performed by an automated job; see :meth:`Actor.compute`."""
        return self._by_fields(
            ActorType.COMPUTE, job_id, name, None, None, None, version, service_name, metadata
        )

    def by_system(
        self,
        system_id: str,
        name: str | None = None,
        *,
        service_name: str | None = None,
        **metadata: Any,
    ) -> TraceBuilder:
        """Performed by the platform itself; see :meth:`Actor.system`."""
        return self._by_fields(
            ActorType.SYSTEM, system_id, name, None, None, None, None, service_name, metadata
        )

    def by_external(
        self,
        service_id: str,
        name: str | None = None,
        *,
        service_name: str | None = None,
        **metadata: Any,
    ) -> TraceBuilder:
        """Performed by a third-party service; see :meth:`Actor.external`."""
        return self._by_fields(
            ActorType.EXTERNAL, service_id, name, None, None, None, None, service_name, metadata
        )

    # -- why ---------------------------------------------------------------------------

    def because(
        self,
        reasoning: str,
        context: Mapping[str, Any] | None = None,
        alternatives: Sequence[Mapping[str, Any]] | None = None,
        rejection_reasons: Mapping[str, str] | None = None,
        *,
        confidence: float | None = None,
        risk_level: RiskLevel | str | None = None,
    ) -> TraceBuilder:
        """Say why: the reasoning, the facts it rested on, and the options rejected.

        Args:
            reasoning: The explanation in words (full-text searchable).
            context: Facts the decision was based on. Values are coerced to JSON by the
                rules in :mod:`decision_trace.attributes`.
            alternatives: Options considered, e.g. ``[{"action": "replace"}]``.
            rejection_reasons: Why each alternative was rejected, keyed by action.
            confidence: Optional confidence from 0 to 1 (same as :meth:`with_confidence`).
            risk_level: Optional risk level (same as :meth:`with_risk`).
        """
        require_text(reasoning, "reasoning")
        context = context if context is not None else {}
        alternatives = alternatives if alternatives is not None else ()
        rejection_reasons = rejection_reasons if rejection_reasons is not None else {}
        risk = RiskLevel.parse(risk_level, "risk_level") if risk_level else None
        if self._recorder.redaction is not None:
            decision = self._recorder.redaction.decision(
                DecisionTrace(
                    reasoning=reasoning,
                    context=context,
                    alternatives=alternatives,
                    rejection_reasons=rejection_reasons,
                    confidence=confidence,
                    risk_level=risk,
                )
            )
            decision_attrs = _encode.decision_attributes(decision)
        else:
            # DecisionTrace's checks, without building it (the hot path).
            check_decision_fields(context, alternatives, rejection_reasons)
            decision_attrs = _encode.decision_fields_attributes(
                reasoning,
                context,
                alternatives,
                rejection_reasons,
                check_confidence(confidence) if confidence is not None else None,
                risk,
            )
        for key in (keys.CONTEXT, keys.ALTERNATIVES, keys.REJECTION_REASONS):
            self._attrs.pop(key, None)
        self._attrs.update(decision_attrs)
        return self

    def with_confidence(self, confidence: float) -> TraceBuilder:
        """The actor's confidence in the decision, from 0 to 1."""
        self._attrs[keys.CONFIDENCE] = check_confidence(confidence)
        return self

    def with_risk(self, risk_level: RiskLevel | str) -> TraceBuilder:
        """How risky the decision is: ``"low"``, ``"medium"``, ``"high"`` or ``"critical"``."""
        self._attrs[keys.RISK_LEVEL] = RiskLevel.parse(risk_level, "risk_level").value
        return self

    # -- what --------------------------------------------------------------------------

    def affecting(
        self,
        object_type: ObjectType | str,
        external_id: str,
        state: Mapping[str, Any] | None = None,
        *,
        state_before: Mapping[str, Any] | None = None,
        state_after: Mapping[str, Any] | None = None,
    ) -> TraceBuilder:
        """Link a business object the event touched.

        Args:
            object_type: An :class:`ObjectType` or its value (``"order"``).
            external_id: The object's id in your application.
            state: Facts about the object at the time.
            state_before: Fields before the change.
            state_after: The same fields after the change.
        """
        redaction = self._recorder.redaction
        if redaction is None:
            # TrackedObject's checks, without building it (the hot path).
            kind = check_object_fields(object_type, external_id, state, state_before, state_after)
        else:  # redaction works on the model
            obj = redaction.tracked_object(
                TrackedObject(
                    object_type=ObjectType.parse(object_type, "object_type"),
                    external_id=external_id,
                    state=state if state is not None else {},
                    state_before=state_before,
                    state_after=state_after,
                )
            )
            kind, external_id = obj.object_type, obj.external_id
            state, state_before, state_after = obj.state, obj.state_before, obj.state_after
        self._object_types.append(kind.value)
        self._object_ids.append(clean_text(external_id))
        self._object_states.append(
            _encode.object_fields_state_json(kind, state, state_before, state_after)
        )
        return self

    def affecting_order(
        self,
        order_id: str,
        state: Mapping[str, Any] | None = None,
        *,
        state_before: Mapping[str, Any] | None = None,
        state_after: Mapping[str, Any] | None = None,
    ) -> TraceBuilder:
        """Link an order; see :meth:`affecting` for ``state_before``/``state_after``."""
        return self.affecting(
            ObjectType.ORDER, order_id, state, state_before=state_before, state_after=state_after
        )

    def affecting_product(
        self,
        product_id: str,
        state: Mapping[str, Any] | None = None,
        *,
        state_before: Mapping[str, Any] | None = None,
        state_after: Mapping[str, Any] | None = None,
    ) -> TraceBuilder:
        """Link a product."""
        return self.affecting(
            ObjectType.PRODUCT,
            product_id,
            state,
            state_before=state_before,
            state_after=state_after,
        )

    def affecting_customer(
        self,
        customer_id: str,
        state: Mapping[str, Any] | None = None,
        *,
        state_before: Mapping[str, Any] | None = None,
        state_after: Mapping[str, Any] | None = None,
    ) -> TraceBuilder:
        """Link a customer."""
        return self.affecting(
            ObjectType.CUSTOMER,
            customer_id,
            state,
            state_before=state_before,
            state_after=state_after,
        )

    def affecting_payment(
        self,
        payment_id: str,
        state: Mapping[str, Any] | None = None,
        *,
        state_before: Mapping[str, Any] | None = None,
        state_after: Mapping[str, Any] | None = None,
    ) -> TraceBuilder:
        """Link a payment."""
        return self.affecting(
            ObjectType.PAYMENT,
            payment_id,
            state,
            state_before=state_before,
            state_after=state_after,
        )

    def affecting_shipment(
        self,
        shipment_id: str,
        state: Mapping[str, Any] | None = None,
        *,
        state_before: Mapping[str, Any] | None = None,
        state_after: Mapping[str, Any] | None = None,
    ) -> TraceBuilder:
        """Link a shipment."""
        return self.affecting(
            ObjectType.SHIPMENT,
            shipment_id,
            state,
            state_before=state_before,
            state_after=state_after,
        )

    def affecting_return(
        self,
        return_id: str,
        state: Mapping[str, Any] | None = None,
        *,
        state_before: Mapping[str, Any] | None = None,
        state_after: Mapping[str, Any] | None = None,
    ) -> TraceBuilder:
        """Link a return (also available as :meth:`affecting_return_`)."""
        return self.affecting(
            ObjectType.RETURN, return_id, state, state_before=state_before, state_after=state_after
        )

    affecting_return_ = affecting_return

    def affecting_campaign(
        self,
        campaign_id: str,
        state: Mapping[str, Any] | None = None,
        *,
        state_before: Mapping[str, Any] | None = None,
        state_after: Mapping[str, Any] | None = None,
    ) -> TraceBuilder:
        """Link a marketing campaign."""
        return self.affecting(
            ObjectType.CAMPAIGN,
            campaign_id,
            state,
            state_before=state_before,
            state_after=state_after,
        )

    def affecting_promotion(
        self,
        promotion_id: str,
        state: Mapping[str, Any] | None = None,
        *,
        state_before: Mapping[str, Any] | None = None,
        state_after: Mapping[str, Any] | None = None,
    ) -> TraceBuilder:
        """Link a promotion."""
        return self.affecting(
            ObjectType.PROMOTION,
            promotion_id,
            state,
            state_before=state_before,
            state_after=state_after,
        )

    def affecting_inventory(
        self,
        sku: str,
        quantity_before: int | None = None,
        quantity_after: int | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> TraceBuilder:
        """Link an inventory item, with its quantity before and after the change.

        The quantities are stored as ``state_before={"quantity": …}`` and
        ``state_after={"quantity": …}``; ``state`` holds anything else (the warehouse).
        """
        for name, value in (
            ("quantity_before", quantity_before),
            ("quantity_after", quantity_after),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise InvalidInputError(name, f"must be an integer, got {value!r}")
        return self.affecting(
            ObjectType.INVENTORY,
            sku,
            state,
            state_before={"quantity": quantity_before} if quantity_before is not None else None,
            state_after={"quantity": quantity_after} if quantity_after is not None else None,
        )

    # -- labels, metadata, outcome, parent -----------------------------------------------

    def with_tags(self, *tags: str) -> TraceBuilder:
        """Add free-form labels (duplicates are ignored)."""
        for index, tag in enumerate(tags):
            require_text(tag, f"tags[{index}]")
            tag = clean_text(tag)
            if tag not in self._tags:
                self._tags.append(tag)
        return self

    def with_metadata(
        self, metadata: Mapping[str, Any] | None = None, **values: Any
    ) -> TraceBuilder:
        """Attach extra data (a mapping and/or keyword arguments), coerced to JSON."""
        if metadata is not None:
            if not isinstance(metadata, Mapping):
                raise InvalidInputError("metadata", "must be a mapping")
            values = {**metadata, **values}
        if self._recorder.redaction is not None:
            values = self._recorder.redaction.metadata(values)
        dumps(values, "metadata")  # validate now, at the call that gave the values
        self._metadata.update(values)
        return self

    def succeeded(self) -> TraceBuilder:
        """Mark the outcome a success (the default)."""
        self._outcome = Outcome.SUCCESS
        self._error = None
        return self

    def failed(self, error: str | BaseException | None = None) -> TraceBuilder:
        """Mark the outcome a failure, with the error message or exception.

        An exception is stored as ``"<type name>: <message>"``, plain text like the
        other text fields (a lone surrogate becomes U+FFFD; a ``__str__`` that raises
        gives ``<exception str() failed>``).
        """
        self._outcome = Outcome.FAILURE
        if isinstance(error, BaseException):
            self._error = exception_text(error)
        elif error is not None:
            if not isinstance(error, str):
                raise InvalidInputError("error", "must be a string or an exception")
            self._error = clean_text(error)
        return self

    def pending(self) -> TraceBuilder:
        """Mark the outcome pending (the action was started, its result is not known)."""
        self._outcome = Outcome.PENDING
        return self

    def at(self, timestamp: datetime) -> TraceBuilder:
        """Record the event as having happened at ``timestamp`` instead of now.

        For importing or backfilling past events. A naive datetime is taken as UTC.
        Not available on ``span()`` builders, whose time is the block's real time.

        Raises:
            InvalidInputError: ``timestamp`` (field ``timestamp``) is not a datetime or
                lies outside 1970-01-01 to 2262-04-11 UTC, the times a span can hold
                (unsigned 64-bit nanoseconds since 1970 over OTLP, signed in SQLite).
        """
        if self._as_span:
            raise DecisionTraceError("at() cannot be used with span(); its time is measured")
        self._start_ns = span_ns_from_datetime(timestamp, "timestamp")
        return self

    def child_of(self, parent: str) -> TraceBuilder:
        """Record this event as a child of another.

        Args:
            parent: An event id returned by ``record()`` (in this process or any other
                writing to the same store), or a W3C ``traceparent`` header value from
                an upstream service (``00-<trace id>-<span id>-<flags>``).

        Raises:
            EventNotFoundError: no event with that id is known.
            InvalidInputError: ``parent`` is neither an event id nor a traceparent.
        """
        if self._span is not None:
            raise DecisionTraceError("child_of() must be called before the span starts")
        self._parent = self._recorder.parent_context(parent)
        return self

    # -- recording ---------------------------------------------------------------------

    def _final_attributes(self) -> dict[str, AttributeValue]:
        # No copy: a builder records once (the SDK copies the attributes into the span).
        attrs = self._attrs
        if self._object_ids:
            attrs.update(
                _encode.objects_attributes(
                    self._object_types, self._object_ids, self._object_states
                )
            )
        if self._tags:
            attrs[keys.TAGS] = self._tags
        if self._metadata:
            attrs[keys.METADATA] = dumps(self._metadata, "metadata")
        if self._outcome is not None:
            attrs[keys.OUTCOME] = self._outcome.value
        if self._error is not None:
            attrs[keys.ERROR] = self._error
        return attrs

    def _parent_otel_context(self) -> otel_context.Context | None:
        if self._parent is None:
            return None
        return otel_trace.set_span_in_context(otel_trace.NonRecordingSpan(self._parent))

    def record(self) -> str:
        """Record the event and return its id (16 hex characters: the span id).

        In ``durability="sync"`` mode the event is committed when this returns.

        Raises:
            DecisionTraceError: this builder was already recorded, or it belongs to a
                ``span()`` block (which records when the block ends).
        """
        if self._as_span:
            raise DecisionTraceError(
                "a span() builder is recorded when its with-block ends; do not call record()"
            )
        if self._recorded_id is not None:
            raise DecisionTraceError(
                f"this event was already recorded as {self._recorded_id}; "
                "build a new one with client.trace()"
            )
        attrs = self._final_attributes()
        span = self._recorder.tracer.start_span(
            self._event_type,
            context=self._parent_otel_context(),
            attributes=attrs,
            start_time=self._start_ns,
        )
        self._recorded_id = self._recorder.remember(span)
        if self._outcome is Outcome.FAILURE:
            span.set_status(Status(StatusCode.ERROR, self._error))
        span.end(end_time=self._start_ns)
        return self._recorded_id

    @property
    def event_id(self) -> str | None:
        """The event id once the span has started (``span()``) or been recorded."""
        return self._recorded_id

    # -- span() context manager -----------------------------------------------------------

    def __enter__(self) -> TraceBuilder:
        if not self._as_span:
            raise DecisionTraceError("use client.span(...) for a with-block, not client.trace()")
        if self._span is not None:
            raise DecisionTraceError("this span() builder was already entered")
        self._span = self._recorder.tracer.start_span(
            self._event_type, context=self._parent_otel_context()
        )
        self._recorded_id = self._recorder.remember(self._span)
        self._token = otel_context.attach(otel_trace.set_span_in_context(self._span))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        span = self._span
        if span is None:
            return
        try:
            self._finish(span, exc)
        except Exception:
            if exc is None:
                raise  # as from record(): e.g. a sync-mode StoreError
            # The application's own exception must propagate unchanged: this one would
            # replace it, so it is only logged.
            _logger.exception(
                "decision-trace: could not record failed span %s (%s); the application's "
                "exception propagates",
                self._recorded_id,
                self._event_type,
            )

    def _finish(self, span: Span, exc: BaseException | None) -> None:
        try:
            if exc is not None:
                self.failed(exc)
                span.add_event("exception", _exception_attributes(exc))
            span.set_attributes(self._final_attributes())
            if self._outcome is Outcome.FAILURE:
                span.set_status(Status(StatusCode.ERROR, self._error))
        finally:
            if self._token is not None:
                otel_context.detach(self._token)  # type: ignore[arg-type]
                self._token = None
            span.end()


def _exception_attributes(exc: BaseException) -> dict[str, AttributeValue]:
    """What ``Span.record_exception`` records, as plain text and never raising on the
    exception's own ``__str__`` (the SDK calls it unguarded)."""
    kind = type(exc)
    module, name = kind.__module__, kind.__qualname__
    exception_type = f"{module}.{name}" if module and module != "builtins" else name
    stacktrace = "".join(_traceback.format_exception(kind, exc, exc.__traceback__))
    return {
        "exception.type": clean_text(exception_type),
        "exception.message": exception_message(exc),
        "exception.stacktrace": clean_text(stacktrace),
        "exception.escaped": "False",
    }
