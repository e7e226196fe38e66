"""Bad inputs at the call side: a value the ledger cannot hold is refused by the call that
made it (``InvalidInputError`` naming the field) or made plain text as documented, never
left to fail later in the writer, where it would cost the events batched with it; an
application's exception always leaves ``client.span()`` unchanged; and query bounds
beyond the storable range never raise an untyped error (API and CLI)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from reliability_support import is_postgres, ledger_bytes

from decision_trace import (
    DecisionTraceClient,
    DecisionTraceError,
    EventNotFoundError,
    InvalidInputError,
)
from decision_trace.cli import main
from decision_trace.ecommerce import EcommerceClient

pytestmark = pytest.mark.usefixtures("ledger_target")

UTC = timezone.utc
FIRST = datetime(1970, 1, 1, tzinfo=UTC)
"""The earliest time an event can have: OTLP sends a span's time as unsigned nanoseconds."""
LAST = datetime(2262, 4, 11, 23, 47, 16, 854775, tzinfo=UTC)
"""The latest, to the microsecond: the ledger stores signed 64-bit nanoseconds."""
LEDGER_FIRST = datetime(1677, 9, 21, 0, 12, 43, 145225, tzinfo=UTC)
"""The earliest time a signed 64-bit nanosecond count (an SQLite integer) holds."""


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("this exception cannot describe itself")


class NoOffset(tzinfo):
    """A tzinfo that knows no offset: Python treats such datetimes as naive."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None


class FailingOffset(tzinfo):
    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        raise RuntimeError("no offset today")


OUT_OF_RANGE = [
    pytest.param(datetime(1600, 1, 1), id="1600"),
    pytest.param(datetime(9999, 1, 1), id="9999"),
    pytest.param(datetime.min, id="min"),
    pytest.param(datetime.max.replace(tzinfo=UTC), id="max-aware"),
    pytest.param(LEDGER_FIRST - timedelta(microseconds=1), id="just-before-1677"),
    pytest.param(datetime(1960, 1, 1), id="1960"),
    pytest.param(FIRST - timedelta(microseconds=1), id="just-before-1970"),
    pytest.param(LAST + timedelta(microseconds=1), id="just-after-2262"),
    pytest.param(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))), id="year-0-in-utc"),
    pytest.param(datetime(1, 1, 1, tzinfo=FailingOffset()), id="failing-tzinfo"),
]


def _stored(client: DecisionTraceClient, event_ids: list[str]) -> int:
    assert client.flush()
    return sum(client.get_event(event_id) is not None for event_id in event_ids)


def _good(client: DecisionTraceClient, index: int) -> str:
    return client.trace("good.event", f"good {index}").by_system("s").record()


# -- timestamps ------------------------------------------------------------------------


@pytest.mark.parametrize("when", OUT_OF_RANGE)
def test_out_of_range_timestamps_raise_naming_the_field(
    client: DecisionTraceClient, when: datetime
) -> None:
    builder = client.trace("backfill.event").by_system("importer")
    with pytest.raises(InvalidInputError) as info:
        builder.at(when)
    assert info.value.field == "timestamp"
    # The builder is still usable: the bad call changed nothing.
    event = client.get_event(builder.record())
    assert event is not None
    assert abs(event.timestamp - datetime.now(UTC)) < timedelta(hours=1)


def test_the_first_and_last_storable_times_are_stored_and_exported_exactly(
    make_client: Callable[..., DecisionTraceClient], durability: str
) -> None:
    otlp = InMemorySpanExporter()
    client = make_client(durability=durability, exporters=[otlp])
    no_offset = datetime(2024, 5, 6, 7, 8, 9, tzinfo=NoOffset())
    cases = {
        FIRST: FIRST,
        LAST: LAST,
        LAST.replace(tzinfo=None): LAST,  # naive is UTC
        no_offset: no_offset.replace(tzinfo=UTC),  # no offset is naive, so UTC
    }
    for when, expected in cases.items():
        event = client.get_event(client.trace("backfill.event").by_system("s").at(when).record())
        assert event is not None and event.timestamp == expected
    assert client.flush()
    spans = otlp.get_finished_spans()
    assert len(spans) == len(cases)
    assert encode_spans(spans).SerializeToString()  # what OTLP sends: every time fits


# -- one bad input among 600 good ones ---------------------------------------------------


def _bad_at(client: DecisionTraceClient) -> str | None:
    builder = client.trace("bad.event").by_system("s")
    with pytest.raises(InvalidInputError) as info:
        builder.at(datetime(9999, 1, 1))
    assert info.value.field == "timestamp"
    return None


def _bad_failed(client: DecisionTraceClient) -> str | None:
    return client.trace("bad.event").by_system("s").failed(ValueError("bad \ud800 byte")).record()


def _bad_failed_str(client: DecisionTraceClient) -> str | None:
    return client.trace("bad.event").by_system("s").failed(BrokenStr()).record()


def _bad_span(client: DecisionTraceClient) -> str | None:
    error = RuntimeError("bad \udcff key")
    span = client.span("bad.event")
    with pytest.raises(RuntimeError) as info, span as trace:
        trace.by_system("s")
        raise error
    assert info.value is error
    return span.event_id


BAD = {
    "at-9999": (_bad_at, None),
    "failed-surrogate": (_bad_failed, "ValueError: bad \ufffd byte"),
    "failed-broken-str": (_bad_failed_str, "BrokenStr: <exception str() failed>"),
    "span-surrogate": (_bad_span, "RuntimeError: bad \ufffd key"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_one_bad_input_among_600_costs_no_good_event(
    client: DecisionTraceClient, case: str
) -> None:
    make_bad, stored_error = BAD[case]
    good = [_good(client, i) for i in range(300)]
    bad_id = make_bad(client)
    good += [_good(client, i) for i in range(300, 599)]
    assert _stored(client, good) == 599
    assert client.stats().failed == 0
    if stored_error is None:
        assert bad_id is None
        assert client.query(event_types="bad.event") == []
    else:
        assert bad_id is not None
        event = client.get_event(bad_id)
        assert event is not None and event.error == stored_error


# -- the application's exception leaves span() unchanged --------------------------------


class RaisingProcessor(SpanProcessor):
    """A third-party span processor that fails on every span (the SDK does not catch it)."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        raise RuntimeError("processor broke")


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(ValueError("plain"), id="plain"),
        pytest.param(ValueError("lone \ud800 surrogate"), id="surrogate"),
        pytest.param(BrokenStr(), id="broken-str"),
        pytest.param(KeyboardInterrupt(), id="keyboard-interrupt"),
    ],
)
def test_app_exception_propagates_unchanged_from_span(
    client: DecisionTraceClient, error: BaseException
) -> None:
    span = client.span("job.run")
    with pytest.raises(type(error)) as info, span as trace:
        trace.by_compute("job")
        raise error
    assert info.value is error
    event = client.get_event(span.event_id or "")
    assert event is not None and event.outcome.value == "failure"
    assert event.error is not None and event.error.startswith(type(error).__name__ + ": ")


def test_app_exception_survives_a_failure_to_record_it(
    client: DecisionTraceClient, caplog: pytest.LogCaptureFixture
) -> None:
    client.tracer_provider.add_span_processor(RaisingProcessor())
    error = ValueError("the application's own")
    with (
        caplog.at_level(logging.ERROR, logger="decision_trace"),
        pytest.raises(ValueError) as info,
        client.span("job.run") as trace,
    ):
        trace.by_compute("job")
        raise error
    assert info.value is error
    assert any("could not record failed span" in r.getMessage() for r in caplog.records)
    # Without an exception of the application's, the failure is the caller's to see.
    with pytest.raises(RuntimeError, match="processor broke"), client.span("job.run") as trace:
        trace.by_compute("job")


# -- service_name ----------------------------------------------------------------------


@pytest.mark.parametrize("source", ["argument", "environment"])
def test_service_name_is_plain_text_and_costs_no_event(
    make_client: Callable[..., DecisionTraceClient],
    monkeypatch: pytest.MonkeyPatch,
    durability: str,
    source: str,
) -> None:
    if source == "argument":
        client = make_client(durability=durability, service_name="shop-\ud800")
    else:  # an undecodable byte in the environment arrives as a lone surrogate
        monkeypatch.setenv("OTEL_SERVICE_NAME", "shop-\udcff")
        client = make_client(durability=durability)
    ids = [_good(client, i) for i in range(600)]
    assert _stored(client, ids) == 600
    assert client.stats().failed == 0
    event = client.get_event(ids[0])
    assert event is not None and event.service_name == "shop-\ufffd"


def test_service_name_of_the_wrong_type_raises_naming_the_field(ledger_target: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        DecisionTraceClient(db_path=ledger_target, service_name=42)  # type: ignore[arg-type]
    assert info.value.field == "service_name"
    # Refused before the ledger was touched: no file, or no table in the schema.
    if is_postgres(ledger_target):
        assert ledger_bytes(ledger_target) == b""
    else:
        assert not Path(ledger_target).exists()


@pytest.fixture(params=["batch", "sync"])
def durability(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param


# -- any builder input: stored, or refused at the call ----------------------------------

_hostile_text = st.text(
    alphabet=st.one_of(
        st.characters(exclude_categories=()),  # every code point, lone surrogates too
        st.sampled_from(["\x00", "\ud800", "\udfff", "😀", "'", '"', "%", "\n"]),
    ),
    max_size=20,
)
_any_value = st.one_of(
    _hostile_text,
    st.none(),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.datetimes(timezones=st.one_of(st.none(), st.timezones())),
    st.lists(_hostile_text, max_size=3),
    st.dictionaries(_hostile_text, _hostile_text, max_size=3),
)
_exceptions = st.builds(
    lambda kind, message: kind(message),
    st.sampled_from([ValueError, KeyError, RuntimeError, OSError, BrokenStr]),
    _hostile_text,
)
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("by_user"), _any_value, _any_value),
        st.tuples(st.just("by_ai_agent"), _any_value, _any_value),
        st.tuples(st.just("by_external"), _any_value, _any_value),
        st.tuples(st.just("because"), _any_value, _any_value),
        st.tuples(st.just("affecting"), _any_value, _any_value),
        st.tuples(st.just("with_tags"), _any_value, _any_value),
        st.tuples(st.just("with_metadata"), _any_value, _any_value),
        st.tuples(st.just("failed"), st.one_of(_any_value, _exceptions), st.none()),
        st.tuples(st.just("at"), _any_value, st.none()),
        st.tuples(st.just("with_confidence"), _any_value, st.none()),
        st.tuples(st.just("with_risk"), _any_value, st.none()),
        st.tuples(st.just("child_of"), _any_value, st.none()),
        st.tuples(st.just("affecting_inventory"), _any_value, _any_value),
        st.tuples(st.sampled_from(["pending", "succeeded"]), st.none(), st.none()),
    ),
    max_size=6,
)


def _apply(builder: Any, step: tuple[str, Any, Any]) -> None:
    name, first, second = step
    if name == "by_user":
        builder.by_user(first, second, email=second, role=first)
    elif name == "by_ai_agent":
        builder.by_ai_agent(first, second, model=second, version=first)
    elif name == "by_external":
        builder.by_external(first, second, service_name=second)
    elif name == "because":
        builder.because(first, {"k": second}, [{"a": second}], {"a": first})
    elif name == "affecting":
        builder.affecting("order", first, {"s": second}, state_before={"b": first})
    elif name == "with_tags":
        builder.with_tags(first, second)
    elif name == "with_metadata":
        builder.with_metadata({"m": first}, n=second)
    elif name == "affecting_inventory":
        builder.affecting_inventory(first, second, first, {"w": second})
    elif name in ("pending", "succeeded"):
        getattr(builder, name)()
    else:
        getattr(builder, name)(first)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(event_type=_hostile_text, description=_hostile_text, steps=_steps)
def test_any_builder_input_is_stored_or_refused_at_the_call(
    make_client: Callable[..., DecisionTraceClient],
    event_type: str,
    description: str,
    steps: list[tuple[str, Any, Any]],
) -> None:
    """Sync mode writes in record(): anything the writer could not store would raise there."""
    client = _sync_client(make_client)
    try:
        builder = client.trace(event_type or "x", description)
    except InvalidInputError:
        return
    for step in steps:
        # Refused at the call (InvalidInputError naming the field; EventNotFoundError for
        # an unknown parent): the promise.
        with contextlib.suppress(InvalidInputError, EventNotFoundError):
            _apply(builder, step)
    event = client.get_event(builder.record())
    assert event is not None


_SYNC: dict[int, DecisionTraceClient] = {}


def _sync_client(make_client: Callable[..., DecisionTraceClient]) -> DecisionTraceClient:
    # One client per test (hypothesis runs the body many times with the same fixtures).
    client = _SYNC.get(id(make_client))
    if client is None:
        _SYNC.clear()
        client = _SYNC[id(make_client)] = make_client(durability="sync")
    return client


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=_hostile_text.filter(lambda t: t.strip() != ""))
def test_ecommerce_text_inputs_are_stored_or_refused_at_the_call(
    make_client: Callable[..., DecisionTraceClient], text: str
) -> None:
    client = _ECOMMERCE.get(id(make_client))
    if client is None:
        _ECOMMERCE.clear()
        client = _ECOMMERCE[id(make_client)] = make_client(EcommerceClient, durability="sync")
    calls: list[Callable[[], Any]] = [
        lambda: client.payment_failed(text, text, 10, text, text, processor=text),
        lambda: client.order_refunded(text, 5, text, payment_id=text, customer_id=text),
        lambda: client.customer_created(text, text, text, name=text, tier=text),
        lambda: client.shipment_shipped(text, text, text, text),
        lambda: client.anomaly_detected(text, text, 1.0, description=text, model=text),
    ]
    for call in calls:
        try:
            builder = call()
        except InvalidInputError:
            continue
        assert client.get_event(builder.record()) is not None


_ECOMMERCE: dict[int, EcommerceClient] = {}


# -- queries: any bound, any id, any count ------------------------------------------------


def test_query_bounds_beyond_the_storable_range_are_clamped(client: DecisionTraceClient) -> None:
    ids = {
        "first": client.trace("t.first").by_system("s").at(FIRST).record(),
        "now": client.trace("t.now").by_system("s").record(),
        "last": client.trace("t.last").by_system("s").at(LAST).record(),
    }
    everything = set(ids.values())
    plus5 = timezone(timedelta(hours=5))
    minus5 = timezone(timedelta(hours=-5))

    def found(**bounds: Any) -> set[str]:
        return {event.id for event in client.query(limit=None, **bounds)}

    assert found(end=datetime(9999, 1, 1)) == everything
    assert found(start=datetime(1, 1, 1)) == everything
    assert found(start=datetime.min, end=datetime.max) == everything
    assert found(start=datetime(1, 1, 1, tzinfo=plus5)) == everything  # before year 1 in UTC
    assert found(end=datetime(9999, 12, 31, 23, tzinfo=minus5)) == everything  # after 9999
    assert found(start=datetime(9999, 1, 1)) == set()
    assert found(end=datetime(1, 1, 1)) == set()
    assert found(end=FIRST) == set()
    assert found(end=LEDGER_FIRST) == set()
    assert found(start=LEDGER_FIRST) == everything
    assert found(end=FIRST + timedelta(microseconds=1)) == {ids["first"]}
    assert found(start=LAST) == {ids["last"]}
    assert found(start=datetime(1500, 1, 1), end=datetime(2100, 1, 1)) == {
        ids["first"],
        ids["now"],
    }
    with pytest.raises(InvalidInputError) as info:
        client.query(start=datetime(1, 1, 1, tzinfo=FailingOffset()))
    assert info.value.field == "start"


def test_query_entry_points_take_any_id_and_count(client: DecisionTraceClient) -> None:
    event_id = client.trace("t.one").by_system("s").affecting_order("o-1").record()
    huge = 2**70
    assert [e.id for e in client.query(limit=huge)] == [event_id]
    assert client.query(offset=huge) == []
    assert [e.id for e in client.get_object_history("o-1", limit=huge)] == [event_id]
    assert client.search("anything", limit=huge) == []
    assert client.get_event("\ud800") is None
    assert client.query(correlation_id="\ud800") == []
    with pytest.raises(DecisionTraceError):
        client.get_chain("abc\udfff")


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["export", "--since", "0001-01-01"], id="export-since-year-1"),
        pytest.param(["export", "--until", "9999-12-31"], id="export-until-9999"),
        pytest.param(["events", "--since", "1500-01-01", "--until", "9999-01-01"], id="events"),
        pytest.param(["export", "--since", "0001-01-01T00:00+05:00"], id="before-year-1-utc"),
        pytest.param(["events", "--until", "9999-12-31T23:00-05:00"], id="after-9999-utc"),
        pytest.param(["prune", "--older-than", "0001-01-01", "--dry-run"], id="prune-year-1"),
    ],
)
def test_cli_times_beyond_the_storable_range_never_fail_untyped(
    make_client: Callable[..., DecisionTraceClient], ledger_target: str, args: list[str]
) -> None:
    client = make_client(durability="sync")
    event_id = client.trace("t.one").by_system("s").record()
    client.close()
    result = CliRunner().invoke(main, [*args, "--db", ledger_target])
    output = result.stdout + result.stderr
    assert "unexpected" not in output and "Traceback" not in output, output
    assert not isinstance(result.exception, (OverflowError, UnicodeError))
    if result.exit_code == 0:  # clamped: the whole ledger, or nothing before year 1
        assert (event_id in result.stdout) == (args[0] != "prune"), output
    else:  # refused, with a one-line message saying why
        assert result.exit_code in (1, 2), output
        assert output.startswith("Error: ") and output.count("\n") == 1, output
        assert "year" in output or "between" in output, output
