"""The fluent builder and span(): what is recorded is what was said, on every backend."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from decision_trace import (
    Actor,
    ActorType,
    DecisionTraceClient,
    DecisionTraceError,
    EventNotFoundError,
    InvalidInputError,
    ObjectType,
    Outcome,
    RiskLevel,
)

pytestmark = pytest.mark.usefixtures("ledger_target")


def test_record_returns_span_id_and_stores_everything(client: DecisionTraceClient) -> None:
    event_id = (
        client.trace("order.refunded", "Refunded in full")
        .by_user("agent-7", "Sam", email="sam@example.com", role="support", team="returns")
        .affecting_order("ord-123", {"status": "refunded", "refund_amount": 99.99})
        .affecting_customer("cust-456")
        .affecting_inventory("SKU-789", quantity_before=100, quantity_after=101)
        .because(
            "Refund approved due to product defect",
            context={"defect_type": "manufacturing"},
            alternatives=[{"action": "replace"}],
            rejection_reasons={"replace": "Customer requested full refund"},
        )
        .with_confidence(0.9)
        .with_risk("high")
        .with_tags("refund", "defect", "refund")
        .with_metadata({"ticket": "T-1"}, channel="email")
        .record()
    )
    assert re.fullmatch(r"[0-9a-f]{16}", event_id)
    event = client.get_event(event_id)
    assert event is not None
    assert re.fullmatch(r"[0-9a-f]{32}", event.correlation_id)
    assert event.event_type == "order.refunded"
    assert event.description == "Refunded in full"
    assert event.actor == Actor.user(
        "agent-7", "Sam", email="sam@example.com", role="support", team="returns"
    )
    assert event.decision is not None
    assert event.decision.reasoning == "Refund approved due to product defect"
    assert event.decision.context == {"defect_type": "manufacturing"}
    assert event.decision.alternatives == ({"action": "replace"},)
    assert event.decision.rejection_reasons == {"replace": "Customer requested full refund"}
    assert event.decision.confidence == 0.9
    assert event.decision.risk_level is RiskLevel.HIGH
    assert [(o.object_type, o.external_id) for o in event.objects] == [
        (ObjectType.ORDER, "ord-123"),
        (ObjectType.CUSTOMER, "cust-456"),
        (ObjectType.INVENTORY, "SKU-789"),
    ]
    assert event.objects[0].state == {"status": "refunded", "refund_amount": 99.99}
    assert event.objects[2].state_before == {"quantity": 100}
    assert event.objects[2].state_after == {"quantity": 101}
    assert event.tags == ("refund", "defect")
    assert event.metadata == {"ticket": "T-1", "channel": "email"}
    assert event.outcome is Outcome.SUCCESS
    assert event.parent_event_id is None
    assert event.timestamp.tzinfo is not None
    assert abs(event.timestamp - datetime.now(timezone.utc)) < timedelta(minutes=5)


def test_every_actor_shortcut(client: DecisionTraceClient) -> None:
    cases = {
        ActorType.USER: client.trace("t").by_user("u"),
        ActorType.AI_AGENT: client.trace("t").by_ai_agent("a", model="m", version="1"),
        ActorType.COMPUTE: client.trace("t").by_compute("c", service_name="svc"),
        ActorType.SYSTEM: client.trace("t").by_system("s"),
        ActorType.EXTERNAL: client.trace("t").by_external("e", service_name="peer"),
    }
    for actor_type, builder in cases.items():
        event = client.get_event(builder.record())
        assert event is not None and event.actor is not None
        assert event.actor.type is actor_type
    agent = client.query(actor_types=["ai_agent"])[0].actor
    assert agent is not None and (agent.model, agent.version) == ("m", "1")
    external = client.query(actor_types=[ActorType.EXTERNAL])[0].actor
    assert external is not None and external.service_name == "peer"


def test_affecting_generic_and_each_shortcut(client: DecisionTraceClient) -> None:
    builder = client.trace("campaign.adjusted", "Budget moved")
    builder.affecting(
        "campaign", "spring", state_before={"budget": 100}, state_after={"budget": 80}
    )
    builder.affecting_product("p1").affecting_payment("pay1").affecting_shipment("sh1")
    builder.affecting_return("r1").affecting_return_("r2").affecting_campaign("c1")
    builder.affecting_promotion("promo1").affecting(ObjectType.CART, "cart1")
    event = client.get_event(builder.record())
    assert event is not None
    assert [o.object_type.value for o in event.objects] == [
        "campaign",
        "product",
        "payment",
        "shipment",
        "return",
        "return",
        "campaign",
        "promotion",
        "cart",
    ]
    assert event.objects[0].state_after == {"budget": 80}


def test_failed_outcome_with_message_and_exception(client: DecisionTraceClient) -> None:
    first = client.trace("payment.failed").failed("card declined").record()
    second = client.trace("payment.failed").failed(ValueError("bad cvc")).record()
    third = client.trace("payment.retry").failed("x").succeeded().record()
    events = {e.id: e for e in client.query(limit=None)}
    assert (events[first].outcome, events[first].error) == (Outcome.FAILURE, "card declined")
    assert events[second].error == "ValueError: bad cvc"
    assert (events[third].outcome, events[third].error) == (Outcome.SUCCESS, None)
    assert [e.id for e in client.query(outcome="failure", order="asc")] == [first, second]


def test_second_record_raises_instead_of_duplicating(client: DecisionTraceClient) -> None:
    builder = client.trace("order.created")
    event_id = builder.record()
    with pytest.raises(DecisionTraceError, match=event_id):
        builder.record()
    assert len(client.query(limit=None)) == 1


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.trace(""), "event_type"),
        (lambda c: c.trace(None), "event_type"),
        (lambda c: c.trace("t", 5), "description"),
        (lambda c: c.trace("t").with_confidence(1.5), "confidence"),
        (lambda c: c.trace("t").with_confidence("high"), "confidence"),
        (lambda c: c.trace("t").with_risk("extreme"), "risk_level"),
        (lambda c: c.trace("t").by_user(123), "actor.id"),
        (lambda c: c.trace("t").by_user(""), "actor.id"),
        (lambda c: c.trace("t").affecting_order(""), "order id"),
        (lambda c: c.trace("t").affecting_order(7), "order id"),
        (lambda c: c.trace("t").affecting("planet", "x"), "object_type"),
        (lambda c: c.trace("t").affecting_inventory("S", quantity_before="1"), "quantity_before"),
        (lambda c: c.trace("t").because(""), "reasoning"),
        (lambda c: c.trace("t").because("r", context=[1]), "context"),
        (lambda c: c.trace("t").because("r", context={"x": object()}), "context['x']"),
        (lambda c: c.trace("t").with_tags(""), "tags[0]"),
        (lambda c: c.trace("t").with_metadata(x=object()), "metadata['x']"),
        (lambda c: c.trace("t").child_of("not an id"), "parent"),
        (lambda c: c.trace("t").child_of(12), "parent"),
        (lambda c: c.trace("t").by("user"), "actor"),
    ],
)
def test_bad_input_raises_at_the_call_naming_the_field(
    client: DecisionTraceClient, call: Callable[[DecisionTraceClient], object], field: str
) -> None:
    with pytest.raises(InvalidInputError) as raised:
        call(client)
    assert raised.value.field == field
    assert str(raised.value).startswith(f"{field}:")
    assert client.query(limit=None) == []


def test_span_measures_real_duration_and_parents_inner_events(
    client: DecisionTraceClient,
) -> None:
    with client.span("report.generation", "Generating monthly report") as trace:
        trace.by_compute("report-service", "Report Generator")
        inner = client.trace("report.section", "Sales section").record()
        time.sleep(0.05)
    outer = client.get_event(trace.event_id or "")
    child = client.get_event(inner)
    assert outer is not None and child is not None
    assert outer.duration >= timedelta(milliseconds=50)
    assert outer.actor is not None and outer.actor.id == "report-service"
    assert child.parent_event_id == outer.id
    assert child.correlation_id == outer.correlation_id


def test_span_exception_marks_failure_records_it_and_reraises(
    client: DecisionTraceClient,
) -> None:
    with pytest.raises(RuntimeError, match="disk full"), client.span("export.run") as trace:
        raise RuntimeError("disk full")
    event = client.get_event(trace.event_id or "")
    assert event is not None
    assert event.outcome is Outcome.FAILURE
    assert event.error == "RuntimeError: disk full"


def test_span_builder_cannot_be_recorded_manually(client: DecisionTraceClient) -> None:
    with client.span("job.run") as trace, pytest.raises(DecisionTraceError, match="with-block"):
        trace.record()
    with pytest.raises(DecisionTraceError, match=r"client\.span"), client.trace("t"):
        pass


def test_child_of_right_after_record_before_any_flush(
    make_client: Callable[..., DecisionTraceClient],
) -> None:
    client = make_client(durability="batch")
    parent = client.trace("workflow.started").by_system("engine").record()
    child = client.trace("workflow.step").child_of(parent).record()
    chain = client.get_chain(child)
    assert chain.event.id == parent
    assert [node.event.id for node in chain.children] == [child]


def test_child_of_an_event_recorded_by_another_client(
    make_client: Callable[..., DecisionTraceClient],
) -> None:
    first = make_client()
    parent = first.trace("workflow.started").record()
    first.close()
    second = make_client()
    child = second.trace("workflow.step").child_of(parent.upper()).record()
    event = second.get_event(child)
    parent_event = second.get_event(parent)
    assert event is not None and parent_event is not None
    assert event.parent_event_id == parent
    assert event.correlation_id == parent_event.correlation_id


def test_child_of_unknown_event_raises(client: DecisionTraceClient) -> None:
    with pytest.raises(EventNotFoundError, match="0123456789abcdef"):
        client.trace("t").child_of("0123456789abcdef")


def test_child_of_traceparent_and_current_traceparent(client: DecisionTraceClient) -> None:
    upstream = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    event = client.get_event(client.trace("order.received").child_of(upstream).record())
    assert event is not None
    assert event.correlation_id == "0af7651916cd43dd8448eb211c80319c"
    assert event.parent_event_id == "b7ad6b7169203331"
    assert client.current_traceparent() is None
    with client.span("checkout") as trace:
        header = client.current_traceparent()
    assert header is not None
    _, trace_id, span_id, _ = header.split("-")
    span_event = client.get_event(trace.event_id or "")
    assert span_event is not None
    assert (trace_id, span_id) == (span_event.correlation_id, span_event.id)


def test_at_records_a_past_event(client: DecisionTraceClient) -> None:
    event_id = client.trace("order.imported").at(datetime(2024, 1, 15, 9, 30)).record()
    event = client.get_event(event_id)
    assert event is not None
    assert event.timestamp == datetime(2024, 1, 15, 9, 30, tzinfo=timezone.utc)
    in_january = client.query(start=datetime(2024, 1, 1), end=datetime(2024, 1, 31))
    assert [e.id for e in in_january] == [event_id]
