"""The wire format: keys and JSON coercion."""

from __future__ import annotations

import dataclasses
import enum
import json
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from decision_trace import Actor, DecisionTraceClient, InvalidInputError, _encode, _json, record
from decision_trace import attributes as keys
from decision_trace import models as _models


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


def test_coercion_rules() -> None:
    when = datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)
    value = {
        "when": when,
        "day": date(2024, 5, 1),
        "money": Decimal("149.99"),
        "precise": Decimal("0.1234567890123456789"),
        "id": uuid.UUID(int=1),
        "raw": b"\x00\xff",
        "tags": {"b", "a"},
        "colour": Colour.RED,
        "point": Point(1, 2),
        "nan": float("nan"),
        "inf": float("inf"),
        "wait": timedelta(seconds=90),
        "tuple": (1, 2),
        1: "int key",
    }
    decoded = json.loads(_json.dumps(value, "context"))
    assert decoded == {
        "when": "2024-05-01T12:30:00+00:00",
        "day": "2024-05-01",
        "money": 149.99,
        "precise": "0.1234567890123456789",
        "id": "00000000-0000-0000-0000-000000000001",
        "raw": "AP8=",
        "tags": ["a", "b"],
        "colour": "red",
        "point": {"x": 1, "y": 2},
        "nan": "NaN",
        "inf": "Infinity",
        "wait": 90.0,
        "tuple": [1, 2],
        "1": "int key",
    }


def test_two_decimal_money_round_trips_exactly() -> None:
    for cents in (1, 99, 14999, 123456789, 999999999999):
        amount = Decimal(cents) / 100
        stored = json.loads(_json.dumps({"total": amount}, "state"))["total"]
        assert Decimal(repr(stored)) == amount


def test_cycles_and_unknown_types_raise_naming_the_field() -> None:
    cyclic: dict[str, object] = {}
    cyclic["self"] = cyclic
    with pytest.raises(InvalidInputError, match=r"context\['self'\]"):
        _json.dumps(cyclic, "context")
    with pytest.raises(InvalidInputError, match=r"context\['obj'\].*object"):
        _json.dumps({"obj": object()}, "context")


def test_huge_ints_stay_exact_until_the_limit() -> None:
    big = 2**200
    assert json.loads(_json.dumps({"n": big}, "context"))["n"] == big
    with pytest.raises(InvalidInputError, match="too large"):
        _json.dumps({"n": 10**5000}, "context")


def test_lone_surrogates_survive_json_and_are_replaced_in_text() -> None:
    assert json.loads(_json.dumps({"s": "a\ud800b"}, "context")) == {"s": "a\ud800b"}
    assert _models.clean_text("a\ud800b") == "a\ufffdb"
    assert _models.clean_text("plain") == "plain"


def test_actor_attributes_use_semantic_conventions() -> None:
    user = _encode.actor_attributes(Actor.user("u1", "Jo", email="jo@x.io", role="support"))
    assert user[keys.USER_ID] == "u1"
    assert user[keys.USER_NAME] == "Jo"
    assert user[keys.USER_EMAIL] == "jo@x.io"
    assert list(user[keys.USER_ROLES]) == ["support"]  # type: ignore[arg-type]
    agent = _encode.actor_attributes(Actor.ai_agent("bot", "Bot", model="gpt-4", version="2"))
    assert agent[keys.GEN_AI_AGENT_ID] == "bot"
    assert agent[keys.GEN_AI_AGENT_NAME] == "Bot"
    assert agent[keys.GEN_AI_REQUEST_MODEL] == "gpt-4"
    assert agent[keys.GEN_AI_AGENT_VERSION] == "2"
    assert agent[keys.GEN_AI_OPERATION_NAME] == "invoke_agent"
    external = _encode.actor_attributes(Actor.external("stripe", service_name="api.stripe.com"))
    assert external[keys.SERVICE_PEER_NAME] == "api.stripe.com"


def test_every_key_is_semconv_or_namespaced() -> None:
    constants = [
        value
        for name, value in vars(keys).items()
        if name.isupper() and isinstance(value, str) and "." in value and " " not in value
    ]
    assert constants
    for key in constants:
        assert key.startswith(("decision_trace.", "user.", "gen_ai.", "service.")), key
    for deprecated in ("enduser.role", "gen_ai.system", "peer.service"):
        assert deprecated not in constants


def test_ns_conversion_treats_naive_as_utc() -> None:
    naive = datetime(2024, 1, 1)
    aware = datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert record.ns_from_datetime(naive, "start") == record.ns_from_datetime(aware, "start")
    assert record.datetime_from_ns(record.ns_from_datetime(aware, "start")) == aware
    with pytest.raises(InvalidInputError, match="start"):
        record.ns_from_datetime("2024-01-01", "start")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "context",
    [
        {1: "first", "1": "last"},  # plain JSON types: the C encoder's fast path
        {1: Decimal("1.5"), "1": "last"},  # a value to coerce: the coercion path
        {True: "first", "true": "last"},
    ],
)
def test_keys_that_become_the_same_string_read_back_the_last(
    make_client: Callable[..., DecisionTraceClient], context: dict[Any, Any]
) -> None:
    """The documented coercion, the same on both encoding paths."""
    client = make_client()
    event_id = client.trace("a.b").by_system("s").because("why", context=context).record()
    event = client.get_event(event_id)
    assert event is not None and event.decision is not None
    assert event.decision.context == {str(next(iter(context))).lower(): "last"}
