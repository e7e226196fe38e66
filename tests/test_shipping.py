"""Shipping (issue 15), the parts that run in this process: the wire format round trip,
commit order, row numbers after prune, prune's refusal, the outbox status, the lock, and
what the shipper does with each kind of answer. Destinations are real HTTP servers on
loopback (the suite's plain OTLP receiver, or a stdlib one answering as a test scripts);
the process-level guarantees (outages, kill -9, stalls) are in
tests/reliability/test_rel_shipping.py."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_versions import make_older_ledger
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from shipping_support import (
    Reply,
    free_port,
    ok,
    partial,
    refusing,
    scripted_receiver,
    stalling_socket,
)

from decision_trace import DecisionTraceClient, ObjectType, RiskLevel
from decision_trace._decode import record_from_span
from decision_trace._otlp_request import encode_request
from decision_trace.ecommerce import EcommerceClient
from decision_trace.errors import InvalidInputError, UnshippedEventsError
from decision_trace.record import EventRecord
from decision_trace.server._otlp import decode_request, parse_protobuf
from decision_trace.shipping import (
    ShipLockedError,
    Shipper,
    ShippingError,
    destination_url,
)
from decision_trace.storage import Ledger, open_ledger
from decision_trace.storage.outbox import Outbox, Rejection
from decision_trace.store import SCHEMA_VERSION

REPO_ROOT = Path(__file__).resolve().parent.parent
FAST = {"backoff": 0.01, "max_backoff": 0.05}
"""Retry delays of a shipper under test: tiny, so only ``Retry-After`` explains a wait."""
NOW = datetime.now(timezone.utc)


# --- helpers ----------------------------------------------------------------------------


def through_the_wire(records: Sequence[EventRecord]) -> list[EventRecord]:
    """``records`` as ``decision-trace serve`` decodes them from the shipper's request."""
    encoded = encode_request(records, scope_version="test")
    assert encoded.unencodable == ()
    assert encoded.sent == tuple(range(len(records)))
    decoded = decode_request(parse_protobuf(encoded.body))
    assert decoded.rejected == []
    return decoded.records


def stored_records(ledger: Ledger) -> list[EventRecord]:
    return [record for _, record in ledger.iter_records()]


@pytest.fixture
def capture(
    make_client: Callable[..., DecisionTraceClient],
) -> tuple[DecisionTraceClient, InMemorySpanExporter]:
    """A client whose finished spans are also kept in memory."""
    client = make_client(service_name="checkout")
    exporter = InMemorySpanExporter()
    client.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return client, exporter


@pytest.fixture
def ledger(db_path: Path) -> Iterator[Ledger]:
    """The local ledger a shipper reads (closed after the test)."""
    opened = open_ledger(db_path)
    yield opened
    opened.close()


_ids = itertools.count(0xA000_0000_0001)


def write_events(
    ledger: Ledger, count: int, *, start: datetime = NOW, name: str = "e"
) -> list[str]:
    """``count`` decision events written in one call (commit order = list order); ids."""
    records = []
    for i in range(count):
        records.append(
            EventRecord(
                id=f"{next(_ids):016x}",
                trace_id=f"{0x5EED + i:032x}",
                parent_id=None,
                start_ns=int((start + timedelta(milliseconds=i)).timestamp() * 1e9),
                duration_ns=1000,
                event_type=name,
                description=f"event {i}",
                actor_type=None,
                actor_id=None,
                actor_name=None,
                actor_json=None,
                reasoning=None,
                decision_json=None,
                objects_json=None,
                object_types=(),
                object_ids=(),
                tags=(),
                outcome="success",
                error=None,
                metadata_json=None,
                service_name="svc",
            )
        )
    ledger.write(records)
    return [r.id for r in records]


def shipper(ledger: Ledger, to: str, **options: Any) -> Shipper:
    return Shipper(ledger, to, **{**FAST, **options})


def status_of(ledger: Ledger, destination: str) -> Any:
    assert isinstance(ledger, Outbox)
    (status,) = [s for s in ledger.outbox_status() if s.destination == destination]
    return status


# --- the wire format: what serve decodes is what was stored ---------------------------------


def test_builder_records_survive_the_wire_unchanged(
    capture: tuple[DecisionTraceClient, InMemorySpanExporter],
) -> None:
    client, exporter = capture
    parent = (
        client.trace("order.refunded", "Refund for a damaged kettle")
        .by_user("u-1", "Ann", email="ann@example.com", role="support", team="eu")
        .affecting(
            "order",
            "ord-1",
            {"total": 42.5, "items": [1, 2]},
            state_before={"status": "paid"},
            state_after={"status": "refunded"},
        )
        .affecting_customer("cust-1", {"tier": "gold"})
        .because(
            "Damaged on arrival; policy allows a full refund",
            context={"carrier": "x", "weights": [0.5, None, True], "nested": {"a": {}}},
            alternatives=[{"action": "replace"}, {"action": "voucher", "value": 10}],
            rejection_reasons={"replace": "out of stock"},
            confidence=0.87,
            risk_level=RiskLevel.HIGH,
        )
        .with_tags("refund", "eu", "ünïcode ✓")
        .with_metadata(ticket="T-9", attempts=2)
        .record()
    )
    (
        client.trace("payment.retried", "")
        .by_ai_agent("agent-7", "Pricing AI", model="gpt-4o", version="3")
        .child_of(parent)
        .failed("gateway timeout")
        .at(datetime(2020, 1, 1, tzinfo=timezone.utc))
        .record()
    )
    client.trace("stock.checked", "pending").pending().by_compute("job-1", None).record()
    client.trace("sync.ran", "system").by_system("erp", "ERP", service_name="erp-sync").record()
    client.trace("webhook.got", "external").by_external("stripe", "Stripe").record()
    client.trace("bare", "no actor, no decision").record()
    with client.tracer_provider.get_tracer("another.library").start_as_current_span(
        "GET /orders", attributes={"http.method": "GET", "retries": 3, "ids": [1, 2]}
    ):
        pass
    client.flush()
    spans = exporter.get_finished_spans()
    assert len(spans) == 7
    records = [record_from_span(span) for span in spans]
    assert through_the_wire(records) == records
    # What the shipper reads is the ledger's copy: the same records, the same result.
    stored = stored_records(client._storage)
    assert sorted(stored, key=lambda r: r.id) == sorted(records, key=lambda r: r.id)
    assert through_the_wire(stored) == stored


def test_demo_records_survive_the_wire_unchanged(db_path: Path) -> None:
    sys.path.insert(0, str(REPO_ROOT / "examples"))
    try:
        from ecommerce_demo import record_day
    finally:
        sys.path.remove(str(REPO_ROOT / "examples"))
    with EcommerceClient(db_path=db_path, service_name="shop") as client:
        record_day(client, "rt1")
    ledger = open_ledger(db_path)
    try:
        stored = stored_records(ledger)
    finally:
        ledger.close()
    assert len(stored) >= 10
    assert through_the_wire(stored) == stored


_text = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=12).filter(
    str.strip
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(-1e9, 1e9) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=6,
)
_objects = st.lists(
    st.tuples(
        st.sampled_from(ObjectType),
        _text,
        st.dictionaries(_text, _json, max_size=3),
        st.none() | st.dictionaries(_text, _json, max_size=2),
    ),
    max_size=3,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    event_type=_text,
    description=st.text(max_size=20),
    actor=st.none() | st.tuples(st.sampled_from(["user", "ai_agent", "system"]), _text, _text),
    objects=_objects,
    decision=st.none()
    | st.tuples(
        _text,
        st.dictionaries(_text, _json, max_size=4),
        st.lists(st.dictionaries(_text, _json, min_size=1, max_size=2), max_size=2),
        st.none() | st.floats(0, 1),
    ),
    tags=st.lists(_text, max_size=3),
    metadata=st.dictionaries(st.sampled_from(["a", "b", "c"]), _json, max_size=2),
    outcome=st.sampled_from(["success", "failure", "pending"]),
    days_ago=st.integers(0, 3650),
)
def test_varied_records_survive_the_wire_unchanged(
    capture: tuple[DecisionTraceClient, InMemorySpanExporter],
    event_type: str,
    description: str,
    actor: tuple[str, str, str] | None,
    objects: list[tuple[ObjectType, str, dict[str, Any], dict[str, Any] | None]],
    decision: tuple[str, dict[str, Any], list[dict[str, Any]], float | None] | None,
    tags: list[str],
    metadata: dict[str, Any],
    outcome: str,
    days_ago: int,
) -> None:
    client, exporter = capture
    exporter.clear()
    builder = client.trace(event_type, description).at(NOW - timedelta(days=days_ago))
    if actor is not None:
        getattr(builder, f"by_{actor[0]}")(actor[1], actor[2])
    for object_type, external_id, state, after in objects:
        builder.affecting(object_type, external_id, state, state_after=after)
    if decision is not None:
        reasoning, context, alternatives, confidence = decision
        builder.because(reasoning, context=context, alternatives=alternatives)
        if confidence is not None:
            builder.with_confidence(confidence)
    if tags:
        builder.with_tags(*tags)
    if metadata:
        builder.with_metadata(**metadata)
    if outcome == "failure":
        builder.failed("it broke")
    elif outcome == "pending":
        builder.pending()
    builder.record()
    (span,) = exporter.get_finished_spans()
    record = record_from_span(span)
    assert through_the_wire([record]) == [record]


# --- destinations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://ledger:4318", "http://ledger:4318/v1/traces"),
        ("http://ledger:4318/", "http://ledger:4318/v1/traces"),
        ("  http://ledger:4318  ", "http://ledger:4318/v1/traces"),
        ("HTTPS://Ledger.Example.COM", "https://ledger.example.com/v1/traces"),
        ("http://ledger:4318/v1/traces", "http://ledger:4318/v1/traces"),
        ("http://gw/otlp/v1/traces?tenant=a", "http://gw/otlp/v1/traces?tenant=a"),
        ("http://[::1]:4318", "http://[::1]:4318/v1/traces"),
        ("http://10.0.0.5:80#frag", "http://10.0.0.5:80/v1/traces"),
    ],
)
def test_destination_url_names_the_traces_endpoint(given: str, expected: str) -> None:
    assert destination_url(given) == expected


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("ledger:4318", "http:// or https://"),
        ("ftp://ledger/v1/traces", "http:// or https://"),
        ("http://", "http:// or https://"),
        ("http://user:pw@ledger:4318", "must not hold credentials"),
        ("http://ledger:99999", "not a valid URL"),
        (4318, "must be a URL string"),
    ],
)
def test_destination_url_refuses_what_is_not_an_otlp_url(given: Any, says: str) -> None:
    with pytest.raises(InvalidInputError) as raised:
        destination_url(given)
    assert "ship_to" in str(raised.value) and says in str(raised.value)


# --- commit order, row numbers, prune ------------------------------------------------------


def test_an_event_written_late_with_an_old_time_is_still_shipped(
    ledger: Ledger, make_client: Callable[..., DecisionTraceClient]
) -> None:
    client = make_client(durability="sync")

    def record(name: str, at: datetime) -> str:
        return client.trace(name, "recorded through the builder").at(at).record()

    with scripted_receiver(lambda n, seen: ok()) as receiver:
        first = [record("recent", NOW - timedelta(seconds=i)) for i in range(3)]
        with shipper(ledger, receiver.url) as ship:
            assert ship.ship(max_wait=30).ok
            # Recorded after the others were shipped, with times years before them.
            late = [record("late", NOW - timedelta(days=900 + i)) for i in range(2)]
            report = ship.ship(max_wait=30)
    assert report.ok and report.shipped == 2
    assert receiver.accepted == first + late  # commit order, not time order
    assert status_of(ledger, destination_url(receiver.url)).backlog == 0


def test_row_numbers_are_not_reused_after_the_newest_rows_are_pruned(ledger: Ledger) -> None:
    with scripted_receiver(lambda n, seen: ok()) as receiver, shipper(ledger, receiver.url) as ship:
        write_events(ledger, 5)
        assert ship.ship(max_wait=30).shipped == 5
        mark = ship.position
        assert ledger.prune(int((NOW + timedelta(days=1)).timestamp() * 1e9)).events == 5
        (after,) = write_events(ledger, 1, name="after.prune")
        (position, _), *_ = list(ledger.iter_records())
        assert position > mark
        report = ship.ship(max_wait=30)
    assert report.shipped == 1 and report.ok
    assert receiver.accepted[-1] == after


def test_prune_refuses_to_delete_unshipped_events_unless_forced(ledger: Ledger) -> None:
    everything = int((NOW + timedelta(days=1)).timestamp() * 1e9)
    with scripted_receiver(lambda n, seen: ok()) as receiver:
        write_events(ledger, 4)
        with shipper(ledger, receiver.url) as ship:
            assert ship.ship(max_wait=30).shipped == 4
        write_events(ledger, 6, start=NOW + timedelta(hours=1), name="unshipped")
    destination = destination_url(receiver.url)

    with pytest.raises(UnshippedEventsError) as refused:
        ledger.prune(everything)
    assert refused.value.unshipped == {destination: 6}
    assert f"6 not yet acknowledged by {destination}" in str(refused.value)
    assert "force" in str(refused.value)
    assert len(stored_records(ledger)) == 10  # nothing was deleted

    dry = ledger.prune(everything, dry_run=True)
    assert (dry.events, dry.unshipped) == (10, 6)
    assert len(stored_records(ledger)) == 10

    # What the destination has may go without force.
    shipped_only = int((NOW + timedelta(milliseconds=3.5)).timestamp() * 1e9)
    assert ledger.prune(shipped_only).events == 4

    forced = ledger.prune(everything, force=True)
    assert (forced.events, forced.unshipped) == (6, 6)
    assert stored_records(ledger) == []


def test_a_ledger_that_never_shipped_prunes_as_before(ledger: Ledger) -> None:
    write_events(ledger, 3)
    report = ledger.prune(int((NOW + timedelta(days=1)).timestamp() * 1e9))
    assert (report.events, report.unshipped) == (3, 0)


# --- the outbox status ----------------------------------------------------------------------


def test_status_shows_backlog_age_and_last_error_while_the_destination_is_down(
    ledger: Ledger, make_client: Callable[..., DecisionTraceClient], db_path: Path
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    ids = write_events(ledger, 7, start=NOW - timedelta(hours=2))
    with shipper(ledger, down) as ship:
        report = ship.ship(max_wait=0.5)
    assert report.gave_up and report.shipped == 0 and report.remaining == 7
    assert report.retries >= 1 and report.last_error
    status = status_of(ledger, destination_url(down))
    assert (status.position, status.shipped, status.rejected, status.backlog) == (0, 0, 0, 7)
    first = next(r for r in stored_records(ledger) if r.id == ids[0])
    assert status.oldest_unshipped_ns == first.start_ns  # two hours old
    assert status.last_error == report.last_error
    assert "refused" in status.last_error.lower()
    assert status.last_error_ns is not None
    # The client says the same (what `decision-trace stats` shows).
    assert make_client().shipping_status() == ledger.outbox_status()

    # Another destination shipping does not clear this one's error.
    with (
        scripted_receiver(lambda n, seen: ok()) as receiver,
        shipper(ledger, receiver.url) as other,
    ):
        assert other.ship(max_wait=30).shipped == 7
    after = status_of(ledger, destination_url(down))
    assert after.backlog == 7 and after.last_error is not None  # still down


def test_status_counts_rejections_and_clears_the_error_after_a_success(ledger: Ledger) -> None:
    write_events(ledger, 4)
    write_events(ledger, 1, name="poison")
    write_events(ledger, 3)
    answers = iter([Reply(status=503, headers=(("Retry-After", "0"),))])

    def script(number: int, seen: Any) -> Reply:
        first = next(answers, None)
        if first is not None:
            return first
        refused = [i for i, name in zip(seen.span_ids, seen.names, strict=True) if name == "poison"]
        return partial(len(refused), f"refused: {', '.join(refused)}") if refused else ok()

    with scripted_receiver(script) as receiver, shipper(ledger, receiver.url) as ship:
        report = ship.ship(max_wait=30)
    status = status_of(ledger, destination_url(receiver.url))
    assert (status.shipped, status.rejected, status.backlog) == (8, 1, 0)
    assert status.last_error is None and status.oldest_unshipped_ns is None
    assert report.retries == 1 and not report.ok and len(report.rejected) == 1


# --- the lock: one shipper per ledger and destination ----------------------------------------


def test_one_shipper_per_ledger_and_destination(ledger: Ledger, db_path: Path) -> None:
    one = Shipper(ledger, "http://127.0.0.1:9/")
    try:
        with pytest.raises(ShipLockedError) as locked:
            Shipper(ledger, "http://127.0.0.1:9/v1/traces")  # the same destination
        assert f"pid {os.getpid()}" in str(locked.value)
        with Shipper(ledger, "http://127.0.0.1:10"):  # another destination: its own lock
            pass
        other = open_ledger(db_path)  # the same file opened again
        try:
            with pytest.raises(ShipLockedError):
                Shipper(other, "http://127.0.0.1:9")
        finally:
            other.close()
    finally:
        one.close()
    Shipper(ledger, "http://127.0.0.1:9").close()  # released at close
    one.close()  # idempotent


def test_the_lock_is_released_when_its_holder_is_killed(ledger: Ledger, db_path: Path) -> None:
    holder = textwrap.dedent(
        f"""
        import sys, time
        from decision_trace.shipping import Shipper
        from decision_trace.storage import open_ledger
        shipper = Shipper(open_ledger({str(db_path)!r}), "http://127.0.0.1:9")
        print("locked", flush=True)
        time.sleep(120)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked", proc.stderr.read() if proc.stderr else ""
        with pytest.raises(ShipLockedError) as locked:
            Shipper(ledger, "http://127.0.0.1:9")
        assert f"pid {proc.pid}" in str(locked.value)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        Shipper(ledger, "http://127.0.0.1:9").close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


# --- answers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_a_destination_refusing_the_token_stops_shipping_with_a_clear_error(
    ledger: Ledger, status: int
) -> None:
    write_events(ledger, 3)
    refuse = Reply(status=status, body=b"missing or wrong bearer token", content_type="text/plain")
    with scripted_receiver(lambda n, seen: refuse) as receiver:
        with (
            shipper(ledger, receiver.url, token="wrong") as ship,
            pytest.raises(ShippingError) as failed,
        ):
            ship.ship(max_wait=30)
        assert len(receiver.seen) == 1  # not retried
        assert receiver.seen[0].headers["authorization"] == "Bearer wrong"
    message = str(failed.value)
    assert f"HTTP {status}" in message and "wrong bearer token" in message
    assert "check the token" in message and destination_url(receiver.url) in message
    assert status_of(ledger, destination_url(receiver.url)).backlog == 3


def test_not_an_otlp_endpoint_stops_shipping(ledger: Ledger) -> None:
    write_events(ledger, 1)
    with (
        scripted_receiver(lambda n, seen: Reply(status=404)) as receiver,
        shipper(ledger, receiver.url) as ship,
        pytest.raises(ShippingError) as failed,
    ):
        ship.ship(max_wait=30)
    assert "HTTP 404" in str(failed.value) and "OTLP/HTTP traces endpoint" in str(failed.value)


def test_retry_after_is_honoured(ledger: Ledger) -> None:
    ids = write_events(ledger, 5)
    busy = Reply(status=429, headers=(("Retry-After", "1"),))
    with (
        scripted_receiver(lambda n, seen: busy if n == 0 else ok()) as receiver,
        shipper(ledger, receiver.url) as ship,
    ):
        report = ship.ship(max_wait=60)
    first, second = receiver.seen
    assert second.at - first.at >= 0.9  # the shipper's own backoff is 10 ms here
    assert first.span_ids == second.span_ids == tuple(ids)
    assert report.ok and (report.requests, report.retries) == (2, 1)


def test_a_server_error_is_retried_with_backoff(ledger: Ledger) -> None:
    write_events(ledger, 2)
    answers = {0: Reply(status=503), 1: Reply(status=500), 2: Reply(status=502)}
    with (
        scripted_receiver(lambda n, seen: answers.get(n, ok())) as receiver,
        shipper(ledger, receiver.url) as ship,
    ):
        report = ship.ship(max_wait=60)
    assert len(receiver.seen) == 4 and report.ok and report.retries == 3


@pytest.mark.parametrize("status", [400, 413])
def test_a_request_refused_for_its_content_is_split_until_single_spans(
    ledger: Ledger, status: int
) -> None:
    write_events(ledger, 5)
    poisons = write_events(ledger, 1, name="poison") + write_events(ledger, 1, name="poison")
    write_events(ledger, 9)
    refuse = Reply(status=status, body=b"too big or bad", content_type="text/plain")
    script = refusing(lambda name: name == "poison", lambda refused: refuse)
    with scripted_receiver(script) as receiver, shipper(ledger, receiver.url) as ship:
        report = ship.ship(max_wait=60)
    assert [r.event_id for r in report.rejected] == poisons
    assert all(r.message == f"HTTP {status}: too big or bad" for r in report.rejected)
    singles = [seen.span_ids for seen in receiver.seen if len(seen.span_ids) == 1]
    assert {ids[0] for ids in singles} >= set(poisons)  # each refused alone at the end
    every = {r.id for r in stored_records(ledger)}
    assert set(receiver.accepted) == every - set(poisons)
    assert report.remaining == 0 and report.shipped == 16


def test_partial_success_without_ids_is_resolved_by_halving(ledger: Ledger) -> None:
    write_events(ledger, 3)
    poisons = write_events(ledger, 1, name="poison")
    write_events(ledger, 6)
    poisons += write_events(ledger, 1, name="poison")
    write_events(ledger, 2)
    anonymous = refusing(
        lambda name: name == "poison",
        lambda refused: partial(len(refused), f"{len(refused)} span(s) over quota"),
    )
    with scripted_receiver(anonymous) as receiver:
        with shipper(ledger, receiver.url) as ship:
            report = ship.ship(max_wait=60)
        requests = len(receiver.seen)
        with shipper(ledger, receiver.url) as again:
            assert again.ship(max_wait=60).requests == 0  # refused ones are never re-sent
        assert len(receiver.seen) == requests
    assert [r.event_id for r in report.rejected] == poisons
    assert {r.message for r in report.rejected} == {"1 span(s) over quota"}
    assert isinstance(ledger, Outbox)
    kept = ledger.rejections(destination_url(receiver.url))
    assert [(r.event_id, r.message) for r in kept] == [
        (r.event_id, r.message) for r in report.rejected
    ]
    assert all(isinstance(r, Rejection) for r in kept)
    assert status_of(ledger, destination_url(receiver.url)).rejected == 2


def test_partial_success_naming_the_ids_is_taken_at_its_word(ledger: Ledger) -> None:
    write_events(ledger, 4)
    poisons = write_events(ledger, 2, name="poison")

    def named(number: int, seen: Any) -> Reply:
        refused = [i for i, name in zip(seen.span_ids, seen.names, strict=True) if name == "poison"]
        text = "; ".join(f"{i}: bad value" for i in refused)
        return partial(len(refused), f"{len(refused)} span(s) not stored ({text})")

    with scripted_receiver(named) as receiver, shipper(ledger, receiver.url) as ship:
        report = ship.ship(max_wait=60)
    assert len(receiver.seen) == 1  # no halving needed
    assert [r.event_id for r in report.rejected] == poisons


def test_a_stalled_destination_times_out_and_is_retried(ledger: Ledger) -> None:
    write_events(ledger, 3)
    with (
        stalling_socket() as port,
        shipper(ledger, f"http://127.0.0.1:{port}", timeout=0.3) as ship,
    ):
        started = time.monotonic()
        report = ship.ship(max_wait=1.5)
        took = time.monotonic() - started
    assert report.gave_up and report.remaining == 3 and report.retries >= 2
    assert report.last_error == "no answer in time (timed out)"
    assert took < 30  # a bound (max_wait), not a speed


def test_a_shipping_client_knows_its_destination_from_the_start(db_path: Path) -> None:
    """stats and prune know the destination before the background thread's first look."""
    with DecisionTraceClient(db_path, ship_to="http://127.0.0.1:9", shutdown_timeout_s=1) as client:
        (status,) = client.shipping_status()
        assert status.destination == "http://127.0.0.1:9/v1/traces"
        assert status.position == 0


def test_a_ledger_of_the_previous_release_migrates_and_ships_its_whole_history(
    db_path: Path,
) -> None:
    """A schema-2 ledger (before the outbox) gains the outbox tables in place, keeps its
    events, and every one of them is the new destination's backlog."""
    import sqlite3

    ledger = open_ledger(db_path)
    ids = write_events(ledger, 7)
    ledger.close()
    make_older_ledger(db_path, 2)  # what the release before the outbox left

    old = open_ledger(db_path, read_only=True)  # read as it is, not migrated
    assert isinstance(old, Outbox) and old.outbox_status() == []
    old.close()

    ledger = open_ledger(db_path)
    try:
        assert isinstance(ledger, Outbox)
        assert ledger.register_destination("http://ledger:4318/v1/traces") == 0
        (status,) = ledger.outbox_status()
        assert status.backlog == 7
        assert [record.id for _, record in ledger.iter_records()] == ids
    finally:
        ledger.close()
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE name = 'events_by_actor_type'"
    ).fetchone() == (1,)
    conn.close()
