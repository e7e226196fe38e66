"""decision_trace.testing: the helper users test their own instrumentation with."""

from __future__ import annotations

from decision_trace.testing import LedgerForTests


def test_ledger_for_tests_records_filters_and_cleans_up() -> None:
    with LedgerForTests() as ledger:
        ledger.client.trace("order.refunded", "r").because("Refund approved: defect").record()
        ledger.client.trace("order.created", "c").record()
        (refund,) = ledger.events("order.refunded")
        assert refund.decision is not None
        assert refund.decision.reasoning == "Refund approved: defect"
        assert [e.event_type for e in ledger.events()] == ["order.refunded", "order.created"]
        path = ledger.client.db_path
    import os

    assert not os.path.exists(path)
