"""The core concepts of decision-trace in one short story.

A support agent refunds an order, an AI agent proposes a price change, a nightly job
syncs inventory inside a timed span, and a workflow records its steps as children.
Then we ask the ledger who did what, and why.

Run it with ``python examples/basic_usage.py``. It writes to a temporary database unless
``DECISION_TRACE_DB`` names one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from decision_trace import ActorType, DecisionTraceClient, ObjectType


def main() -> None:
    db_path = os.environ.get("DECISION_TRACE_DB") or str(
        Path(tempfile.mkdtemp(prefix="decision-trace-")) / "basic.db"
    )
    with DecisionTraceClient(db_path=db_path, service_name="basic-usage") as client:
        # 1. A human decision, with the reasoning and the options that were rejected.
        refund_id = (
            client.trace("order.refunded", "Refunded order ord-123 in full")
            .by_user("agent-7", "Sam Support", email="sam@example.com", role="support")
            .affecting_order("ord-123", {"status": "refunded", "refund_amount": 99.99})
            .affecting_customer("cust-456")
            .because(
                "Refund approved due to product defect",
                context={"defect_type": "manufacturing", "customer_tier": "gold"},
                alternatives=[
                    {"action": "replace", "reason": "offer replacement instead"},
                    {"action": "partial_refund", "reason": "50% refund option"},
                ],
                rejection_reasons={
                    "replace": "Customer requested full refund",
                    "partial_refund": "Clear manufacturer defect",
                },
            )
            .with_tags("refund", "defect")
            .record()
        )

        # 2. An AI agent's decision, with its confidence and the risk it carries.
        client.trace("price.updated", "Raised WIDGET-001 price by 5%").by_ai_agent(
            "pricing-ai", "Dynamic Pricing", model="gpt-4", version="2.1"
        ).affecting_product(
            "WIDGET-001", state_before={"price": 74.99}, state_after={"price": 78.74}
        ).because(
            "Competitor prices rose 8% and stock is low; a price increase protects margin",
            context={"competitor_avg": 81.0, "stock": 15},
        ).with_confidence(0.87).with_risk("medium").record()

        # 3. A job whose duration is measured; the stock change is linked to the SKU.
        with client.span("inventory.sync", "Nightly inventory sync") as sync:
            sync.by_compute("cron-inventory", "Inventory Sync", service_name="warehouse-api")
            sync.affecting_inventory("SKU-789", quantity_before=100, quantity_after=101)
            client.trace("inventory.adjusted", "Found one unit during the count").by_compute(
                "cron-inventory"
            ).affecting_inventory("SKU-789", quantity_before=100, quantity_after=101).record()

        # 4. A workflow and its steps.
        workflow_id = (
            client.trace("workflow.started", "Order fulfillment started")
            .by_system("fulfillment-engine")
            .affecting_order("ord-123")
            .record()
        )
        client.trace("workflow.step", "Payment captured").by_system("fulfillment-engine").child_of(
            workflow_id
        ).record()
        client.trace("workflow.step", "Label printed").by_system("fulfillment-engine").child_of(
            workflow_id
        ).failed("printer offline").record()

        # Now ask the ledger.
        refund = client.get_event(refund_id)
        assert refund is not None and refund.decision is not None and refund.actor is not None
        print(f"Why was ord-123 refunded?  {refund.decision.reasoning}")
        print(f"  by {refund.actor.name} ({refund.actor.type}, role {refund.actor.role})")
        for alternative in refund.decision.alternatives:
            action = alternative["action"]
            print(f"  rejected {action}: {refund.decision.rejection_reasons.get(action)}")

        print("\nAI decisions:")
        for event in client.query(actor_types=[ActorType.AI_AGENT]):
            confidence = event.decision.confidence if event.decision else None
            print(f"  {event.event_type}: {event.description} (confidence {confidence})")

        print("\nHistory of SKU-789:")
        for event in client.get_object_history("SKU-789", ObjectType.INVENTORY):
            change = event.objects_of(ObjectType.INVENTORY)[0]
            before = (change.state_before or {}).get("quantity")
            after = (change.state_after or {}).get("quantity")
            print(f"  {event.timestamp:%H:%M:%S} {event.event_type}: {before} -> {after}")

        print("\nWorkflow chain:")
        for depth, event in client.get_chain(workflow_id).walk():
            print(f"  {'  ' * depth}{event.event_type}: {event.description} [{event.outcome}]")

        print("\nSearch 'margin':", [e.event_type for e in client.search("margin")])
        print(f"\nLedger: {client.db_path}")


if __name__ == "__main__":
    main()
