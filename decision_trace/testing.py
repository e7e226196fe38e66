"""Helpers for testing code that records decisions, like the SDK's ``InMemorySpanExporter``.

Use :class:`LedgerForTests` to give the code under test a real client on a throw-away
SQLite file and to assert on what it recorded::

    from decision_trace.testing import LedgerForTests

    def test_refund_is_explained():
        with LedgerForTests() as ledger:
            refund_order(ledger.client, "ord-1")          # your code
            (event,) = ledger.events("order.refunded")
            assert event.decision.reasoning.startswith("Refund approved")
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from .client import DecisionTraceClient
from .models import TraceEvent

__all__ = ["LedgerForTests"]


class LedgerForTests:
    """A synchronous client on a temporary database, removed on exit.

    Args:
        service_name: ``service.name`` for the recorded spans.
    """

    def __init__(self, service_name: str = "tests") -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="decision-trace-test-"))
        self.client = DecisionTraceClient(
            db_path=self._folder / "traces.db", durability="sync", service_name=service_name
        )

    def events(self, *event_types: str) -> list[TraceEvent]:
        """Every recorded event, oldest first; only the given types if any are named."""
        return self.client.query(
            event_types=list(event_types) if event_types else None, limit=None, order="asc"
        )

    def close(self) -> None:
        """Close the client and delete the database. Idempotent."""
        self.client.close()
        shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> LedgerForTests:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
