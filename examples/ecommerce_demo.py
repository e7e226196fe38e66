"""A day in a small online coffee-gear shop, recorded with EcommerceClient, then queried.

Run it with ``make demo`` (or ``python examples/ecommerce_demo.py``). Events go to the
default SQLite ledger: ``$DECISION_TRACE_DB``, else ``$XDG_DATA_HOME/decision-trace/
traces.db``, else ``~/.local/share/decision-trace/traces.db``. Every run uses fresh
order, payment and shipment numbers, so running it again adds a second day to the same
ledger and the support queries below still answer about this run.

The day:

1. a new customer checks out; the card is declined, the PayPal retry goes through;
2. the pricing AI raises the price of a coffee, with the alternatives it rejected;
3. the grinder runs low: the stock monitor raises an alert, an automation rule asks the
   restock AI for a recommendation, and an operations manager approves it;
4. the order ships and is delivered;
5. last week's kettle comes back cracked: return, approval, refund;
6. the new customer's spend moves them up a loyalty tier.

Then a support agent asks "why was the order refunded?", "what did the pricing AI
decide today?", "why did checkout take two payments?" and "what happened after the
low-stock alert?".
"""

from __future__ import annotations

import secrets
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

from decision_trace import ObjectType, TraceEvent
from decision_trace.ecommerce import EcommerceClient, EcommerceEventType, to_decimal

PRICING_AI = "pricing-ai"
RESTOCK_AI = "restock-ai"


def record_day(client: EcommerceClient, run: str) -> dict[str, str]:
    """Record the shop's day; return the ids the support queries ask about."""
    ids = {
        "customer": f"cust-{run}",
        "order": f"ord-{run}-1",
        "old_order": f"ord-{run}-0",
        "old_payment": f"pay-{run}-0",
        "return": f"ret-{run}",
        "shipment": f"shp-{run}",
        "recommendation": f"rec-{run}",
        "purchase_order": f"po-{run}",
    }
    customer, order = ids["customer"], ids["order"]
    total = Decimal("154.97")

    # 1. Checkout: a new customer, an order, a declined card, a PayPal retry.
    client.customer_created(
        customer, "ana@example.com", name="Ana Silva", source="web", tier="bronze"
    ).by_system("storefront", "Web storefront").record()
    order_event = (
        client.order_created(
            order_id=order,
            customer_id=customer,
            total=total,
            items=[
                {"sku": "GRINDER-C40", "qty": 1, "price": Decimal("129.99")},
                {"sku": "BEANS-ETH-1KG", "qty": 1, "price": Decimal("24.98")},
            ],
            details={"channel": "web", "coupon": None},
        )
        .by_user(customer, "Ana Silva", role="customer")
        .because(
            "Customer completed checkout",
            context={"session_duration": "7m 05s", "cart_items": 2},
        )
        .record()
    )
    client.payment_failed(
        f"pay-{run}-1",
        order,
        total,
        "card_declined",
        "Insufficient funds",
        payment_method="card",
        processor="stripe",
    ).child_of(order_event).record()
    client.payment_captured(f"pay-{run}-2", order, total, "paypal", processor="paypal").child_of(
        order_event
    ).because("Customer retried with PayPal after the card was declined").record()

    # 2. The pricing AI raises a price, and says what it rejected.
    client.dynamic_price_adjusted(
        "BEANS-ETH-1KG",
        old_price=Decimal("24.98"),
        new_price=Decimal("27.49"),
        factors={"demand_index": 1.35, "competitor_min_price": 28.90, "stock_days_left": 4},
        model="gpt-4o-mini",
        confidence=0.81,
        agent_id=PRICING_AI,
        agent_name="Dynamic Pricing",
        reasoning=(
            "Demand is up 35% this week and the cheapest competitor sells at 28.90, "
            "so a 10% increase keeps us cheapest while protecting margin"
        ),
        alternatives=[
            {"action": "keep_price", "price": 24.98},
            {"action": "raise_to_29.99", "price": 29.99},
            {"action": "bundle_discount"},
        ],
        rejection_reasons={
            "keep_price": "Leaves margin on the table while stock runs out in 4 days",
            "raise_to_29.99": "Above the cheapest competitor; forecast loses 22% of sales",
            "bundle_discount": "No grinder stock to bundle with",
        },
    ).with_risk("low").record()

    # 3. Low stock -> automation -> AI recommendation -> human approval.
    client.inventory_adjusted(
        "GRINDER-C40", 4, 3, f"Reserved for order {order}", location="main-warehouse"
    ).by_system("order-service", "Order service").child_of(order_event).record()
    alert = (
        client.inventory_low_stock(
            "GRINDER-C40", 3, 5, recommended_action="restock", location="main-warehouse"
        )
        .by_compute("stock-watch", "Stock Watch", service_name="warehouse-api")
        .record()
    )
    automation = (
        client.automation_triggered(
            "low-stock-restock-review",
            trigger=f"{EcommerceEventType.INVENTORY_LOW_STOCK.value} {alert}",
            actions=["request_ai_restock_recommendation", "notify_operations"],
            context={"sku": "GRINDER-C40"},
            engine="automation-engine",
        )
        .child_of(alert)
        .record()
    )
    recommendation = (
        client.ai_recommendation(
            recommendation_type="inventory_restock",
            recommendation={"sku": "GRINDER-C40", "quantity": 24, "supplier": "comandante"},
            context={"current_stock": 3, "avg_daily_sales": 1.6, "lead_time_days": 7},
            confidence=0.88,
            model="demand-forecast-v2",
            agent_id=RESTOCK_AI,
            agent_name="Restock Planner",
            recommendation_id=ids["recommendation"],
            reasoning="At 1.6 sales a day and a 7-day lead time, stock runs out in 2 days; "
            "24 units cover the next 15 days",
            alternatives=[{"action": "order_12"}, {"action": "order_48"}],
            rejection_reasons={
                "order_12": "Runs out again before the next delivery",
                "order_48": "Ties up 4,300 USD of cash for a month of stock",
            },
        )
        .affecting_inventory("GRINDER-C40", state={"quantity": 3})
        .with_risk("medium")
        .child_of(automation)
        .record()
    )
    client.inventory_restock_ordered(
        "GRINDER-C40",
        24,
        "comandante",
        purchase_order_id=ids["purchase_order"],
        expected_arrival=date.today() + timedelta(days=7),
        cost=Decimal("2159.76"),
    ).by_user("ops-maria", "Maria Lopez", role="operations").affecting(
        ObjectType.RECOMMENDATION, ids["recommendation"], {"status": "approved"}
    ).because(
        "Approved the restock AI's recommendation: quantity and supplier match our plan"
    ).child_of(recommendation).record()

    # 4. Fulfilment.
    shipment = ids["shipment"]
    client.shipment_created(shipment, order, "DHL", warehouse="main-warehouse").by_system(
        "fulfillment-engine", "Fulfilment engine"
    ).child_of(order_event).record()
    client.shipment_shipped(
        shipment,
        order,
        tracking_number=f"JD0146{run.upper()}",
        carrier="DHL",
        estimated_delivery=date.today() + timedelta(days=1),
    ).by_user("packer-joe", "Joe", role="warehouse").child_of(order_event).record()
    client.shipment_delivered(shipment, order, signature="A. Silva").by_external(
        "dhl", "DHL", service_name="api.dhl.com"
    ).child_of(order_event).record()

    # 5. Last week's kettle came back cracked: return, approval, refund.
    old_order, other_customer = ids["old_order"], f"cust-{run}-0"
    requested = (
        client.return_requested(
            ids["return"],
            old_order,
            other_customer,
            items=[{"sku": "KETTLE-GOOSE", "qty": 1, "price": Decimal("89.00")}],
            reason="Kettle arrived with a cracked lid",
        )
        .by_user(other_customer, "Ben Okafor", role="customer")
        .record()
    )
    approved = (
        client.return_approved(
            ids["return"],
            old_order,
            refund_amount=Decimal("89.00"),
            approval_reason="Photos show a manufacturing crack in the lid",
            customer_id=other_customer,
            order_total=Decimal("89.00"),
        )
        .by_user("agent-sam", "Sam Patel", role="support")
        .because(
            "Refund approved due to product defect",
            context={"defect_type": "manufacturing", "customer_tier": "silver"},
            alternatives=[
                {"action": "replace", "reason": "offer replacement instead"},
                {"action": "partial_refund", "reason": "50% refund option"},
            ],
            rejection_reasons={
                "replace": "Customer requested full refund",
                "partial_refund": "Clear manufacturer defect",
            },
        )
        .child_of(requested)
        .record()
    )
    client.order_refunded(
        old_order,
        Decimal("89.00"),
        "Return approved for a manufacturing defect (cracked lid); customer asked for "
        "their money back rather than a replacement",
        payment_id=ids["old_payment"],
        customer_id=other_customer,
        order_total=Decimal("89.00"),
        previous_status="delivered",
    ).by_user("agent-sam", "Sam Patel", role="support").child_of(approved).record()

    # 6. Loyalty.
    client.customer_tier_changed(
        customer, "bronze", "silver", f"Spend passed 150.00 USD with order {order}"
    ).by_system("loyalty-engine", "Loyalty engine").record()
    return ids


def money(value: object, currency: object) -> str:
    """An amount read back from the ledger, as exact text."""
    if isinstance(value, (int, float, str, Decimal)):
        return f"{to_decimal(value):,.2f} {currency}"
    return "?"


def who(event: TraceEvent) -> str:
    actor = event.actor
    if actor is None:
        return "unknown"
    label = f"{actor.name} ({actor.id})" if actor.name else actor.id
    extra = actor.role or actor.model
    return f"{label}, {actor.type.value}" + (f", {extra}" if extra else "")


def at(event: TraceEvent) -> str:
    return event.timestamp.strftime("%H:%M:%S")


def heading(question: str) -> None:
    print()
    print(question)
    print("-" * len(question))


def support_queries(client: EcommerceClient, ids: dict[str, str], day_start: datetime) -> None:
    """What a support agent asks the ledger afterwards."""
    old_order = ids["old_order"]
    heading(f'Q1. "Why was order {old_order} refunded?"')
    for refund in client.query(
        event_types=[EcommerceEventType.ORDER_REFUNDED.value], object_ids=[old_order]
    ):
        (state,) = [o.state for o in refund.objects_of(ObjectType.ORDER)]
        print(f"  {at(refund)}  {refund.description}")
        print(f"  amount:  {money(state.get('refund_amount'), state.get('currency'))}")
        print(f"  by:      {who(refund)}")
        if refund.decision:
            print(f"  why:     {refund.decision.reasoning}")
        chain = client.get_chain(refund.id)
        print("  how it came about:")
        for depth, event in chain.walk():
            print(f"    {'  ' * depth}{at(event)}  {event.event_type:<18} {event.description}")
            if event.decision and event.event_type != EcommerceEventType.ORDER_REFUNDED:
                print(f"    {'  ' * depth}          why: {event.decision.reasoning}")
                for action, reason in event.decision.rejection_reasons.items():
                    print(f"    {'  ' * depth}          rejected {action}: {reason}")

    heading('Q2. "What did the pricing AI decide today?"')
    decisions = client.query(actor_ids=[PRICING_AI], start=day_start, limit=5)
    print(f"  {len(decisions)} decision(s) since {day_start:%Y-%m-%d %H:%M} UTC (latest first)")
    for event in decisions:
        decision = event.decision
        print(f"  {at(event)}  {event.description}")
        print(f"    by {who(event)}")
        if decision is None:
            continue
        risk = decision.risk_level.value if decision.risk_level else "n/a"
        print(f"    confidence {decision.confidence}, risk {risk}")
        print(f"    why: {decision.reasoning}")
        print(f"    based on: {dict(decision.context)}")
        for action, reason in decision.rejection_reasons.items():
            print(f"    rejected {action}: {reason}")

    order = ids["order"]
    heading(f'Q3. "Why did checkout of order {order} take two payments?"')
    payments = client.query(
        event_types=[
            EcommerceEventType.PAYMENT_FAILED.value,
            EcommerceEventType.PAYMENT_CAPTURED.value,
        ],
        object_ids=[order],
        order="asc",
    )
    for event in payments:
        (payment,) = event.objects_of(ObjectType.PAYMENT)
        state = payment.state
        line = f"  {at(event)}  {payment.external_id}: {state.get('status')}"
        line += f" {money(state.get('amount'), state.get('currency'))} via {state.get('method')}"
        print(line + f" ({event.outcome.value})")
        if event.error:
            print(f"           error: {event.error}")
        if event.decision:
            print(f"           why: {event.decision.reasoning}")

    heading('Q4. "What happened after the low-stock alert on GRINDER-C40?"')
    (alert,) = client.query(
        event_types=[EcommerceEventType.INVENTORY_LOW_STOCK.value],
        object_ids=["GRINDER-C40"],
        start=day_start,
        limit=1,
    )
    for depth, event in client.get_chain(alert.id).walk():
        indent = "  " * depth
        print(f"  {indent}{at(event)}  {event.event_type}  by {who(event)}")
        print(f"  {indent}    {event.description}")
        if event.decision:
            confidence = event.decision.confidence
            suffix = f" (confidence {confidence})" if confidence is not None else ""
            print(f"  {indent}    why: {event.decision.reasoning}{suffix}")

    heading(f"Order {order}, oldest first")
    for event in client.get_object_history(order, ObjectType.ORDER):
        print(f"  {at(event)}  {event.event_type:<19} {event.description}  [{who(event)}]")


def main() -> None:
    run = secrets.token_hex(3)
    day_start = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    with EcommerceClient(service_name="corner-coffee-shop") as client:
        print("A day at Corner Coffee (decision-trace ecommerce demo)")
        print(f"Ledger: {client.db_path}")
        ids = record_day(client, run)
        client.flush()
        print(f"Recorded {client.stats().written} events of the day (run {run}),")
        print("replayed in a second, so their times are close together.")
        support_queries(client, ids, day_start)
        print()
        print("Explore further: client.query(...), client.search('cracked lid'),")
        print(f"client.get_object_history({ids['order']!r}).")


if __name__ == "__main__":
    main()
