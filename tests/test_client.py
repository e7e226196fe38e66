"""Client lifecycle: durability modes, flush, close, context manager, exit paths, on
every backend."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from decision_trace import DecisionTraceClient, InvalidInputError
from decision_trace.storage import EventFilters, open_ledger

pytestmark = pytest.mark.usefixtures("ledger_target")


def count_rows(ledger_target: str) -> int:
    """How many events a separate reader (its own connection) finds committed."""
    ledger = open_ledger(ledger_target, create=False, read_only=True)
    try:
        return ledger.count(EventFilters.build())
    finally:
        ledger.close()


def test_sync_record_is_committed_when_it_returns(
    make_client: Callable[..., DecisionTraceClient], ledger_target: str
) -> None:
    client = make_client(durability="sync")
    client.trace("t").record()
    assert count_rows(ledger_target) == 1


def test_batch_flush_and_stats(
    make_client: Callable[..., DecisionTraceClient], ledger_target: str
) -> None:
    client = make_client(durability="batch")
    for _ in range(100):
        client.trace("t").record()
    assert client.flush() is True
    assert count_rows(ledger_target) == 100
    stats = client.stats()
    assert (stats.recorded, stats.written, stats.failed, stats.queued) == (100, 100, 0, 0)


def test_close_is_idempotent_and_context_manager_flushes(ledger_target: str) -> None:
    with DecisionTraceClient(db_path=ledger_target) as client:
        for _ in range(10):
            client.trace("t").record()
    client.close()
    client.close()
    assert count_rows(ledger_target) == 10


def test_unknown_durability_is_rejected(ledger_target: str) -> None:
    with pytest.raises(InvalidInputError, match="durability"):
        DecisionTraceClient(db_path=ledger_target, durability="eventually")  # type: ignore[arg-type]


def test_interpreter_exit_flushes_batch_mode(ledger_target: str) -> None:
    script = (
        "from decision_trace import DecisionTraceClient\n"
        f"client = DecisionTraceClient(db_path={ledger_target!r})\n"
        "for i in range(500):\n"
        "    client.trace('t', str(i)).record()\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert count_rows(ledger_target) == 500


def test_span_limits_of_the_app_do_not_truncate(
    make_client: Callable[..., DecisionTraceClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "10")
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "3")
    client = make_client()
    reasoning = "a long explanation " * 50
    event_id = (
        client.trace("t", "description longer than ten characters")
        .by_user("u1", "A Name", email="a@example.com", role="support")
        .because(reasoning, context={"k": "v" * 100})
        .with_tags("first-tag", "second-tag")
        .record()
    )
    event = client.get_event(event_id)
    assert event is not None and event.decision is not None and event.actor is not None
    assert event.decision.reasoning == reasoning
    assert event.decision.context == {"k": "v" * 100}
    assert event.description == "description longer than ten characters"
    assert event.actor.email == "a@example.com"
    assert event.tags == ("first-tag", "second-tag")


def test_service_name_is_on_the_resource(
    make_client: Callable[..., DecisionTraceClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    named = make_client(service_name="checkout")
    event = named.get_event(named.trace("t").record())
    assert event is not None and event.service_name == "checkout"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    env_named = make_client()
    event = env_named.get_event(env_named.trace("t").record())
    assert event is not None and event.service_name == "from-env"
