"""The backends every contract test runs against, and the events they are given.

A backend joins the contract by adding a parameter to the ``ledger`` fixture that opens
an empty ledger of its kind.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from contract_support import BASE, Recorded
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from decision_trace import DecisionTraceClient
from decision_trace.attributes import record_from_span
from decision_trace.storage import Ledger, open_ledger


@pytest.fixture(params=["sqlite"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """An empty ledger of each backend."""
    opened = open_ledger(tmp_path / "contract.db")
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """A small shop's events: a chain, several actors, objects, tags and outcomes."""
    spans = InMemorySpanExporter()
    client = DecisionTraceClient(
        db_path=tmp_path_factory.mktemp("source") / "source.db",
        durability="sync",
        service_name="contract",
        exporters=[spans],
    )
    ids: dict[str, str] = {}
    ids["created"] = (
        client.trace("order.created", "Order placed")
        .by_user("cust-1", "Ann", email="ann@example.com")
        .affecting_order("ord-1", {"status": "new", "total": "89.00"})
        .affecting_customer("cust-1")
        .with_tags("web", "eu")
        .at(BASE)
        .record()
    )
    ids["fraud"] = (
        client.trace("fraud.checked", "Fraud screening passed")
        .by_ai_agent("fraud-bot", "Fraud Bot", model="gpt-x")
        .affecting_order("ord-1")
        .because(
            "Velocity and address checks are clean",
            context={"score": 0.02},
            alternatives=[{"option": "hold for review"}],
            rejection_reasons={"hold for review": "score far below threshold"},
        )
        .with_confidence(0.97)
        .child_of(ids["created"])
        .at(BASE + timedelta(minutes=1))
        .record()
    )
    ids["refund"] = (
        client.trace("order.refunded", "Refund issued")
        .by_user("agent-7", "Sam", role="support")
        .affecting_order(
            "ord-1", state_before={"status": "paid"}, state_after={"status": "refunded"}
        )
        .because("Parcel arrived crushed; photos attached")
        .with_tags("support")
        .child_of(ids["created"])
        .at(BASE + timedelta(days=2))
        .record()
    )
    ids["restock"] = (
        client.trace("inventory.adjusted", "Nightly restock")
        .by_compute("restock-job", "Restock")
        .affecting_product("sku-9", state_before={"stock": 4}, state_after={"stock": 40})
        .failed("supplier feed timed out")
        .at(BASE + timedelta(days=3))
        .record()
    )
    ids["other_trace"] = (
        client.trace("price.changed", "Summer pricing")
        .by_system("pricing")
        .affecting_product("sku-9", {"price": "19.99"})
        .with_tags("eu")
        .at(BASE + timedelta(days=40))
        .record()
    )
    client.flush()
    client.close()
    records = [record_from_span(span) for span in spans.get_finished_spans()]
    assert sorted(r.id for r in records) == sorted(ids.values())
    return Recorded(records=records, ids=ids)


@pytest.fixture
def filled(ledger: Ledger, recorded: Recorded) -> Ledger:
    """The ledger holding the recorded events."""
    assert ledger.write(recorded.records) == len(recorded.records)
    return ledger
