"""The read side: filters, search, chains and object history."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from decision_trace import ActorType, DecisionTraceClient, InvalidInputError, ObjectType


@pytest.fixture
def shop(make_client: Callable[..., DecisionTraceClient]) -> DecisionTraceClient:
    """A small ledger with a known shape."""
    client = make_client()
    client.trace("order.created", "Order placed").at(datetime(2024, 1, 5)).by_user(
        "cust-1", "Ann"
    ).affecting_order("ord-1").affecting_customer("cust-1").with_tags("web").record()
    client.trace("price.updated", "Raised price").at(datetime(2024, 1, 10)).by_ai_agent(
        "pricing-ai"
    ).affecting_product("SKU-1", state_before={"price": 10}, state_after={"price": 11}).because(
        "Competitor price increase protects our margin", context={"competitor": "acme"}
    ).record()
    client.trace("order.cancelled", "Order cancelled").at(datetime(2024, 2, 1)).by_user(
        "cust-1"
    ).affecting_order("ord-1").failed("already shipped").with_tags("web", "urgent").record()
    client.trace("inventory.adjusted", "Recount").at(datetime(2024, 2, 3)).by_compute(
        "cron"
    ).affecting_inventory("SKU-1", quantity_before=5, quantity_after=4).record()
    return client


def types(events: list) -> list[str]:  # type: ignore[type-arg]
    return [e.event_type for e in events]


def test_time_range_is_start_inclusive_end_exclusive(shop: DecisionTraceClient) -> None:
    january = shop.query(start=datetime(2024, 1, 1), end=datetime(2024, 2, 1))
    assert types(january) == ["price.updated", "order.created"]
    aware = shop.query(start=datetime(2024, 2, 1, tzinfo=timezone.utc), order="asc")
    assert types(aware) == ["order.cancelled", "inventory.adjusted"]


def test_filters_combine(shop: DecisionTraceClient) -> None:
    assert types(shop.query(event_types=["order.created"])) == ["order.created"]
    assert types(shop.query(event_types="order.created")) == ["order.created"]
    assert types(shop.query(actor_types=[ActorType.AI_AGENT])) == ["price.updated"]
    assert types(shop.query(actor_ids=["cust-1"], order="asc")) == [
        "order.created",
        "order.cancelled",
    ]
    orders = shop.query(object_types=[ObjectType.ORDER], object_ids=["ord-1"], order="asc")
    assert types(orders) == ["order.created", "order.cancelled"]
    assert types(shop.query(object_ids=["SKU-1"], order="asc")) == [
        "price.updated",
        "inventory.adjusted",
    ]
    assert shop.query(object_types=[ObjectType.ORDER], object_ids=["SKU-1"]) == []
    assert types(shop.query(tags=["urgent"])) == ["order.cancelled"]
    assert types(shop.query(outcome="FAILURE")) == ["order.cancelled"]
    assert shop.query(event_types=[]) == []


def test_limit_offset_order(shop: DecisionTraceClient) -> None:
    newest = shop.query(limit=2)
    assert types(newest) == ["inventory.adjusted", "order.cancelled"]
    assert types(shop.query(limit=2, offset=2)) == ["price.updated", "order.created"]
    assert types(shop.query(order="asc", limit=1)) == ["order.created"]
    assert len(shop.query(limit=None)) == 4
    with pytest.raises(InvalidInputError, match="limit"):
        shop.query(limit=-1)
    with pytest.raises(InvalidInputError, match="order"):
        shop.query(order="sideways")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="actor_types"):
        shop.query(actor_types=["robot"])


def test_correlation_id_filter(shop: DecisionTraceClient) -> None:
    target = shop.query(limit=1)[0]
    assert [e.id for e in shop.query(correlation_id=target.correlation_id.upper())] == [target.id]


def test_search_full_text_over_reasoning_description_and_context(
    shop: DecisionTraceClient,
) -> None:
    assert types(shop.search("price increase margin")) == ["price.updated"]
    assert types(shop.search("cancelled")) == ["order.cancelled"]
    assert types(shop.search("acme")) == ["price.updated"]
    assert shop.search("nothing like this") == []


@pytest.mark.parametrize(
    "text",
    [
        '"unbalanced',
        "AND OR",
        "NEAR(",
        "*",
        "-margin",
        "col:umn",
        "a\x00b",
        "\ud800",
        "   ",
        "(price)",
    ],
)
def test_search_never_raises_on_syntax(shop: DecisionTraceClient, text: str) -> None:
    assert isinstance(shop.search(text), list)


def test_object_history_oldest_first(shop: DecisionTraceClient) -> None:
    history = shop.get_object_history(external_id="SKU-1")
    assert types(history) == ["price.updated", "inventory.adjusted"]
    products = shop.get_object_history(external_id="SKU-1", object_type=ObjectType.PRODUCT)
    assert types(products) == ["price.updated"]
    assert shop.get_object_history("unknown") == []


def test_get_chain_returns_root_and_descendants(
    make_client: Callable[..., DecisionTraceClient],
) -> None:
    client = make_client()
    root = client.trace("workflow.started").record()
    step1 = client.trace("workflow.step", "one").child_of(root).record()
    step2 = client.trace("workflow.step", "two").child_of(root).record()
    sub = client.trace("workflow.substep").child_of(step1).record()
    client.trace("unrelated").record()
    chain = client.get_chain(sub)
    assert chain.event.id == root
    assert [n.event.id for n in chain.children] == [step1, step2]
    assert [n.event.id for n in chain.children[0].children] == [sub]
    assert [(depth, e.id) for depth, e in chain.walk()] == [
        (0, root),
        (1, step1),
        (2, sub),
        (1, step2),
    ]
    found = chain.find(step2)
    assert found is not None and found.event.description == "two"


def test_reads_see_writes_immediately_in_batch_mode(
    make_client: Callable[..., DecisionTraceClient],
) -> None:
    client = make_client(durability="batch")
    ids = [client.trace("bulk.event", f"n{i}").record() for i in range(1000)]
    assert {e.id for e in client.query(limit=None)} == set(ids)


def test_timestamps_are_recent_utc(make_client: Callable[..., DecisionTraceClient]) -> None:
    client = make_client()
    before = datetime.now(timezone.utc)
    event = client.get_event(client.trace("t").record())
    assert event is not None
    assert before - timedelta(seconds=1) <= event.timestamp <= datetime.now(timezone.utc)
