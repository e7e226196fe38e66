"""EcommerceClient: every method's stored event, money, errors, the spec snippets, the demo.

Every test that records through ``shop``/``make_shop``, and the demo on a ledger named by
``$DECISION_TRACE_DB``, runs on every backend (``ledger_target``); the tests of the
spec's and the docs' snippets run on the default SQLite ledger they are written for.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from decision_trace import (
    ActorType,
    InvalidInputError,
    ObjectType,
    Outcome,
    RiskLevel,
    TraceBuilder,
    TraceEvent,
    TrackedObject,
)
from decision_trace.ecommerce import (
    DEFAULT_CURRENCY,
    EcommerceClient,
    EcommerceEventType,
    to_decimal,
)
from decision_trace.storage import is_url, open_ledger

REPO_ROOT = Path(__file__).resolve().parent.parent
SPEC = REPO_ROOT / "docs" / "spec.md"
DEMO = REPO_ROOT / "examples" / "ecommerce_demo.py"
ECOMMERCE_DOC = REPO_ROOT / "docs" / "ecommerce.md"


@pytest.fixture
def make_shop(
    ledger_target: str, make_client: Callable[..., Any]
) -> Callable[..., EcommerceClient]:
    """Build EcommerceClients on ``ledger_target`` (once per backend); every one is closed
    after the test."""

    def make(**kwargs: Any) -> EcommerceClient:
        return make_client(EcommerceClient, **kwargs)

    return make


@pytest.fixture
def shop(make_shop: Callable[..., EcommerceClient]) -> EcommerceClient:
    return make_shop()


def stored(shop: EcommerceClient, builder: TraceBuilder) -> TraceEvent:
    """Record the builder and read the event back from the ledger."""
    event = shop.get_event(builder.record())
    assert event is not None
    return event


def linked(event: TraceEvent) -> list[tuple[str, str]]:
    return [(o.object_type.value, o.external_id) for o in event.objects]


def obj(event: TraceEvent, object_type: ObjectType) -> Any:
    (found,) = event.objects_of(object_type)
    return found


# --- every method, realistic arguments, the stored event checked ----------------------


def test_order_created(shop: EcommerceClient) -> None:
    event = stored(
        shop,
        shop.order_created(
            "ord-1001",
            "cust-7",
            Decimal("154.97"),
            [
                {"sku": "GRINDER-C40", "qty": 1, "price": Decimal("129.99")},
                {"sku": "BEANS-1KG", "qty": 1, "price": 24.98},
            ],
            details={"channel": "web"},
        ).by_user("cust-7", "Ana Silva", role="customer"),
    )
    assert event.event_type == "order.created" == EcommerceEventType.ORDER_CREATED
    assert event.actor is not None and event.actor.type is ActorType.USER
    assert event.actor.id == "cust-7" and event.actor.role == "customer"
    assert linked(event) == [("order", "ord-1001"), ("customer", "cust-7")]
    order = obj(event, ObjectType.ORDER).state
    assert order["status"] == "created" and order["channel"] == "web"
    assert order["total"] == 154.97 and repr(order["total"]) == "154.97"
    assert order["currency"] == "USD"
    assert [item["price"] for item in order["items"]] == [129.99, 24.98]
    assert event.description == "Order ord-1001 created: 2 items, 154.97 USD"
    assert event.decision is None and "order" in event.tags


def test_order_cancelled(shop: EcommerceClient) -> None:
    event = stored(
        shop,
        shop.order_cancelled(
            "ord-1002",
            "Customer found a better price elsewhere",
            customer_id="cust-8",
            refund_amount=Decimal("40.00"),
            order_total=Decimal("40.00"),
            currency="eur",
        ).by_user("cust-8", "Ben"),
    )
    assert event.event_type == "order.cancelled"
    assert linked(event) == [("order", "ord-1002"), ("customer", "cust-8")]
    state = obj(event, ObjectType.ORDER).state
    assert state == {
        "status": "cancelled",
        "refund_amount": 40.0,
        "order_total": 40.0,
        "currency": "EUR",
    }
    assert event.decision is not None
    assert event.decision.reasoning == "Customer found a better price elsewhere"


def test_order_refunded(shop: EcommerceClient) -> None:
    event = stored(
        shop,
        shop.order_refunded(
            "ord-1003",
            Decimal("30.00"),
            "Lid arrived cracked",
            payment_id="pay-55",
            customer_id="cust-9",
            order_total=Decimal("89.00"),
        ).by_user("agent-sam", "Sam", role="support"),
    )
    assert event.event_type == "order.refunded"
    assert event.actor is not None and event.actor.role == "support"
    assert linked(event) == [("order", "ord-1003"), ("payment", "pay-55"), ("customer", "cust-9")]
    assert obj(event, ObjectType.ORDER).state == {
        "status": "partially_refunded",
        "refund_amount": 30.0,
        "currency": "USD",
        "order_total": 89.0,
    }
    assert obj(event, ObjectType.PAYMENT).state["status"] == "refunded"
    assert event.decision is not None and event.decision.reasoning == "Lid arrived cracked"
    assert event.description == "Refund of 30.00 USD for order ord-1003"
    # "Why was order ord-1003 refunded?"
    (why,) = shop.query(event_types=["order.refunded"], object_ids=["ord-1003"])
    assert why.decision is not None and why.decision.reasoning == "Lid arrived cracked"


def test_full_refund_is_status_refunded(shop: EcommerceClient) -> None:
    event = stored(shop, shop.order_refunded("ord-1", 89.0, "Defect", order_total=89))
    assert obj(event, ObjectType.ORDER).state["status"] == "refunded"
    assert linked(event) == [("order", "ord-1")]
    # Without previous_status there is no change to show: only the new status.
    order = obj(event, ObjectType.ORDER)
    assert order.state_before is None and order.state_after is None


def test_order_refunded_with_previous_status_records_the_change(shop: EcommerceClient) -> None:
    event = stored(
        shop,
        shop.order_refunded(
            "ord-1003",
            Decimal("30.00"),
            "Lid arrived cracked",
            payment_id="pay-55",
            order_total=Decimal("89.00"),
            previous_status="paid",
        ),
    )
    order = obj(event, ObjectType.ORDER)
    assert order.state_before == {"status": "paid"}
    assert order.state_after == {"status": "partially_refunded"}
    # As shipment_shipped: the status lives in before/after, the state keeps the rest.
    assert order.state == {"refund_amount": 30.0, "currency": "USD", "order_total": 89.0}
    assert obj(event, ObjectType.PAYMENT).state["status"] == "refunded"
    assert linked(event) == [("order", "ord-1003"), ("payment", "pay-55")]
    full = stored(shop, shop.order_refunded("ord-2", 10, "Defect", previous_status="shipped"))
    full_order = obj(full, ObjectType.ORDER)
    assert (full_order.state_before, full_order.state_after) == (
        {"status": "shipped"},
        {"status": "refunded"},
    )
    (history,) = shop.get_object_history(external_id="ord-2", object_type=ObjectType.ORDER)
    assert history.id == full.id
    assert field_of(lambda: shop.order_refunded("o", 1, "x", previous_status=" ")) == (
        "previous_status"
    )


def test_payment_captured(shop: EcommerceClient) -> None:
    event = stored(
        shop,
        shop.payment_captured("pay-2", "ord-1001", 154.97, "paypal", processor="paypal"),
    )
    assert event.event_type == "payment.captured"
    assert event.outcome is Outcome.SUCCESS
    assert event.actor is not None and event.actor.type is ActorType.EXTERNAL
    assert event.actor.id == "paypal"
    assert linked(event) == [("payment", "pay-2"), ("order", "ord-1001")]
    assert obj(event, ObjectType.PAYMENT).state == {
        "status": "captured",
        "amount": 154.97,
        "currency": "USD",
        "method": "paypal",
        "processor": "paypal",
    }


def test_payment_failed(shop: EcommerceClient) -> None:
    event = stored(
        shop,
        shop.payment_failed(
            "pay-1",
            "ord-1001",
            Decimal("154.97"),
            "card_declined",
            "Insufficient funds",
            payment_method="card",
            processor="stripe",
        ),
    )
    assert event.event_type == "payment.failed"
    assert event.outcome is Outcome.FAILURE
    assert event.error == "card_declined: Insufficient funds"
    assert event.actor is not None and event.actor.id == "stripe"
    assert linked(event) == [("payment", "pay-1"), ("order", "ord-1001")]
    payment = obj(event, ObjectType.PAYMENT).state
    assert payment["status"] == "failed" and payment["error_code"] == "card_declined"
    assert payment["amount"] == 154.97 and payment["method"] == "card"
    assert shop.query(outcome="failure")[0].id == event.id


def test_inventory_adjusted(shop: EcommerceClient) -> None:
    event = stored(
        shop,
        shop.inventory_adjusted(
            "SKU-789", 100, 101, "Cycle count found one extra unit", location="main"
        ).by_compute("cycle-count", "Cycle Count", service_name="warehouse-api"),
    )
    assert event.event_type == "inventory.adjusted"
    assert event.actor is not None and event.actor.type is ActorType.COMPUTE
    item = obj(event, ObjectType.INVENTORY)
    assert item.external_id == "SKU-789"
    assert item.state_before == {"quantity": 100} and item.state_after == {"quantity": 101}
    assert item.state == {"delta": 1, "location": "main"}
    assert event.decision is not None
    assert event.decision.reasoning == "Cycle count found one extra unit"
    assert event.description == "Inventory SKU-789 adjusted: 100 -> 101 (+1)"


def test_inventory_low_stock(shop: EcommerceClient) -> None:
    event = stored(
        shop,
        shop.inventory_low_stock("GRINDER-C40", 3, 5, recommended_action="restock").by_compute(
            "stock-watch"
        ),
    )
    assert event.event_type == "inventory.low_stock_detected"
    item = obj(event, ObjectType.INVENTORY)
    assert item.external_id == "GRINDER-C40"
    assert item.state == {"quantity": 3, "threshold": 5}
    assert event.decision is not None
    assert event.decision.context == {
        "current_quantity": 3,
        "threshold": 5,
        "recommended_action": "restock",
    }
    assert event.decision.risk_level is RiskLevel.MEDIUM
    out = stored(shop, shop.inventory_low_stock("GRINDER-C40", 0, 5))
    assert out.decision is not None and out.decision.risk_level is RiskLevel.HIGH


def test_inventory_restock_ordered(shop: EcommerceClient) -> None:
    event = stored(
        shop,
        shop.inventory_restock_ordered(
            "GRINDER-C40",
            24,
            "comandante",
            purchase_order_id="po-77",
            expected_arrival=date(2026, 12, 3),
            cost=Decimal("2159.76"),
        ).by_user("ops-maria", "Maria", role="operations"),
    )
    assert event.event_type == "inventory.restock_ordered"
    assert linked(event) == [
        ("inventory", "GRINDER-C40"),
        ("supplier", "comandante"),
        ("purchase_order", "po-77"),
    ]
    assert obj(event, ObjectType.INVENTORY).state["quantity_ordered"] == 24
    assert obj(event, ObjectType.PURCHASE_ORDER).state == {
        "status": "ordered",
        "sku": "GRINDER-C40",
        "quantity": 24,
        "expected_arrival": "2026-12-03",
        "cost": 2159.76,
        "currency": "USD",
    }


def test_shipment_created(shop: EcommerceClient) -> None:
    event = stored(
        shop,
        shop.shipment_created(
            "shp-1",
            "ord-1001",
            "DHL",
            "JD0146",
            items=[{"sku": "GRINDER-C40", "qty": 1}],
            warehouse="main",
        ).by_system("fulfillment-engine"),
    )
    assert event.event_type == "shipment.created"
    assert event.actor is not None and event.actor.type is ActorType.SYSTEM
    assert linked(event) == [("shipment", "shp-1"), ("order", "ord-1001")]
    assert obj(event, ObjectType.SHIPMENT).state == {
        "status": "created",
        "carrier": "DHL",
        "tracking_number": "JD0146",
        "items": [{"sku": "GRINDER-C40", "qty": 1}],
        "warehouse": "main",
    }


def test_shipment_shipped(shop: EcommerceClient) -> None:
    event = stored(
        shop,
        shop.shipment_shipped(
            "shp-1", "ord-1001", "JD0146", "DHL", estimated_delivery=date(2026, 11, 27)
        ),
    )
    assert event.event_type == "shipment.shipped"
    shipment = obj(event, ObjectType.SHIPMENT)
    assert shipment.state_before == {"status": "created"}
    assert shipment.state_after == {"status": "shipped"}
    assert shipment.state["tracking_number"] == "JD0146"
    assert shipment.state["estimated_delivery"] == "2026-11-27"
    assert linked(event)[1] == ("order", "ord-1001")


def test_shipment_delivered(shop: EcommerceClient) -> None:
    when = datetime(2026, 11, 27, 10, 30, tzinfo=timezone.utc)
    event = stored(
        shop,
        shop.shipment_delivered(
            "shp-1", "ord-1001", delivery_time=when, signature="A. Silva"
        ).by_external("dhl", "DHL"),
    )
    assert event.event_type == "shipment.delivered"
    assert event.actor is not None and event.actor.type is ActorType.EXTERNAL
    shipment = obj(event, ObjectType.SHIPMENT)
    assert shipment.state_after == {"status": "delivered"}
    assert shipment.state == {"delivered_at": when.isoformat(), "signed_by": "A. Silva"}
    assert linked(event) == [("shipment", "shp-1"), ("order", "ord-1001")]


def test_return_requested(shop: EcommerceClient) -> None:
    event = stored(
        shop,
        shop.return_requested(
            "ret-1",
            "ord-1003",
            "cust-9",
            [{"sku": "KETTLE", "qty": 1, "price": 89.0}],
            "Lid arrived cracked",
        ).by_user("cust-9", "Ben", role="customer"),
    )
    assert event.event_type == "return.requested"
    assert linked(event) == [("return", "ret-1"), ("order", "ord-1003"), ("customer", "cust-9")]
    assert obj(event, ObjectType.RETURN).state == {
        "status": "requested",
        "items": [{"sku": "KETTLE", "qty": 1, "price": 89.0}],
    }
    assert event.decision is not None and event.decision.reasoning == "Lid arrived cracked"


def test_return_approved(shop: EcommerceClient) -> None:
    event = stored(
        shop,
        shop.return_approved(
            "ret-1",
            "ord-1003",
            Decimal("89.00"),
            "Photos show a manufacturing crack",
            customer_id="cust-9",
            order_total=89,
        ).by_user("agent-sam", "Sam", role="support"),
    )
    assert event.event_type == "return.approved"
    assert linked(event) == [("return", "ret-1"), ("order", "ord-1003"), ("customer", "cust-9")]
    ret = obj(event, ObjectType.RETURN)
    assert ret.state_before == {"status": "requested"}
    assert ret.state_after == {"status": "approved"}
    assert ret.state == {"refund_amount": 89.0, "currency": "USD"}
    assert event.decision is not None
    assert event.decision.reasoning == "Photos show a manufacturing crack"


def test_customer_created(shop: EcommerceClient) -> None:
    event = stored(
        shop,
        shop.customer_created(
            "cust-7", "ana@example.com", name="Ana Silva", source="web", tier="bronze"
        ),
    )
    assert event.event_type == "customer.created"
    assert linked(event) == [("customer", "cust-7")]
    assert obj(event, ObjectType.CUSTOMER).state == {
        "status": "active",
        "email": "ana@example.com",
        "name": "Ana Silva",
        "source": "web",
        "tier": "bronze",
    }


def test_customer_tier_changed(shop: EcommerceClient) -> None:
    event = stored(
        shop,
        shop.customer_tier_changed(
            "cust-7", "bronze", "silver", "Lifetime spend passed 150.00"
        ).by_system("loyalty-engine"),
    )
    assert event.event_type == "customer.tier_changed"
    customer = obj(event, ObjectType.CUSTOMER)
    assert customer.external_id == "cust-7"
    assert customer.state_before == {"tier": "bronze"}
    assert customer.state_after == {"tier": "silver"}
    assert event.decision is not None
    assert event.decision.reasoning == "Lifetime spend passed 150.00"
    history = shop.get_object_history("cust-7", ObjectType.CUSTOMER)
    assert [e.event_type for e in history] == ["customer.tier_changed"]


def test_ai_recommendation(make_shop: Callable[..., EcommerceClient]) -> None:
    spans = InMemorySpanExporter()
    shop = make_shop(exporters=[spans])
    event = stored(
        shop,
        shop.ai_recommendation(
            recommendation_type="inventory_restock",
            recommendation={"sku": "WIDGET-001", "quantity": 100},
            context={"current_stock": 15, "avg_daily_sales": 8},
            confidence=0.92,
            model="demand-forecast-v2",
            agent_id="restock-ai",
            agent_name="Restock Planner",
            recommendation_id="rec-1",
        ).affecting_inventory("WIDGET-001", state={"quantity": 15}),
    )
    assert event.event_type == "ai.recommendation_generated"
    actor = event.actor
    assert actor is not None and actor.type is ActorType.AI_AGENT
    assert (actor.id, actor.name, actor.model) == (
        "restock-ai",
        "Restock Planner",
        "demand-forecast-v2",
    )
    decision = event.decision
    assert decision is not None and decision.confidence == 0.92
    assert decision.context == {
        "current_stock": 15,
        "avg_daily_sales": 8,
        "recommendation_type": "inventory_restock",
        "recommendation": {"sku": "WIDGET-001", "quantity": 100},
    }
    assert "inventory_restock" in decision.reasoning
    assert linked(event) == [("recommendation", "rec-1"), ("inventory", "WIDGET-001")]
    assert obj(event, ObjectType.RECOMMENDATION).state["recommendation"]["quantity"] == 100
    assert "inventory_restock" in event.tags
    # GenAI-aware backends see the agent and its model through gen_ai.* attributes.
    assert shop.flush()
    (span,) = spans.get_finished_spans()
    attributes = span.attributes or {}
    assert attributes["gen_ai.agent.id"] == "restock-ai"
    assert attributes["gen_ai.agent.name"] == "Restock Planner"
    assert attributes["gen_ai.request.model"] == "demand-forecast-v2"


def test_ai_recommendation_default_agent_is_the_model(shop: EcommerceClient) -> None:
    event = stored(
        shop,
        shop.ai_recommendation("upsell", {"sku": "FILTERS"}, {}, 0.5, "recsys-3"),
    )
    assert event.actor is not None and event.actor.id == "recsys-3"
    assert shop.query(actor_types=[ActorType.AI_AGENT])[0].id == event.id


def test_anomaly_detected(shop: EcommerceClient) -> None:
    event = stored(
        shop,
        shop.anomaly_detected(
            "refund_spike",
            "refunds_per_hour",
            14,
            threshold=5,
            severity="high",
            context={"window": "1h"},
            model="isolation-forest-v1",
        ).affecting_product("KETTLE"),
    )
    assert event.event_type == "ai.anomaly_detected"
    assert event.actor is not None and event.actor.type is ActorType.AI_AGENT
    assert event.actor.id == "anomaly-detector" and event.actor.model == "isolation-forest-v1"
    decision = event.decision
    assert decision is not None and decision.risk_level is RiskLevel.HIGH
    assert decision.context == {
        "window": "1h",
        "anomaly_type": "refund_spike",
        "metric": "refunds_per_hour",
        "observed_value": 14,
        "threshold": 5,
        "severity": "high",
    }
    assert "refunds_per_hour" in event.description
    assert linked(event) == [("product", "KETTLE")]
    plain = stored(shop, shop.anomaly_detected("traffic_drop", "sessions", 3, expected_value=40))
    assert plain.actor is not None and plain.actor.type is ActorType.SYSTEM
    assert plain.decision is not None and plain.decision.risk_level is RiskLevel.MEDIUM


def test_automation_triggered(shop: EcommerceClient) -> None:
    alert = shop.inventory_low_stock("GRINDER-C40", 3, 5).record()
    event = stored(
        shop,
        shop.automation_triggered(
            "low-stock-restock-review",
            "inventory.low_stock_detected",
            ["request_ai_restock_recommendation", "notify_operations"],
            engine="automation-engine",
        ).child_of(alert),
    )
    assert event.event_type == "automation.triggered"
    assert event.parent_event_id == alert
    actor = event.actor
    assert actor is not None and actor.type is ActorType.SYSTEM
    assert actor.id == "low-stock-restock-review" and actor.service_name == "automation-engine"
    assert event.decision is not None
    assert event.decision.context == {
        "rule": "low-stock-restock-review",
        "trigger": "inventory.low_stock_detected",
        "actions": ["request_ai_restock_recommendation", "notify_operations"],
    }
    assert "low-stock-restock-review" in event.decision.reasoning


def test_price_updated(shop: EcommerceClient) -> None:
    event = stored(
        shop,
        shop.price_updated(
            "BEANS-1KG",
            24.98,
            Decimal("22.49"),
            "Spring promotion",
            currency="EUR",
            effective_date=date(2026, 12, 1),
        ).by_user("merch-lee", "Lee", role="merchandising"),
    )
    assert event.event_type == "price.updated"
    product = obj(event, ObjectType.PRODUCT)
    assert product.external_id == "BEANS-1KG"
    assert product.state_before == {"price": 24.98}
    assert product.state_after == {"price": 22.49}
    assert product.state == {"currency": "EUR", "change": -2.49, "effective_date": "2026-12-01"}
    assert event.decision is not None and event.decision.reasoning == "Spring promotion"
    history = shop.get_object_history("BEANS-1KG", ObjectType.PRODUCT)
    assert [e.id for e in history] == [event.id]


def test_dynamic_price_adjusted(shop: EcommerceClient) -> None:
    event = stored(
        shop,
        shop.dynamic_price_adjusted(
            "BEANS-1KG",
            Decimal("24.98"),
            Decimal("27.49"),
            factors={"demand_index": 1.35, "competitor_min_price": 28.90},
            model="gpt-4o-mini",
            confidence=0.81,
            agent_id="pricing-ai",
            agent_name="Dynamic Pricing",
            alternatives=[{"action": "keep_price"}, {"action": "raise_to_29.99"}],
            rejection_reasons={
                "keep_price": "Leaves margin on the table",
                "raise_to_29.99": "Above the cheapest competitor",
            },
        ),
    )
    assert event.event_type == "price.dynamic_adjusted"
    actor = event.actor
    assert actor is not None and actor.type is ActorType.AI_AGENT
    assert (actor.id, actor.model) == ("pricing-ai", "gpt-4o-mini")
    product = obj(event, ObjectType.PRODUCT)
    assert product.state_before == {"price": 24.98}
    assert product.state_after == {"price": 27.49}
    decision = event.decision
    assert decision is not None and decision.confidence == 0.81
    assert decision.context == {"demand_index": 1.35, "competitor_min_price": 28.90}
    assert [a["action"] for a in decision.alternatives] == ["keep_price", "raise_to_29.99"]
    assert decision.rejection_reasons["keep_price"] == "Leaves margin on the table"
    assert "27.49 USD" in decision.reasoning
    assert shop.query(actor_ids=["pricing-ai"])[0].id == event.id


# --- vocabulary and builder contract --------------------------------------------------

METHODS = [member.name.lower() for member in EcommerceEventType]

SAMPLE_CALLS: dict[str, Callable[[EcommerceClient], TraceBuilder]] = {
    "order_created": lambda c: c.order_created("o", "c", 1, [{"sku": "s", "qty": 1}]),
    "order_cancelled": lambda c: c.order_cancelled("o", "changed mind"),
    "order_refunded": lambda c: c.order_refunded("o", 1, "defect"),
    "payment_captured": lambda c: c.payment_captured("p", "o", 1, "card"),
    "payment_failed": lambda c: c.payment_failed("p", "o", 1, "card_declined"),
    "inventory_adjusted": lambda c: c.inventory_adjusted("s", 2, 1, "sold"),
    "inventory_low_stock": lambda c: c.inventory_low_stock("s", 1, 5),
    "inventory_restock_ordered": lambda c: c.inventory_restock_ordered("s", 10, "acme"),
    "shipment_created": lambda c: c.shipment_created("sh", "o", "DHL"),
    "shipment_shipped": lambda c: c.shipment_shipped("sh", "o", "T1", "DHL"),
    "shipment_delivered": lambda c: c.shipment_delivered("sh", "o"),
    "return_requested": lambda c: c.return_requested("r", "o", "c", [], "broken"),
    "return_approved": lambda c: c.return_approved("r", "o", 1, "broken"),
    "customer_created": lambda c: c.customer_created("c", "c@example.com"),
    "customer_tier_changed": lambda c: c.customer_tier_changed("c", "bronze", "silver"),
    "ai_recommendation": lambda c: c.ai_recommendation("upsell", {}, {}, 0.5, "m"),
    "anomaly_detected": lambda c: c.anomaly_detected("spike", "orders_per_min", 90),
    "automation_triggered": lambda c: c.automation_triggered("rule-1", "order.created"),
    "price_updated": lambda c: c.price_updated("p", 10, 12),
    "dynamic_price_adjusted": lambda c: c.dynamic_price_adjusted("p", 10, 12, {}, "m", 0.7),
}


def test_vocabulary_has_one_noun_verb_past_type_per_method() -> None:
    assert len(EcommerceEventType) == 20
    assert sorted(METHODS) == sorted(SAMPLE_CALLS)
    for member in EcommerceEventType:
        assert re.fullmatch(r"[a-z]+\.[a-z_]+ed", member.value), member.value
        assert callable(getattr(EcommerceClient, member.name.lower()))
        assert str(member) == member.value
    assert EcommerceEventType.DYNAMIC_PRICE_ADJUSTED.value == "price.dynamic_adjusted"
    assert EcommerceEventType.INVENTORY_RESTOCK_ORDERED.value == "inventory.restock_ordered"


@pytest.mark.parametrize("method", METHODS)
def test_each_method_returns_an_unrecorded_builder_and_takes_with_risk(
    method: str, shop: EcommerceClient
) -> None:
    builder = SAMPLE_CALLS[method](shop)
    assert isinstance(builder, TraceBuilder)
    assert builder.event_id is None
    assert shop.query(limit=None) == []  # nothing recorded until record()
    event = stored(shop, builder.with_risk("medium"))
    assert event.event_type == EcommerceEventType[method.upper()].value
    assert event.decision is not None and event.decision.risk_level is RiskLevel.MEDIUM
    assert len(shop.query(limit=None)) == 1


def test_each_method_has_typed_documented_explicit_parameters() -> None:
    import inspect

    for method in METHODS:
        function = getattr(EcommerceClient, method)
        assert function.__doc__ and len(function.__doc__) > 80, method
        parameters = list(inspect.signature(function).parameters.values())[1:]
        assert parameters, method
        kinds = {p.kind for p in parameters}
        assert inspect.Parameter.VAR_KEYWORD not in kinds, method
        assert all(p.annotation is not inspect.Parameter.empty for p in parameters), method


# --- money and currency --------------------------------------------------------------


@pytest.mark.parametrize(
    "amount", [Decimal("149.99"), 149.99, Decimal("0.10"), 0.1, Decimal("12345678.05"), 7]
)
def test_money_round_trips_exactly(amount: Any, shop: EcommerceClient) -> None:
    event = stored(shop, shop.order_created("ord-m", "cust-m", amount, []))
    total = obj(event, ObjectType.ORDER).state["total"]
    assert isinstance(total, float)
    expected = Decimal(repr(amount)) if isinstance(amount, float) else Decimal(amount)
    assert to_decimal(total) == expected
    assert Decimal(repr(total)) == expected


def test_money_a_float_cannot_hold_comes_back_as_exact_string(shop: EcommerceClient) -> None:
    precise = Decimal("0.1234567890123456789")
    event = stored(shop, shop.payment_captured("pay-x", "ord-x", precise, "crypto"))
    amount = obj(event, ObjectType.PAYMENT).state["amount"]
    assert amount == "0.1234567890123456789"
    assert to_decimal(amount) == precise


def test_item_prices_are_exact_and_sum_exactly(shop: EcommerceClient) -> None:
    items = [{"sku": f"S{i}", "qty": 1, "price": 0.1} for i in range(3)]
    event = stored(shop, shop.order_created("ord-s", "cust-s", Decimal("0.30"), items))
    state = obj(event, ObjectType.ORDER).state
    assert sum(to_decimal(i["price"]) for i in state["items"]) == to_decimal(state["total"])


def test_currency_default_client_and_call(make_shop: Callable[..., EcommerceClient]) -> None:
    assert DEFAULT_CURRENCY == "USD"
    usd = make_shop()
    assert usd.currency == "USD"
    eur = make_shop(currency="eur")
    assert eur.currency == "EUR"
    event = stored(eur, eur.payment_captured("p1", "o1", 10, "card"))
    assert obj(event, ObjectType.PAYMENT).state["currency"] == "EUR"
    event = stored(eur, eur.payment_captured("p2", "o2", 10, "card", currency="gbp"))
    assert obj(event, ObjectType.PAYMENT).state["currency"] == "GBP"
    assert "10.00 GBP" in event.description


def test_to_decimal() -> None:
    assert to_decimal(74.99) == Decimal("74.99")
    assert to_decimal(7) == Decimal(7)
    assert to_decimal("0.1234567890123456789") == Decimal("0.1234567890123456789")
    assert to_decimal(Decimal("1.50")) == Decimal("1.50")
    with pytest.raises(InvalidInputError):
        to_decimal("lots")
    with pytest.raises(InvalidInputError):
        to_decimal(True)


# --- bad input -----------------------------------------------------------------------


def field_of(call: Callable[[], object]) -> str:
    with pytest.raises(InvalidInputError) as caught:
        call()
    assert str(caught.value).startswith(caught.value.field + ":")
    return caught.value.field


def test_negative_quantities_are_rejected(shop: EcommerceClient) -> None:
    assert field_of(lambda: shop.inventory_adjusted("s", -1, 3, "x")) == "quantity_before"
    assert field_of(lambda: shop.inventory_adjusted("s", 1, -3, "x")) == "quantity_after"
    assert field_of(lambda: shop.inventory_low_stock("s", -2, 5)) == "current_quantity"
    assert field_of(lambda: shop.inventory_restock_ordered("s", 0, "acme")) == "quantity_ordered"
    assert field_of(lambda: shop.inventory_adjusted("s", 1.5, 3, "x")) == "quantity_before"  # type: ignore[arg-type]
    bad_items = [{"sku": "a", "qty": 1}, {"sku": "b", "qty": -2}]
    assert field_of(lambda: shop.order_created("o", "c", 1, bad_items)) == "items[1].qty"
    assert (
        field_of(lambda: shop.return_requested("r", "o", "c", [{"quantity": 0}], "x"))
        == "items[0].quantity"
    )


def test_refund_larger_than_order_total_is_rejected(shop: EcommerceClient) -> None:
    assert (
        field_of(lambda: shop.order_refunded("o", Decimal("90.01"), "x", order_total=90))
        == "refund_amount"
    )
    assert field_of(lambda: shop.order_cancelled("o", "x", refund_amount=5, order_total=4)) == (
        "refund_amount"
    )
    assert (
        field_of(lambda: shop.return_approved("r", "o", 100.0, "x", order_total=99.99))
        == "refund_amount"
    )
    # Equal is fine, and without a total there is nothing to compare.
    assert shop.order_refunded("o", 90, "x", order_total=Decimal("90.00")).event_id is None
    assert shop.order_refunded("o", 1_000_000, "x").event_id is None


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.order_created("", "c", 1, []), "order_id"),
        (lambda c: c.order_created("o", "  ", 1, []), "customer_id"),
        (lambda c: c.payment_failed("p", "", 1, "e"), "order_id"),
        (lambda c: c.payment_captured("", "o", 1, "card"), "payment_id"),
        (lambda c: c.inventory_adjusted("", 1, 2, "x"), "sku"),
        (lambda c: c.shipment_shipped("s", "o", "", "DHL"), "tracking_number"),
        (lambda c: c.return_requested("", "o", "c", [], "x"), "return_id"),
        (lambda c: c.customer_tier_changed("", "a", "b"), "customer_id"),
        (lambda c: c.price_updated("", 1, 2), "product_id"),
        (lambda c: c.automation_triggered("", "t"), "rule"),
        (lambda c: c.order_refunded("o", 1, "x", payment_id=""), "payment_id"),
        (lambda c: c.order_cancelled("o", ""), "reason"),
    ],
)
def test_empty_ids_are_rejected_naming_the_field(
    call: Callable[[EcommerceClient], object], field: str, shop: EcommerceClient
) -> None:
    assert field_of(lambda: call(shop)) == field


def test_other_bad_input_names_the_field(shop: EcommerceClient) -> None:
    assert field_of(lambda: shop.order_created("o", "c", -1, [])) == "total"
    assert field_of(lambda: shop.order_created("o", "c", float("nan"), [])) == "total"
    assert field_of(lambda: shop.order_created("o", "c", "12.00", [])) == "total"  # type: ignore[arg-type]
    assert field_of(lambda: shop.order_created("o", "c", 1, [{"price": -2}])) == "items[0].price"
    assert field_of(lambda: shop.order_created("o", "c", 1, "abc")) == "items"  # type: ignore[arg-type]
    assert field_of(lambda: shop.payment_captured("p", "o", 1, "card", currency="US")) == (
        "currency"
    )
    assert field_of(lambda: shop.price_updated("p", 1, -2)) == "new_price"
    assert field_of(lambda: shop.anomaly_detected("a", "m", 1, severity="huge")) == "severity"
    assert field_of(lambda: shop.ai_recommendation("t", {}, {}, 1.5, "m")) == "confidence"
    assert (
        field_of(lambda: shop.ai_recommendation("t", {}, {"recommendation": 1}, 0.5, "m"))
        == "context['recommendation']"
    )
    with pytest.raises(InvalidInputError) as caught:
        EcommerceClient(currency="dollars")
    assert caught.value.field == "currency"
    assert shop.query(limit=None) == []


# --- the spec's ecommerce snippets, verbatim -----------------------------------------


def spec_ecommerce_blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", SPEC.read_text(), flags=re.S)
    return [block for block in blocks if "EcommerceClient" in block]


def run_python(args: list[str], home: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DECISION_TRACE"))}
    env.pop("XDG_DATA_HOME", None)
    env["HOME"] = str(home)
    env.update(extra_env)
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=home, capture_output=True, text=True, timeout=120
    )


def test_spec_ecommerce_snippets_run_verbatim(tmp_path: Path) -> None:
    blocks = spec_ecommerce_blocks()
    assert len(blocks) == 1
    (block,) = blocks
    assert "client.ai_recommendation(" in block and '.with_risk("medium").record()' in block
    script = tmp_path / "quick_start.py"
    script.write_text(block)
    result = run_python([str(script)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "order.created: Order ord-12345 created" in result.stdout
    assert "Reason: Customer completed checkout after 3 items in cart" in result.stdout

    # The snippet wrote to the default ledger under $HOME; check what it stored.
    ledger = tmp_path / ".local" / "share" / "decision-trace" / "traces.db"
    with EcommerceClient(db_path=ledger) as reader:
        (order,) = reader.query(event_types=["order.created"])
        assert order.actor is not None and order.actor.name == "Jane Customer"
        state = obj(order, ObjectType.ORDER).state
        assert state["total"] == 149.99 and state["items"][0]["price"] == 74.99
        assert linked(order)[1] == ("customer", "cust-67890")
        (ai,) = reader.query(event_types=[EcommerceEventType.AI_RECOMMENDATION.value])
        assert ai.actor is not None and ai.actor.model == "demand-forecast-v2"
        assert ai.decision is not None and ai.decision.confidence == 0.92
        assert ai.decision.risk_level is RiskLevel.MEDIUM
        assert ai.decision.context["recommendation"] == {"sku": "WIDGET-001", "quantity": 100}


# --- the demo ------------------------------------------------------------------------


def test_demo_runs_twice_on_the_default_ledger(tmp_path: Path, ledger_target: str) -> None:
    ledger = ledger_target if is_url(ledger_target) else str(tmp_path / "demo" / "traces.db")
    outputs = []
    for _ in range(2):
        result = run_python([str(DEMO)], tmp_path, DECISION_TRACE_DB=ledger)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    first, second = outputs
    for text in outputs:
        assert f"Ledger: {ledger}" in text
        assert "Why was order ord-" in text and "refunded?" in text
        assert "manufacturing defect (cracked lid)" in text
        assert "What did the pricing AI decide today?" in text
        assert "rejected keep_price:" in text
        assert "card_declined: Insufficient funds" in text
        assert "inventory.restock_ordered  by Maria Lopez (ops-maria)" in text
        assert "Traceback" not in text
    assert "1 decision(s) since" in first and "2 decision(s) since" in second

    with EcommerceClient(db_path=ledger) as reader:
        events = reader.query(limit=None)
        types = {e.event_type for e in events}
        assert types >= {
            "customer.created",
            "order.created",
            "payment.failed",
            "payment.captured",
            "price.dynamic_adjusted",
            "inventory.low_stock_detected",
            "automation.triggered",
            "ai.recommendation_generated",
            "inventory.restock_ordered",
            "shipment.shipped",
            "return.approved",
            "order.refunded",
            "customer.tier_changed",
        }
        refunds = reader.query(event_types=["order.refunded"])
        assert len(refunds) == 2 and refunds[0].objects[0].external_id in second
        assert to_decimal(refunds[0].objects[0].state["refund_amount"]) == Decimal("89.00")
        # The low-stock chain: alert -> automation -> AI recommendation -> human approval.
        (alert, _) = reader.query(event_types=["inventory.low_stock_detected"])
        chain = [e.event_type for _, e in reader.get_chain(alert.id).walk()]
        assert chain == [
            "inventory.low_stock_detected",
            "automation.triggered",
            "ai.recommendation_generated",
            "inventory.restock_ordered",
        ]
        (_, _, recommendation, approval) = [e for _, e in reader.get_chain(alert.id).walk()]
        assert recommendation.actor is not None
        assert recommendation.actor.type is ActorType.AI_AGENT
        assert approval.actor is not None and approval.actor.type is ActorType.USER
    if is_url(ledger):
        with closing(open_ledger(ledger, create=False, read_only=True)) as stored_ledger:
            assert stored_ledger.check() == []
    else:
        assert sqlite3.connect(ledger).execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_readme_table_lists_every_method_and_event_type() -> None:
    text = ECOMMERCE_DOC.read_text()
    section = text.split("## Ecommerce events", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)\(\)` \| `([a-z_.]+)` \|", section, flags=re.M)
    assert {method: event_type for method, event_type in rows} == {
        member.name.lower(): member.value for member in EcommerceEventType
    }


def test_readme_ecommerce_example_runs(tmp_path: Path) -> None:
    section = ECOMMERCE_DOC.read_text().split("## Ecommerce events", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    script = tmp_path / "readme_ecommerce.py"
    script.write_text(block)
    result = run_python([str(script)], tmp_path, DECISION_TRACE_DB=str(tmp_path / "r.db"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Lid arrived cracked"


def _unstamped(text: str) -> str:
    """``why`` output without what changes on every run: the time and the event id."""
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", "<time>", text)
    return re.sub(r"(?m)^(  event +)[0-9a-f]{16}$", r"\1<id>", text)


def test_readme_why_output_is_what_the_cli_prints(tmp_path: Path) -> None:
    """The refund example of docs/ecommerce.md, then the `decision-trace why` it shows."""
    section = ECOMMERCE_DOC.read_text().split("## Ecommerce events", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    (shown,) = re.findall(r"```text\n\$ decision-trace why (\S+)\n(.*?)```", section, flags=re.S)
    target, expected = shown
    db = tmp_path / "r.db"
    script = tmp_path / "readme_ecommerce.py"
    script.write_text(block)
    recorded = run_python([str(script)], tmp_path, DECISION_TRACE_DB=str(db))
    assert recorded.returncode == 0, recorded.stderr
    result = run_python(
        ["-m", "decision_trace", "--db", str(db), "why", target],
        tmp_path,
        PYTHONIOENCODING="utf-8",
        NO_COLOR="1",
    )
    assert result.returncode == 0, result.stderr
    assert "changed    status: paid → partially_refunded" in result.stdout
    assert _unstamped(result.stdout) == _unstamped(expected), (
        "docs/ecommerce.md: the `decision-trace why` block differs from the real output; "
        "paste this:\n" + result.stdout
    )


def test_ai_and_anomaly_link_ready_made_objects(shop: EcommerceClient) -> None:
    sku = TrackedObject(
        ObjectType.INVENTORY, "SKU-1", state_before={"quantity": 9}, state_after={"quantity": 4}
    )
    anomaly = stored(
        shop,
        shop.anomaly_detected("shrinkage", "stock_count_gap", affected_objects=[sku]),
    )
    assert anomaly.objects == (sku,)
    assert anomaly.description == "Medium anomaly shrinkage: stock_count_gap"
    recommendation = stored(
        shop,
        shop.ai_recommendation(
            "recount", {"sku": "SKU-1"}, {"gap": 5}, 0.7, "m", affected_objects=[sku]
        ),
    )
    assert recommendation.objects == (sku,)
    assert (
        field_of(lambda: shop.anomaly_detected("a", "m", affected_objects=["SKU-1"]))  # type: ignore[list-item]
        == "affected_objects[0]"
    )


def test_common_arguments_can_be_passed_positionally(shop: EcommerceClient) -> None:
    arrival = date(2026, 12, 3)
    restock = stored(
        shop, shop.inventory_restock_ordered("SKU-1", 10, "acme", arrival, Decimal("99.50"))
    )
    assert restock.objects[0].state == {
        "quantity_ordered": 10,
        "expected_arrival": "2026-12-03",
        "cost": 99.5,
        "currency": "USD",
    }
    refund = stored(shop, shop.order_refunded("ord-1", 5, "late", "pay-1"))
    assert linked(refund) == [("order", "ord-1"), ("payment", "pay-1")]
    customer = stored(shop, shop.customer_created("cust-1", "a@example.com", "newsletter"))
    assert customer.objects[0].state["source"] == "newsletter"
    cancelled = stored(shop, shop.order_cancelled("ord-2", "fraud check failed", 12))
    assert cancelled.objects[0].state["refund_amount"] == 12.0


def test_demo_uses_the_default_ledger_without_configuration(tmp_path: Path) -> None:
    result = run_python([str(DEMO)], tmp_path)
    assert result.returncode == 0, result.stderr
    ledger = tmp_path / ".local" / "share" / "decision-trace" / "traces.db"
    assert f"Ledger: {ledger}" in result.stdout
    with EcommerceClient(db_path=ledger) as reader:
        assert len(reader.query(event_types=["order.refunded"])) == 1
        assert reader.search("cracked lid")
