"""The builder's hot path checks and encodes its arguments without building the models;
these tests hold it to exactly what building the models gives: the same span attributes
for valid input, the same error for invalid input."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from decision_trace import (
    Actor,
    DecisionTrace,
    DecisionTraceClient,
    InvalidInputError,
    ObjectType,
    RiskLevel,
    TraceBuilder,
    TrackedObject,
    _encode,
)
from decision_trace import attributes as keys
from decision_trace import models as _models

_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

_text = st.text(max_size=12)
# Mostly valid values, sometimes the wrong type, sometimes blank.
_field = st.one_of(st.none(), _text, st.integers(), st.just(""), st.just("  "))
_id = st.one_of(_text.filter(lambda s: s.strip() != ""), st.just(""), st.integers(), st.none())
_json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _text),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_text, inner, max_size=3)),
    max_leaves=8,
)
_mapping_or_not = st.one_of(
    st.none(), st.dictionaries(_text, _json_value, max_size=4), st.integers(), st.just("a")
)


@pytest.fixture
def spans(make_client: Callable[..., DecisionTraceClient]) -> Iterator[tuple[Any, Any]]:
    client = make_client()
    exporter = InMemorySpanExporter()
    client.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield client, exporter


def _outcome(action: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", action()
    except InvalidInputError as exc:
        return "error", str(exc)


def _recorded_attributes(
    client: DecisionTraceClient,
    exporter: InMemorySpanExporter,
    build: Callable[[TraceBuilder], Any],
) -> dict[str, Any]:
    exporter.clear()
    build(client.trace("fast.path", "same attributes either way")).record()
    (span,) = exporter.get_finished_spans()
    return dict(span.attributes or {})


_ACTOR_KINDS: dict[str, tuple[str, ...]] = {
    "user": ("email", "role"),
    "ai_agent": ("model", "version"),
    "compute": ("service_name", "version"),
    "system": ("service_name",),
    "external": ("service_name",),
}


@_SETTINGS
@given(
    kind=st.sampled_from(sorted(_ACTOR_KINDS)),
    actor_id=_id,
    name=_field,
    first=_field,
    second=_field,
    metadata=st.dictionaries(st.sampled_from(["team", "shift", "k"]), _json_value, max_size=2),
)
def test_by_methods_match_building_the_actor(
    spans: tuple[DecisionTraceClient, InMemorySpanExporter],
    kind: str,
    actor_id: Any,
    name: Any,
    first: Any,
    second: Any,
    metadata: dict[str, Any],
) -> None:
    client, exporter = spans
    options = dict(zip(_ACTOR_KINDS[kind], (first, second), strict=False))
    model = _outcome(lambda: getattr(Actor, kind)(actor_id, name, **options, **metadata))

    def by_kind(builder: TraceBuilder) -> Any:
        return getattr(builder, f"by_{kind}")(actor_id, name, **options, **metadata)

    fast = _outcome(lambda: _recorded_attributes(client, exporter, by_kind))
    if model[0] == "error":
        assert fast == model
    else:
        assert fast == ("ok", _recorded_attributes(client, exporter, lambda b: b.by(model[1])))


@_SETTINGS
@given(
    object_type=st.one_of(
        st.sampled_from([t.value for t in ObjectType]),
        st.sampled_from(list(ObjectType)),
        st.sampled_from(["ORDER", " Product ", "no_such_type"]),
        st.integers(),
    ),
    external_id=_id,
    state=_mapping_or_not,
    state_before=_mapping_or_not,
    state_after=_mapping_or_not,
)
def test_affecting_matches_building_the_object(
    spans: tuple[DecisionTraceClient, InMemorySpanExporter],
    object_type: Any,
    external_id: Any,
    state: Any,
    state_before: Any,
    state_after: Any,
) -> None:
    client, exporter = spans

    def model() -> dict[str, Any]:
        obj = TrackedObject(
            object_type=object_type,
            external_id=external_id,
            state=state if state is not None else {},
            state_before=state_before,
            state_after=state_after,
        )
        return {
            "type": obj.object_type.value,
            "id": _models.clean_text(obj.external_id),
            "state": _encode.object_state_json(obj),
        }

    def fast() -> dict[str, Any]:
        attrs = _recorded_attributes(
            client,
            exporter,
            lambda b: b.affecting(
                object_type, external_id, state, state_before=state_before, state_after=state_after
            ),
        )
        states = attrs.get(keys.OBJECT_STATES)
        return {
            "type": attrs[keys.OBJECT_TYPES][0],
            "id": attrs[keys.OBJECT_IDS][0],
            "state": states[1:-1] if states is not None else _encode.EMPTY_OBJECT_STATE,
        }

    assert _outcome(fast) == _outcome(model)


@_SETTINGS
@given(
    context=_mapping_or_not,
    alternatives=st.one_of(
        st.none(),
        st.lists(st.dictionaries(_text, _json_value, max_size=2), max_size=3),
        st.lists(st.one_of(st.dictionaries(_text, _text, max_size=1), st.integers()), max_size=2),
        st.just("replace"),
        st.integers(),
    ),
    rejection_reasons=st.one_of(
        st.none(),
        st.dictionaries(_text, _text, max_size=3),
        st.dictionaries(_text, st.integers(), min_size=1, max_size=1),
        st.integers(),
    ),
    confidence=st.one_of(st.none(), st.floats(), st.integers(-1, 2), st.just("high")),
    risk_level=st.one_of(st.none(), st.sampled_from(["low", "HIGH", "extreme", ""])),
)
def test_because_matches_building_the_decision(
    spans: tuple[DecisionTraceClient, InMemorySpanExporter],
    context: Any,
    alternatives: Any,
    rejection_reasons: Any,
    confidence: Any,
    risk_level: Any,
) -> None:
    client, exporter = spans
    decision_keys = (
        keys.REASONING,
        keys.CONTEXT,
        keys.ALTERNATIVES,
        keys.REJECTION_REASONS,
        keys.CONFIDENCE,
        keys.RISK_LEVEL,
    )

    def model() -> dict[str, Any]:
        # As the builder did before its fast path: the risk level is parsed first.
        risk = RiskLevel.parse(risk_level, "risk_level") if risk_level else None
        decision = DecisionTrace(
            reasoning="why",
            context=context if context is not None else {},
            alternatives=alternatives if alternatives is not None else (),
            rejection_reasons=rejection_reasons if rejection_reasons is not None else {},
            confidence=confidence,
            risk_level=risk,
        )
        return dict(_encode.decision_attributes(decision))

    def fast() -> dict[str, Any]:
        attrs = _recorded_attributes(
            client,
            exporter,
            lambda b: b.because(
                "why",
                context,
                alternatives,
                rejection_reasons,
                confidence=confidence,
                risk_level=risk_level,
            ),
        )
        return {key: attrs[key] for key in decision_keys if key in attrs}

    assert _outcome(fast) == _outcome(model)
