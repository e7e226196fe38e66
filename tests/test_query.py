"""The read side: filters, search, chains and object history, on every backend."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import sqlite3
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from decision_trace import (
    Actor,
    ActorType,
    DecisionTraceClient,
    EventNotFoundError,
    InvalidInputError,
    ObjectType,
    Outcome,
    RiskLevel,
    TraceEvent,
)
from decision_trace.models import DEFERRED_KEY
from decision_trace.storage import is_url

pytestmark = pytest.mark.usefixtures("ledger_target")


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


# --- Lazily decoded fields ----------------------------------------------------------


@pytest.fixture
def rich(make_client: Callable[..., DecisionTraceClient]) -> tuple[DecisionTraceClient, str]:
    """A client and the id of an event that fills every field."""
    client = make_client()
    event_id = (
        client.trace("order.refunded", "Refund issued")
        .at(datetime(2024, 3, 1, 12, 30))
        .by_user("agent-7", "Sam", email="sam@example.com", role="support", team="returns")
        .affecting_order("ord-9", {"status": "refunded"}, state_before={"total": 10})
        .affecting_customer("cust-9")
        .because(
            "Item arrived broken",
            context={"photos": 2},
            alternatives=[{"action": "replace"}],
            rejection_reasons={"replace": "out of stock"},
            confidence=0.9,
            risk_level="medium",
        )
        .with_tags("web", "refund")
        .with_metadata(ticket=42)
        .record()
    )
    return client, event_id


def _read(client: DecisionTraceClient, event_id: str) -> TraceEvent:
    event = client.get_event(event_id)
    assert event is not None
    return event


def _constructed(client: DecisionTraceClient, event_id: str) -> TraceEvent:
    """The same event, built by the constructor from a separate read."""
    source = _read(client, event_id)
    return TraceEvent(**{f.name: getattr(source, f.name) for f in dataclasses.fields(source)})


def test_read_events_decode_json_fields_on_first_access(
    rich: tuple[DecisionTraceClient, str],
) -> None:
    client, event_id = rich
    event = _read(client, event_id)
    assert type(event) is TraceEvent
    lazy = {"actor", "decision", "objects", "metadata"}
    assert DEFERRED_KEY in vars(event) and not lazy & set(vars(event))
    assert event.event_type == "order.refunded" and event.tags == ("web", "refund")
    assert DEFERRED_KEY in vars(event)  # plain fields do not decode the rest
    assert event.decision is not None and event.decision.risk_level is RiskLevel.MEDIUM
    assert DEFERRED_KEY not in vars(event) and lazy <= set(vars(event))
    assert event.actor == Actor.user(
        "agent-7", "Sam", email="sam@example.com", role="support", team="returns"
    )
    assert [(o.object_type, o.external_id) for o in event.objects] == [
        (ObjectType.ORDER, "ord-9"),
        (ObjectType.CUSTOMER, "cust-9"),
    ]
    assert event.objects[0].state_before == {"total": 10}
    assert event.metadata == {"ticket": 42}
    assert event.decision is event.decision  # decoded once, then kept


@pytest.mark.parametrize("first", ["lazy", "constructed"])
def test_lazy_event_equals_a_constructed_one(
    rich: tuple[DecisionTraceClient, str], first: str
) -> None:
    client, event_id = rich
    lazy, constructed = _read(client, event_id), _constructed(client, event_id)
    if first == "lazy":
        assert lazy == constructed
    else:
        assert constructed == lazy
    assert _read(client, event_id) == _read(client, event_id)  # both lazy
    other = _read(client, event_id)
    assert other != dataclasses.replace(constructed, description="changed")


def test_lazy_event_repr_replace_asdict(rich: tuple[DecisionTraceClient, str]) -> None:
    client, event_id = rich
    constructed = _constructed(client, event_id)
    assert repr(_read(client, event_id)) == repr(constructed)
    assert dataclasses.asdict(_read(client, event_id)) == dataclasses.asdict(constructed)
    replaced = dataclasses.replace(_read(client, event_id), description="changed")
    assert type(replaced) is TraceEvent and DEFERRED_KEY not in vars(replaced)
    assert replaced == dataclasses.replace(constructed, description="changed")
    assert replaced.decision == constructed.decision


def test_lazy_event_hashing_behaves_as_a_constructed_one(
    rich: tuple[DecisionTraceClient, str],
) -> None:
    client, event_id = rich
    errors = []
    for event in (_read(client, event_id), _constructed(client, event_id)):
        with pytest.raises(TypeError) as caught:  # mappings inside: unhashable
            hash(event)
        errors.append(str(caught.value))
    assert errors[0] == errors[1]


@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle"])
def test_lazy_event_copies_and_pickles_decoded(
    rich: tuple[DecisionTraceClient, str], how: str
) -> None:
    client, event_id = rich
    event = _read(client, event_id)
    if how == "copy":
        clone = copy.copy(event)
    elif how == "deepcopy":
        clone = copy.deepcopy(event)
    else:
        data = pickle.dumps(event)
        assert b"_lazy_fields" not in data and b"functools" not in data
        clone = pickle.loads(data)
    constructed = _constructed(client, event_id)
    assert type(clone) is TraceEvent
    assert clone == constructed and clone == event
    assert DEFERRED_KEY not in vars(clone) and DEFERRED_KEY not in vars(event)
    # Field order as in a constructed event (what pickle and vars() show).
    assert list(vars(clone)) == [f.name for f in dataclasses.fields(TraceEvent)]
    assert list(vars(clone)) == list(vars(constructed))


def test_lazy_event_unknown_attribute_raises_attribute_error(
    rich: tuple[DecisionTraceClient, str],
) -> None:
    client, event_id = rich
    event = _read(client, event_id)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        event.nope  # type: ignore[attr-defined]  # noqa: B018
    assert getattr(event, "__setstate__", None) is None
    assert DEFERRED_KEY in vars(event)  # other names do not decode the fields
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.actor = None  # type: ignore[misc]


def test_lazy_event_first_access_from_many_threads(
    make_client: Callable[..., DecisionTraceClient],
) -> None:
    client = make_client()
    for i in range(50):
        client.trace("t", f"n{i}").by_ai_agent("a").because(f"why {i}", {"i": i}).record()
    expected = [f"why {i}" for i in range(50)] + ["{}"] * 50

    def read(events: list[TraceEvent], barrier: threading.Barrier, seen: list[object]) -> None:
        barrier.wait()
        seen.append(
            [e.decision.reasoning if e.decision else "" for e in events]
            + [str(e.metadata) for e in events]
        )

    for _ in range(5):
        events = client.query(limit=None, order="asc")
        barrier = threading.Barrier(8)
        seen: list[object] = []
        threads = [threading.Thread(target=read, args=(events, barrier, seen)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert seen == [expected] * 8  # a thread that raised appended nothing
        assert all(DEFERRED_KEY not in vars(e) for e in events)


def _edit(client: DecisionTraceClient, sql: str, *params: object) -> None:
    """Change stored rows as another tool might have written them (the statement is
    written for SQLite's ``?`` placeholders; both backends have the same columns)."""
    client.flush()
    if is_url(client.db_path):
        with psycopg.connect(client.db_path) as pg:  # commits when the block ends
            pg.execute(sql.replace("?", "%s"), params)
        return
    conn = sqlite3.connect(client.db_path)
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()


def test_lazy_decoding_keeps_tolerating_values_other_tools_wrote(
    rich: tuple[DecisionTraceClient, str],
) -> None:
    client, event_id = rich
    _edit(
        client,
        "UPDATE events SET actor_type = 'robot', actor_json = ' {\"email\": \"x@y\"} ', "
        "decision_json = ?, metadata_json = '{ \"k\" : [1, 2] }', outcome = 'weird' "
        "WHERE id = ?",
        '{"context": {"a": 1}, "risk_level": "spicy", "confidence": 1}',
        event_id,
    )
    _edit(client, "UPDATE event_objects SET object_type = 'planet' WHERE external_id = 'ord-9'")
    event = _read(client, event_id)
    assert event.outcome is Outcome.SUCCESS
    assert event.actor is not None
    assert (event.actor.type, event.actor.email) == (ActorType.SYSTEM, "x@y")
    assert event.decision is not None
    assert event.decision.context == {"a": 1} and event.decision.risk_level is None
    assert event.decision.confidence == 1.0 and event.decision.alternatives == ()
    assert event.metadata == {"k": [1, 2]}
    assert event.objects[0].object_type is ObjectType.OTHER


@pytest.mark.sqlite_only  # PostgreSQL's jsonb columns refuse text that is not JSON
def test_undecodable_stored_json_raises_on_first_access(
    rich: tuple[DecisionTraceClient, str],
) -> None:
    client, event_id = rich
    _edit(client, "UPDATE events SET decision_json = '{oops' WHERE id = ?", event_id)
    event = _read(client, event_id)  # the plain fields still read
    assert event.event_type == "order.refunded"
    with pytest.raises(json.JSONDecodeError):
        event.decision  # noqa: B018
    with pytest.raises(json.JSONDecodeError):  # still undecoded: raises again
        event.actor  # noqa: B018


def test_stored_json_of_the_wrong_shape_raises_value_error_on_first_access(
    rich: tuple[DecisionTraceClient, str],
) -> None:
    # A JSON value of the wrong shape is a ValueError too, never an AttributeError that
    # getattr(event, "actor", None) would silently turn into None.
    client, event_id = rich
    _edit(client, "UPDATE events SET decision_json = '[1]' WHERE id = ?", event_id)
    event = _read(client, event_id)  # the plain fields still read
    assert event.event_type == "order.refunded"
    with pytest.raises(ValueError, match="cannot be decoded"):
        getattr(event, "actor", None)


def test_get_chain_survives_a_cycle_in_stored_parents(
    make_client: Callable[..., DecisionTraceClient],
) -> None:
    client = make_client()
    root = client.trace("workflow.started").record()
    step = client.trace("workflow.step").child_of(root).record()
    sub = client.trace("workflow.substep").child_of(step).record()
    _edit(client, "UPDATE events SET parent_id = ? WHERE id = ?", sub, root)
    chain = client.get_chain(sub)
    assert [(depth, e.id) for depth, e in chain.walk()] == [(0, root), (1, step), (2, sub)]
    # From the step, the walk up stops where it would repeat itself: at the substep.
    chain = client.get_chain(step.upper())
    assert [(depth, e.id) for depth, e in chain.walk()] == [(0, sub), (1, root), (2, step)]
    with pytest.raises(EventNotFoundError):
        client.get_chain("0" * 16)


def test_get_chain_of_a_deep_chain(make_client: Callable[..., DecisionTraceClient]) -> None:
    client = make_client()
    ids = [client.trace("step", "0").record()]
    for i in range(1, 1500):
        ids.append(client.trace("step", str(i)).child_of(ids[-1]).record())
    node = client.get_chain(ids[700])
    for expected in ids:
        assert node.event.id == expected
        assert len(node.children) <= 1
        if node.children:
            node = node.children[0]
    assert node.event.id == ids[-1] and node.children == ()
