"""Bad values: whatever goes into context, alternatives, state and metadata is stored by
the documented coercion and read back as exactly that, or refused with an
InvalidInputError naming the field; never a crash, never a truncated value."""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import math
from collections.abc import Callable
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_support import is_postgres

from decision_trace import DecisionTraceClient, InvalidInputError, TraceEvent
from decision_trace._json import MAX_DEPTH

pytestmark = pytest.mark.usefixtures("ledger_target")


class Color(enum.Enum):
    RED = "red"
    NUMBER = 7
    NESTED = ("a", 1)


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass
class Point:
    x: Any
    label: Any


# -- the documented coercion, written out independently of the implementation -----------


def documented(value: Any) -> Any:
    """What docs/recording.md and the attributes.py docstring say ``value`` is stored as."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Enum):
        return documented(value.value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, Decimal):
        if value.is_nan():
            return "NaN"
        if value.is_infinite():
            return "Infinity" if value > 0 else "-Infinity"
        as_float = float(value)
        if math.isfinite(as_float) and Decimal(repr(as_float)) == value:
            return as_float
        return str(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: documented(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): documented(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted((documented(v) for v in value), key=canonical)
    if isinstance(value, (list, tuple)):
        return [documented(v) for v in value]
    raise AssertionError(f"no documented rule for {type(value)}")


def canonical(value: Any) -> str:
    """Strict comparison form: 1, 1.0 and true differ; so do key orders."""
    return json.dumps(value, ensure_ascii=True, allow_nan=False)


# -- what PostgreSQL gives back (docs/postgres.md, "Differences from SQLite") ---------------


def pg_text(text: str) -> str:
    """``text`` as PostgreSQL holds it: U+0000 and every lone surrogate become U+FFFD (a
    high surrogate right before a low one is one character, and is kept)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if (
            "\ud800" <= char <= "\udbff"
            and i + 1 < len(text)
            and "\udc00" <= text[i + 1] <= "\udfff"
        ):
            out.append(text[i : i + 2])
            i += 2
            continue
        out.append("\ufffd" if char == "\x00" or "\ud800" <= char <= "\udfff" else char)
        i += 1
    return "".join(out)


def pg_json(value: Any) -> Any:
    """The documented form ``value`` (a JSON value) as read back from ``jsonb``: strings
    by :func:`pg_text`, keys too; a number as ``jsonb`` prints it, in positional notation
    (``1e+16`` is read back as the integer ``10000000000000000``, ``-0.0`` as ``0.0``)."""
    if isinstance(value, str):
        return pg_text(value)
    if isinstance(value, float):
        return 0.0 if value == 0 else json.loads(format(Decimal(repr(value)), "f"))
    if isinstance(value, list):
        return [pg_json(item) for item in value]
    if isinstance(value, dict):
        return {pg_text(key): pg_json(item) for key, item in value.items()}
    return value  # None, booleans, integers


def stored_form(value: Any, ledger_target: str) -> str:
    """The strict comparison form of what the ledger at ``ledger_target`` gives back for the
    documented form ``value``: exactly it on SQLite; on PostgreSQL :func:`pg_json`, with
    keys in any order (``jsonb`` keeps no key order)."""
    if not is_postgres(ledger_target):
        return canonical(value)
    return json.dumps(pg_json(value), ensure_ascii=True, allow_nan=False, sort_keys=True)


def read_form(value: Any, ledger_target: str) -> str:
    """The same comparison form for a value read back (keys sorted on PostgreSQL)."""
    if not is_postgres(ledger_target):
        return canonical(value)
    return json.dumps(value, ensure_ascii=True, allow_nan=False, sort_keys=True)


# -- values ---------------------------------------------------------------------------

ODD_TEXT = st.text(
    st.one_of(
        st.characters(),
        st.sampled_from(["\x00", "\ud800", "\udfff", "\udc00x"[:1], "😀", "\u2028", "\ufeff"]),
    ),
    max_size=40,
)
HASHABLE_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**4299), max_value=10**4299).filter(lambda n: abs(n) > 2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=False, allow_infinity=True),
    st.sampled_from([Decimal("NaN"), Decimal("-NaN"), Decimal("19.99"), Decimal("1e400")]),
    ODD_TEXT,
    st.datetimes(timezones=st.sampled_from([None, timezone.utc, timezone(timedelta(hours=-5))])),
    st.dates(),
    st.times(),
    st.timedeltas(),
    st.uuids(),
    st.binary(max_size=40),
    st.sampled_from(list(Color) + list(Level)),
)
LEAVES = st.one_of(
    HASHABLE_LEAVES,
    st.decimals(allow_nan=True, allow_infinity=True),  # signalling NaNs cannot be hashed
    st.builds(Point, HASHABLE_LEAVES, ODD_TEXT),
)
VALUES = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(ODD_TEXT, children, max_size=4),
        st.frozensets(HASHABLE_LEAVES, max_size=4),
        st.sets(HASHABLE_LEAVES, max_size=4),
        st.builds(Point, children, children),
    ),
    max_leaves=12,
)


def _record_everywhere(client: DecisionTraceClient, value: Any) -> str:
    return (
        client.trace("value.test", "odd values")
        .by_user("u1", "User", v=value)
        .affecting_order("ord-1", {"v": value}, state_before={"v": value}, state_after={"v": 1})
        .because("testing odd values", context={"v": value}, alternatives=[{"v": value}])
        .with_metadata(v=value)
        .record()
    )


def _read_everywhere(event: TraceEvent) -> list[Any]:
    assert event.decision is not None and event.actor is not None
    order = event.objects[0]
    assert order.state_before is not None
    return [
        event.actor.metadata["v"],
        order.state["v"],
        order.state_before["v"],
        event.decision.context["v"],
        event.decision.alternatives[0]["v"],
        event.metadata["v"],
    ]


@pytest.fixture(params=["batch", "sync"])
def client(
    request: pytest.FixtureRequest, make_client: Callable[..., DecisionTraceClient]
) -> DecisionTraceClient:
    return make_client(durability=request.param)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(value=VALUES)
def test_any_value_is_stored_as_documented(
    client: DecisionTraceClient, ledger_target: str, value: Any
) -> None:
    event_id = _record_everywhere(client, value)
    event = client.get_event(event_id)
    assert event is not None
    want = stored_form(documented(value), ledger_target)
    for stored in _read_everywhere(event):
        assert read_form(stored, ledger_target) == want
    stats = client.stats()
    assert stats.failed == 0


UNSUPPORTED = [
    object(),
    complex(1, 2),
    {1, 2}.__iter__(),
    Exception("not data"),
    10**4300,  # 4301 digits
    -(10**4300),
]


@pytest.mark.parametrize("bad", UNSUPPORTED, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize(
    ("field", "call"),
    [
        ("context", lambda b, v: b.because("r", context={"k": [1, {"x": v}]})),
        ("alternatives", lambda b, v: b.because("r", alternatives=[{"k": v}])),
        ("order state", lambda b, v: b.affecting_order("o", {"k": v})),
        ("order state_before", lambda b, v: b.affecting_order("o", state_before={"k": v})),
        ("metadata", lambda b, v: b.with_metadata(k=v)),
        ("actor.metadata", lambda b, v: b.by_user("u", k=v)),
    ],
)
def test_unstorable_values_raise_naming_the_field(
    client: DecisionTraceClient, bad: Any, field: str, call: Callable[[Any, Any], Any]
) -> None:
    builder = client.trace("bad.value", "bad").by_system("s")
    with pytest.raises(InvalidInputError) as info:
        call(builder, bad)
    assert info.value.field.startswith(field), info.value.field
    # Nothing half-recorded; the client keeps working.
    good = client.trace("good.value").by_system("s").because("ok", context={"k": 1}).record()
    assert client.get_event(good) is not None
    assert client.flush() and client.stats().failed == 0


def _cycle_dict() -> Any:
    d: dict[str, Any] = {"a": 1}
    d["self"] = d
    return d


def _cycle_list() -> Any:
    items: list[Any] = [1, 2]
    items.append({"inner": items})
    return items


def _cycle_dataclass() -> Any:
    p = Point(1, None)
    p.label = [p]
    return p


def _deep(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "make", [_cycle_dict, _cycle_list, _cycle_dataclass, lambda: _deep(100_000)]
)
def test_cycles_and_absurd_nesting_raise_naming_the_field(
    client: DecisionTraceClient, make: Callable[[], Any]
) -> None:
    with pytest.raises(InvalidInputError) as info:
        client.trace("x.y").because("r", context={"k": make()})
    assert info.value.field.startswith("context")
    with pytest.raises(InvalidInputError) as info:
        client.trace("x.y").with_metadata(k=make())
    assert info.value.field.startswith("metadata")


@pytest.mark.parametrize("depth", [10, 200, MAX_DEPTH - 1])
def test_deep_but_reasonable_nesting_is_stored(client: DecisionTraceClient, depth: int) -> None:
    value = _deep(depth)
    event_id = client.trace("x.y").by_system("s").because("deep", context={"k": value}).record()
    event = client.get_event(event_id)
    assert event is not None and event.decision is not None
    assert event.decision.context["k"] == value


@pytest.mark.parametrize(
    "value",
    [
        10**4299,  # 4300 digits: the largest documented integer
        -(10**4299),
        {"money": Decimal("19.99"), "big": 10**4299},  # the same through the coercion path
        [Decimal("0.1234567890123456789"), 2**64, -(2**1000)],
    ],
    ids=["max-int", "min-int", "max-int-coerced", "mixed"],
)
def test_huge_integers_stay_exact(
    client: DecisionTraceClient, ledger_target: str, value: Any
) -> None:
    event_id = client.trace("x.y").by_system("s").because("ints", context={"v": value}).record()
    event = client.get_event(event_id)
    assert event is not None and event.decision is not None
    want = stored_form(documented(value), ledger_target)
    assert read_form(event.decision.context["v"], ledger_target) == want


TEN_MB = 10 * 1024 * 1024


def test_ten_megabyte_strings_are_stored_whole(
    client: DecisionTraceClient, ledger_target: str
) -> None:
    ascii_big = "a" * TEN_MB
    odd_big = ("😀\x00é\ud800" * (TEN_MB // 4))[:TEN_MB]
    # JSON keeps even NUL and lone surrogates; PostgreSQL holds neither (U+FFFD instead).
    odd_stored = pg_text(odd_big) if is_postgres(ledger_target) else odd_big
    event_id = (
        client.trace("big.value", "big " + ascii_big)
        .by_system("s")
        .affecting_order("o", {"blob": odd_big})
        .because("big" + ascii_big, context={"big": odd_big})
        .with_metadata(big=ascii_big)
        .record()
    )
    # Written before the read: a read waits up to 30 s for the writer, and storing 50 MB
    # of text (150 MB of escaped JSON) can take longer on a loaded machine.
    assert client.flush(timeout_s=240)
    event = client.get_event(event_id)
    assert event is not None and event.decision is not None
    assert event.description == "big " + ascii_big
    assert event.decision.reasoning == "big" + ascii_big
    assert event.decision.context["big"] == odd_stored
    assert event.objects[0].state["blob"] == odd_stored
    assert event.metadata["big"] == ascii_big
    assert client.flush() and client.stats().failed == 0


def test_text_fields_replace_lone_surrogates_as_documented(
    client: DecisionTraceClient, ledger_target: str
) -> None:
    event_id = (
        client.trace("odd.text", "nul \x00 emoji 😀 surrogate \ud800 end")
        .by_user("user-\udfff", "Name\x00")
        .because("why \ud800\x00")
        .with_tags("tag-\ud800", "😀")
        .record()
    )
    event = client.get_event(event_id)
    assert event is not None and event.actor is not None and event.decision is not None
    # NUL is kept, as PostgreSQL can hold it: U+FFFD there (docs/postgres.md).
    nul = "\ufffd" if is_postgres(ledger_target) else "\x00"
    assert event.description == f"nul {nul} emoji 😀 surrogate \ufffd end"
    assert event.actor.id == "user-\ufffd"
    assert event.actor.name == f"Name{nul}"
    assert event.decision.reasoning == f"why \ufffd{nul}"
    assert event.tags == ("tag-\ufffd", "😀")


def test_nesting_beyond_the_limit_is_refused_not_a_poisoned_batch(
    client: DecisionTraceClient,
) -> None:
    """Even with a raised recursion limit, a value SQLite's JSON functions would refuse
    is rejected at the call, and the events around it are all written."""
    import sys

    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        before = [client.trace("ok.before").by_system("s").record() for _ in range(5)]
        for depth in (MAX_DEPTH + 1, 3000):
            with pytest.raises(InvalidInputError, match="nested") as info:
                client.trace("x.y").by_system("s").because("r", context={"k": _deep(depth)})
            assert info.value.field == "context"
        ok = (
            client.trace("ok.deep").by_system("s").because("r", context={"k": _deep(MAX_DEPTH - 1)})
        )
        after = [ok.record()] + [client.trace("ok.after").by_system("s").record() for _ in range(5)]
    finally:
        sys.setrecursionlimit(old_limit)
    assert client.flush() and client.stats().failed == 0
    for event_id in before + after:
        assert client.get_event(event_id) is not None
