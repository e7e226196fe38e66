"""The contract every ledger backend keeps; each test runs once per backend.

A backend joins the contract by adding a parameter to the ``ledger`` fixture that opens
an empty ledger of its kind.

``http`` is the read-only backend (a ``decision-trace serve`` read through its read API,
here over an SQLite ledger): the contract's writes, prunes and compactions go to the
ledger behind the service, and every read goes through HTTP (:class:`ReadThrough`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from contract_support import BASE, Recorded
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from read_api_support import serve

from decision_trace import DecisionTraceClient
from decision_trace._decode import record_from_span
from decision_trace.errors import EventNotFoundError, InvalidInputError, StoreError
from decision_trace.models import ObjectType
from decision_trace.record import ns_from_datetime
from decision_trace.storage import EventFilters, Ledger, open_ledger
from decision_trace.storage.http import HTTPLedger


class ReadThrough:
    """The ``http`` backend as the contract uses it: what the contract writes (and prunes,
    and compacts) goes to the ledger behind the service, as OTLP ingest and retention
    would; everything else is the :class:`HTTPLedger`'s own."""

    def __init__(self, behind: Ledger, remote: HTTPLedger) -> None:
        self.behind = behind
        self.remote = remote

    def write(self, records: Any) -> int:
        return self.behind.write(records)

    def prune(self, older_than_ns: int, *, dry_run: bool = False) -> Any:
        return self.behind.prune(older_than_ns, dry_run=dry_run)

    def compact(self) -> bool:
        return self.behind.compact()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.remote, name)


@pytest.fixture(params=["sqlite", "postgres", "http"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """An empty ledger of each backend."""
    if request.param == "http":
        behind = open_ledger(tmp_path / "contract.db")
        try:
            with serve(behind) as url:
                remote = open_ledger(url)
                assert isinstance(remote, HTTPLedger)
                through = ReadThrough(behind, remote)
                yield through  # type: ignore[misc]
                through.close()
        finally:
            behind.close()
        return
    target = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    opened = open_ledger(target or tmp_path / "contract.db")
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


def ids_of(events: list) -> list[str]:  # type: ignore[type-arg]
    return [event.id for event in events]


def test_backend_satisfies_the_protocol(ledger: Ledger) -> None:
    assert isinstance(ledger, Ledger)
    assert ledger.location


def test_writing_the_same_records_twice_stores_them_once(
    ledger: Ledger, recorded: Recorded
) -> None:
    assert ledger.write(recorded.records) == 5
    assert ledger.write(recorded.records) == 0
    assert ledger.write(recorded.records[:2]) == 0
    assert ledger.count(EventFilters()) == 5


def test_an_empty_write_stores_nothing(ledger: Ledger) -> None:
    assert ledger.write([]) == 0
    assert ledger.query(EventFilters()) == []


def test_events_read_back_as_recorded(filled: Ledger, recorded: Recorded) -> None:
    event = filled.get_event(recorded.ids["fraud"])
    assert event is not None
    assert event.event_type == "fraud.checked"
    assert event.actor is not None and event.actor.id == "fraud-bot"
    assert event.decision is not None
    assert event.decision.reasoning == "Velocity and address checks are clean"
    assert event.decision.context == {"score": 0.02}
    assert event.decision.rejection_reasons == {"hold for review": "score far below threshold"}
    assert event.parent_event_id == recorded.ids["created"]
    assert event.timestamp == BASE + timedelta(minutes=1)
    assert filled.get_event(recorded.ids["fraud"].upper()) == event
    assert filled.get_event("0" * 16) is None


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (EventFilters.build(event_types="order.refunded"), ["refund"]),
        (EventFilters.build(actor_types=["ai_agent", "compute"]), ["restock", "fraud"]),
        (EventFilters.build(actor_ids="agent-7"), ["refund"]),
        (EventFilters.build(object_types="product"), ["other_trace", "restock"]),
        (
            EventFilters.build(object_types="order", object_ids="ord-1"),
            ["refund", "fraud", "created"],
        ),
        (EventFilters.build(object_ids="cust-1"), ["created"]),
        (EventFilters.build(tags="eu"), ["other_trace", "created"]),
        (EventFilters.build(outcome="failure"), ["restock"]),
        (
            EventFilters.build(start=BASE + timedelta(minutes=1), end=BASE + timedelta(days=3)),
            ["refund", "fraud"],
        ),
        (EventFilters.build(event_types="no.such.type"), []),
    ],
)
def test_each_filter_selects_the_same_events(
    filled: Ledger, recorded: Recorded, filters: EventFilters, expected: list[str]
) -> None:
    assert ids_of(filled.query(filters)) == [recorded.ids[name] for name in expected]
    assert filled.count(filters) == len(expected)


def test_correlation_id_selects_one_trace(filled: Ledger, recorded: Recorded) -> None:
    created = filled.get_event(recorded.ids["created"])
    assert created is not None
    same_trace = filled.query(EventFilters.build(correlation_id=created.correlation_id.upper()))
    assert ids_of(same_trace) == [recorded.ids[n] for n in ("refund", "fraud", "created")]


def test_limit_offset_and_order(filled: Ledger, recorded: Recorded) -> None:
    newest_first = [recorded.ids[n] for n in ("other_trace", "restock", "refund", "fraud")]
    assert ids_of(filled.query(EventFilters(), limit=4)) == newest_first
    assert ids_of(filled.query(EventFilters(), limit=2, offset=1)) == newest_first[1:3]
    oldest = filled.query(EventFilters(), limit=None, order="asc")
    assert ids_of(oldest)[0] == recorded.ids["created"]
    with pytest.raises(InvalidInputError, match="order"):
        filled.query(EventFilters(), order="sideways")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="limit"):
        filled.query(EventFilters(), limit=-1)


def test_streams_match_the_lists(filled: Ledger) -> None:
    with closing(filled.iter_events(EventFilters())) as stream:
        streamed = list(stream)
    assert streamed == filled.query(EventFilters(), limit=None, order="asc")
    with closing(filled.iter_events(EventFilters(), order="desc")) as stream:
        assert list(stream) == filled.query(EventFilters(), limit=None)


def test_search_matches_every_word_and_takes_any_text(filled: Ledger, recorded: Recorded) -> None:
    assert ids_of(filled.search("parcel crushed")) == [recorded.ids["refund"]]
    assert ids_of(filled.search("screening")) == [recorded.ids["fraud"]]
    assert filled.search("parcel screening") == []
    for hostile in ('"unbalanced', "AND OR NOT", "*", "-", "(", "\x00", "\ud800", ""):
        assert isinstance(filled.search(hostile), list)
    with closing(filled.iter_search("parcel")) as stream:
        assert ids_of(list(stream)) == [recorded.ids["refund"]]


def test_chain_is_the_whole_tree(filled: Ledger, recorded: Recorded) -> None:
    root = filled.get_chain(recorded.ids["refund"])
    assert root.event.id == recorded.ids["created"]
    assert [child.event.id for child in root.children] == [
        recorded.ids["fraud"],
        recorded.ids["refund"],
    ]
    with pytest.raises(EventNotFoundError):
        filled.get_chain("f" * 16)
    assert filled.trace_id_of(recorded.ids["fraud"]) == root.event.correlation_id
    assert filled.trace_id_of("f" * 16) is None


def test_event_ids_with_prefix(filled: Ledger, recorded: Recorded) -> None:
    ids = sorted(recorded.ids.values())
    for event_id in ids:
        assert filled.event_ids_with_prefix(event_id[:12].upper()) == [event_id]
        assert filled.event_ids_with_prefix(event_id) == [event_id]
    assert filled.event_ids_with_prefix("0") + filled.event_ids_with_prefix("1") == [
        i for i in ids if i[0] in "01"
    ]
    everything = [
        found for digit in "0123456789abcdef" for found in filled.event_ids_with_prefix(digit)
    ]
    assert everything == ids
    assert filled.event_ids_with_prefix(ids[0][:1], limit=1) == [ids[0]]
    assert filled.event_ids_with_prefix(ids[-1] + "0") == []
    for bad in ("", "xyz", "12 34", "%", "_"):
        with pytest.raises(InvalidInputError, match="prefix"):
            filled.event_ids_with_prefix(bad)


def test_object_types_of_an_id(filled: Ledger, recorded: Recorded) -> None:
    assert filled.object_types_of("ord-1") == [ObjectType.ORDER]
    assert filled.object_types_of("sku-9") == [ObjectType.PRODUCT]
    assert filled.object_types_of("ORD-1") == []
    assert filled.object_types_of("nowhere") == []
    # The same id on a coupon and on an order (stored in ObjectType order, not as written).
    (created,) = [r for r in recorded.records if r.id == recorded.ids["created"]]
    coupon = replace(
        created,
        id="f" * 16,
        object_types=("coupon", "order"),
        object_ids=("ord-1", "ord-1"),
        objects_json=None,
    )
    assert filled.write([coupon]) == 1
    assert filled.object_types_of("ord-1") == [ObjectType.ORDER, ObjectType.COUPON]
    with pytest.raises(InvalidInputError, match="external_id"):
        filled.object_types_of("")


def test_object_history_oldest_first(filled: Ledger, recorded: Recorded) -> None:
    history = filled.object_history("ord-1", "order")
    assert ids_of(history) == [recorded.ids[n] for n in ("created", "fraud", "refund")]
    assert ids_of(filled.object_history("ord-1", limit=1)) == [recorded.ids["created"]]
    assert filled.count_object_history("sku-9") == 2
    with closing(filled.iter_object_history("sku-9", "product")) as stream:
        assert ids_of(list(stream)) == [recorded.ids["restock"], recorded.ids["other_trace"]]
    refund = history[-1]
    (order,) = refund.objects
    assert order.state_before == {"status": "paid"}
    assert order.state_after == {"status": "refunded"}


def test_summary_counts(filled: Ledger) -> None:
    summary = filled.summary()
    assert summary.events == 5
    assert summary.objects == 6
    assert summary.distinct_objects == 3
    assert summary.first == BASE
    assert summary.last == BASE + timedelta(days=40)
    assert dict(summary.by_outcome) == {"success": 4, "failure": 1}
    assert sum(n for _, n in summary.by_day) == 5
    assert len(filled.summary(days=1).by_day) == 1


def test_prune_dry_run_counts_what_the_real_run_deletes(filled: Ledger, recorded: Recorded) -> None:
    cutoff = ns_from_datetime(BASE + timedelta(days=2, hours=1), "cutoff")
    dry = filled.prune(cutoff, dry_run=True)
    assert filled.count(EventFilters()) == 5
    real = filled.prune(cutoff)
    assert real == dry
    assert real.events == 3
    assert ids_of(filled.query(EventFilters())) == [
        recorded.ids["other_trace"],
        recorded.ids["restock"],
    ]
    assert filled.search("parcel") == []
    assert filled.object_history("ord-1") == []


def test_check_and_compact(filled: Ledger) -> None:
    assert filled.confirm_writes() is True
    assert filled.check() == []
    filled.prune(ns_from_datetime(BASE + timedelta(days=1), "cutoff"))
    assert filled.compact() is True
    assert filled.check() == []


def test_close_is_idempotent_and_ends_use(filled: Ledger) -> None:
    filled.close()
    filled.close()
    with pytest.raises(StoreError):
        filled.query(EventFilters())


def test_open_ledger_refuses_what_it_cannot_open(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no decision-trace database"):
        open_ledger(tmp_path / "missing.db", create=False)
    with pytest.raises(StoreError, match="ftp://"):
        open_ledger("ftp://example.com/ledger")


# -- the edges every backend must hold the same way ---------------------------------------


def test_a_span_repeated_inside_one_batch_is_stored_once(
    ledger: Ledger, recorded: Recorded
) -> None:
    first = recorded.records[0]
    assert ledger.write([first, first, recorded.records[1], first]) == 2
    assert ledger.count(EventFilters()) == 2
    assert ids_of(ledger.object_history("ord-1")) == [first.id, recorded.records[1].id]
    assert ledger.count(EventFilters.build(tags="web")) == 1


def test_long_values_are_stored_and_found(ledger: Ledger, recorded: Recorded) -> None:
    # Longer than one btree index entry can hold (PostgreSQL: about 2.7 kB).
    big = "x" * 5_000
    record = replace(
        recorded.records[0],
        event_type=big + ".type",
        actor_id=big + "-actor",
        object_types=("order",),
        object_ids=(big + "-order",),
        objects_json=None,
        tags=(big + "-tag",),
    )
    twin = replace(record, id="e" * 16, event_type=big + ".other", actor_id=big + "-other")
    assert ledger.write([record, twin]) == 2
    assert ids_of(ledger.query(EventFilters.build(event_types=big + ".type"))) == [record.id]
    assert ids_of(ledger.query(EventFilters.build(actor_ids=big + "-actor"))) == [record.id]
    assert ledger.count(EventFilters.build(tags=big + "-tag")) == 2
    assert ledger.count(EventFilters.build(object_ids=big + "-order")) == 2
    assert ledger.count_object_history(big + "-order", "order") == 2
    assert ledger.object_types_of(big + "-order") == [ObjectType.ORDER]


def test_times_at_both_ends_of_the_range(ledger: Ledger, recorded: Recorded) -> None:
    from decision_trace.record import MAX_NS, MIN_NS

    base = recorded.records[0]
    times = {"a": MIN_NS, "b": 0, "c": 946_684_799_999_999_999, "d": 4_102_444_800_000_000_000}
    times["e"] = MAX_NS
    records = [
        replace(base, id=name * 16, start_ns=ns, object_types=(), object_ids=(), tags=())
        for name, ns in times.items()
    ]
    assert ledger.write(records) == 5
    assert ids_of(ledger.query(EventFilters(), order="asc")) == [r.id for r in records]
    assert ids_of(ledger.query(EventFilters(start_ns=1, end_ns=MAX_NS))) == ["d" * 16, "c" * 16]
    assert ledger.prune(946_684_800_000_000_000, dry_run=True).events == 3
    assert ledger.prune(946_684_800_000_000_000).events == 3
    assert ids_of(ledger.query(EventFilters())) == ["e" * 16, "d" * 16]
    # The range before 2000 takes events again after it was pruned.
    assert ledger.write(records[:1]) == 1
    assert ledger.check() == []


def test_an_unstorable_record_costs_only_itself(ledger: Ledger, recorded: Recorded) -> None:
    from decision_trace.errors import RejectedRecordsError

    bad = replace(recorded.records[0], decision_json='{"context": [unclosed')
    with pytest.raises(RejectedRecordsError) as caught:
        ledger.write([bad, *recorded.records[1:]])
    assert caught.value.written == 4
    assert caught.value.rejected == (bad.id,)
    assert ledger.count(EventFilters()) == 4
    assert ledger.get_event(bad.id) is None


def test_nul_in_text_is_stored_or_coerced_as_documented(
    ledger: Ledger, recorded: Recorded, request: pytest.FixtureRequest
) -> None:
    record = replace(
        recorded.records[0],
        description="before\x00after",
        reasoning="why\x00not",
        decision_json='{"context":{"k":"v\\u0000w"}}',
        tags=("t\x00g",),
    )
    assert ledger.write([record]) == 1
    event = ledger.get_event(record.id)
    assert event is not None and event.decision is not None
    # SQLite keeps U+0000; PostgreSQL text cannot hold it and stores U+FFFD
    # (docs/postgres.md), and looks filters up the same way.
    nul = "\x00" if request.node.callspec.params["ledger"] in ("sqlite", "http") else "\ufffd"
    assert event.description == f"before{nul}after"
    assert event.decision.reasoning == f"why{nul}not"
    assert event.decision.context == {"k": f"v{nul}w"}
    assert event.tags == (f"t{nul}g",)
    assert ledger.count(EventFilters.build(tags="t\x00g")) == 1
