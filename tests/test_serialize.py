"""The JSON shapes of ``decision_trace.serialize`` and their inverses: what the read API
answers and the ``http://`` ledger reads back must be the very same models."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from decision_trace import DecisionTraceClient
from decision_trace.errors import InvalidInputError
from decision_trace.models import (
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
from decision_trace.query import LedgerSummary
from decision_trace.serialize import (
    chain_from_json,
    chain_to_json,
    event_from_json,
    event_to_json,
    summary_from_json,
    summary_to_json,
)
from decision_trace.storage import EventFilters, open_ledger


def through_json(value: Any) -> Any:
    """``value`` as a client receives it: JSON text, decoded."""
    return json.loads(json.dumps(value, ensure_ascii=True))


# --- strategies ---------------------------------------------------------------------------

texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(texts, json_values, max_size=3)
hex_ids = st.integers(1, 2**64 - 1).map(lambda n: format(n, "016x"))
trace_ids = st.integers(1, 2**128 - 1).map(lambda n: format(n, "032x"))
# Every time a ledger can hold (1677-09-21 to 2262-04-11), to the microsecond.
timestamps = st.datetimes(
    min_value=datetime(1677, 9, 22),
    max_value=datetime(2262, 4, 10),
    timezones=st.just(timezone.utc),
)
# Exact up to 10^15 microseconds (31 years): the 15 significant digits of duration_ms.
durations = st.integers(0, 10**15 - 1).map(lambda us: timedelta(microseconds=us))
optional_texts = st.none() | texts

actors = st.builds(
    Actor,
    type=st.sampled_from(ActorType),
    id=texts.filter(str.strip),
    name=optional_texts,
    email=optional_texts,
    role=optional_texts,
    model=optional_texts,
    version=optional_texts,
    service_name=optional_texts,
    metadata=json_objects,
)
decisions = st.builds(
    DecisionTrace,
    reasoning=texts,
    context=json_objects,
    alternatives=st.lists(json_objects, max_size=3).map(tuple),
    rejection_reasons=st.dictionaries(texts, texts, max_size=3),
    confidence=st.none() | st.floats(0, 1),
    risk_level=st.none() | st.sampled_from(RiskLevel),
)
objects = st.builds(
    TrackedObject,
    object_type=st.sampled_from(ObjectType),
    external_id=texts.filter(str.strip),
    state=json_objects,
    state_before=st.none() | json_objects,
    state_after=st.none() | json_objects,
)
events = st.builds(
    TraceEvent,
    id=hex_ids,
    timestamp=timestamps,
    duration=durations,
    event_type=texts,
    description=texts,
    actor=st.none() | actors,
    decision=st.none() | decisions,
    objects=st.lists(objects, max_size=3).map(tuple),
    outcome=st.sampled_from(Outcome),
    error=optional_texts,
    tags=st.lists(texts, max_size=3).map(tuple),
    metadata=json_objects,
    correlation_id=trace_ids,
    parent_event_id=st.none() | hex_ids,
    service_name=optional_texts,
)


# --- events -------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(events)
def test_event_round_trips_through_json(event: TraceEvent) -> None:
    assert event_from_json(through_json(event_to_json(event))) == event


def test_stored_events_round_trip(tmp_path: Path) -> None:
    """Events as a ledger returns them (filled without validation, lazily decoded)."""
    client = DecisionTraceClient(db_path=tmp_path / "t.db", durability="sync")
    first = (
        client.trace("order.refunded", "Refund issued")
        .by_user("agent-7", "Sam", email="sam@example.com", role="support", shift="night")
        .affecting_order("ord/1", state_before={"status": "paid"}, state_after={"x": None})
        .affecting_customer("cust-1", {"tier": "gold", "spent": 1234.5})
        .because(
            "Parcel arrived crushed",
            context={"photos": 3, "nested": {"a": [1, 2.5, "x"]}},
            alternatives=[{"option": "replace"}],
            rejection_reasons={"replace": "out of stock"},
        )
        .with_confidence(0.9)
        .with_risk("high")
        .with_tags("support", "eu")
        .with_metadata(channel="chat", é="ü\x00")
        .record()
    )
    client.trace("job.ran").by_compute("cron").child_of(first).failed("boom").record()
    client.trace("bare.event").record()
    client.close()
    ledger = open_ledger(tmp_path / "t.db")
    try:
        stored = ledger.query(EventFilters(), limit=None)
        assert len(stored) == 3
        for event in stored:
            assert event_from_json(through_json(event_to_json(event))) == event
    finally:
        ledger.close()


def test_duration_ms_is_read_back_to_the_microsecond() -> None:
    base = event_from_json(through_json(event_to_json(_event())))
    for micros in (0, 1, 999, 1000, 1001, 123_456_789, 10**15 - 1):
        data = event_to_json(_event(duration=timedelta(microseconds=micros)))
        assert event_from_json(through_json(data)).duration == timedelta(microseconds=micros)
    assert base.duration == timedelta(milliseconds=5)
    assert event_from_json({**event_to_json(_event()), "duration_ms": 2}).duration == timedelta(
        milliseconds=2
    )


def _event(**changes: Any) -> TraceEvent:
    values: dict[str, Any] = {
        "id": "0123456789abcdef",
        "timestamp": datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc),
        "duration": timedelta(milliseconds=5),
        "event_type": "order.created",
        "description": "Order placed",
        "actor": None,
        "decision": None,
        "objects": (),
        "outcome": Outcome.SUCCESS,
        "error": None,
        "tags": (),
        "metadata": {},
        "correlation_id": "0" * 31 + "1",
        "parent_event_id": None,
    }
    values.update(changes)
    return TraceEvent(**values)


def test_unknown_keys_are_ignored_and_unknown_enum_values_fall_back() -> None:
    data = event_to_json(
        _event(
            actor=Actor.user("u1"),
            objects=(TrackedObject(ObjectType.ORDER, "o1"),),
        )
    )
    data["added_by_a_newer_server"] = {"x": 1}
    data["outcome"] = "abandoned"
    data["actor"]["type"] = "robot"
    data["objects"][0]["object_type"] = "spaceship"
    event = event_from_json(data)
    # As a local ledger reads values a newer release wrote.
    assert event.outcome is Outcome.SUCCESS
    assert event.actor is not None and event.actor.type is ActorType.SYSTEM
    assert event.objects[0].object_type is ObjectType.OTHER


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("id", 5, "id"),
        ("timestamp", "yesterday", "timestamp"),
        ("timestamp", "2026-03-01T12:00:00", "timestamp"),  # no offset
        ("duration_ms", "5", "duration_ms"),
        ("duration_ms", None, "duration_ms"),
        ("tags", ["ok", 5], "tags"),
        ("objects", [{"object_type": "order"}], "objects[0].external_id"),
        ("actor", {"type": "user"}, "actor.id"),
        ("actor", [], "actor"),
        ("decision", {"reasoning": "r"}, "decision.alternatives"),
        ("metadata", [], "metadata"),
        ("outcome", True, "outcome"),
    ],
)
def test_malformed_json_is_an_error_naming_the_key(key: str, value: Any, field: str) -> None:
    data = event_to_json(_event())
    data[key] = value
    with pytest.raises(InvalidInputError) as caught:
        event_from_json(data)
    assert caught.value.field == field
    missing = event_to_json(_event())
    del missing[key]
    with pytest.raises(InvalidInputError, match=key):
        event_from_json(missing)


# --- chains and summaries -----------------------------------------------------------------


@st.composite
def chains(draw: st.DrawFn) -> ChainNode:
    """A tree of up to 12 events (ids distinct), built by attaching each new event under
    an earlier one."""
    size = draw(st.integers(1, 12))
    ids = draw(st.lists(hex_ids, min_size=size, max_size=size, unique=True))
    parents = [None] + [draw(st.integers(0, index - 1)) for index in range(1, size)]
    kids: list[list[int]] = [[] for _ in range(size)]
    for index, parent in enumerate(parents):
        if parent is not None:
            kids[parent].append(index)
    built: list[ChainNode | None] = [None] * size
    for index in range(size - 1, -1, -1):
        built[index] = ChainNode(
            _event(id=ids[index]),
            tuple(built[k] for k in kids[index]),  # type: ignore[misc]
        )
    root = built[0]
    assert root is not None
    return root


@settings(max_examples=100, deadline=None)
@given(chains())
def test_chain_round_trips_through_json(root: ChainNode) -> None:
    rows = through_json(chain_to_json(root))
    assert [row["depth"] for row in rows] == [depth for depth, _ in root.walk()]
    assert chain_from_json(rows) == root


def test_a_chain_thousands_deep_round_trips_without_recursion() -> None:
    node = ChainNode(_event(id=format(5000, "016x")))
    for n in range(4999, -1, -1):
        node = ChainNode(_event(id=format(n, "016x")), (node,))
    assert chain_from_json(through_json(chain_to_json(node))) == node


@pytest.mark.parametrize("depths", [[], [1], [0, 2], [0, 1, 0], [0, 1, 3]])
def test_a_chain_with_impossible_depths_is_refused(depths: list[int]) -> None:
    rows = [
        {"depth": d, **event_to_json(_event(id=format(i + 1, "016x")))}
        for i, d in enumerate(depths)
    ]
    with pytest.raises(InvalidInputError):
        chain_from_json(rows)


def test_summary_round_trips_through_json() -> None:
    summary = LedgerSummary(
        events=5,
        objects=6,
        distinct_objects=3,
        first=datetime(2026, 3, 1, 12, tzinfo=timezone.utc),
        last=datetime(2026, 4, 10, 12, 0, 0, 1, tzinfo=timezone.utc),
        by_event_type=(("order.created", 3), ("price.changed", 2)),
        by_actor_type=(("user", 3), (None, 1), ("ai_agent", 1)),
        by_outcome=(("success", 4), ("failure", 1)),
        by_day=(("2026-04-10", 1), ("2026-03-01", 4)),
        schema_version=7,
    )
    data = through_json(summary_to_json(summary, location="x", size_bytes=10, wal_bytes=2))
    assert data["by_actor_type"] == {"user": 3, "none": 1, "ai_agent": 1}
    assert summary_from_json(data) == summary
    empty = replace_summary(summary)
    assert (
        summary_from_json(
            through_json(summary_to_json(empty, location="x", size_bytes=0, wal_bytes=0))
        )
        == empty
    )


def replace_summary(summary: LedgerSummary) -> LedgerSummary:
    from dataclasses import replace

    return replace(
        summary,
        events=0,
        objects=0,
        distinct_objects=0,
        first=None,
        last=None,
        by_event_type=(),
        by_actor_type=(),
        by_outcome=(),
        by_day=(),
    )
