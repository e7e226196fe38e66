"""Hostile queries: any text to search() returns results or [], never a database error
(SQLite's FTS5, PostgreSQL's tsquery); filter values with SQL meta-characters match
literally. On both backends."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decision_trace import DecisionTraceClient, TraceEvent

pytestmark = pytest.mark.usefixtures("ledger_target")

HOSTILE = [
    "",
    " ",
    '"',
    '""',
    '"unbalanced',
    "'",
    "''; DROP TABLE events; --",
    "AND",
    "OR",
    "NOT",
    "NEAR",
    "AND OR NOT",
    "price AND",
    "OR price",
    "NEAR(price margin, 2)",
    "NEAR/3",
    "*",
    "pri*",
    "^price",
    "-",
    "-price",
    "price -margin",
    ":",
    "description:price",
    "events_fts:price",
    "{description reasoning}: price",
    "(",
    ")",
    "(price",
    "price)",
    "((((",
    "+",
    "price + margin",
    "\x00",
    "price\x00margin",
    "\ud800",
    "price \udfff margin",
    "\U0001f600",
    "💸 price",
    "%",
    "_",
    "\\",
    "price%",
    "\n\t\r",
    "rowid = 1",
    "a" * 100_000,
    " ".join(["price"] * 20_000),
    ("x " * 50_000)[:100_000],
    ('" OR (' * 20_000)[:100_000],
]

EVENTS = [
    ("price.increased", "Price increase approved", "Margin too low after supplier cost rise"),
    ("order.refunded", 'Refund for "broken" item', "Customer said: item -broken- (photo) *sent*"),
    ("note.added", "AND OR NOT NEAR", "Words that are FTS5 keywords: AND, OR, NOT, NEAR"),
    ("note.added", "emoji 💸 and café", "Ünïcödé reasoning with 💸"),
]


@pytest.fixture
def client(make_client: Callable[..., DecisionTraceClient]) -> DecisionTraceClient:
    client = make_client()
    for event_type, description, reasoning in EVENTS:
        client.trace(event_type, description).by_system("pricing").because(
            reasoning, context={"note": description}
        ).record()
    return client


def _check(results: object) -> list[TraceEvent]:
    assert isinstance(results, list)
    assert all(isinstance(e, TraceEvent) for e in results)
    return results


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_search_text_returns_a_list(client: DecisionTraceClient, text: str) -> None:
    _check(client.search(text))


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=st.text(alphabet=st.characters(codec=None), max_size=200))
def test_any_text_searches_without_error(client: DecisionTraceClient, text: str) -> None:
    _check(client.search(text))


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    words=st.lists(
        st.sampled_from(
            ['"', "AND", "OR", "NOT", "NEAR", "*", "-", ":", "(", ")", "^", "+", "price", "\x00"]
        ),
        max_size=30,
    )
)
def test_fts_syntax_soup_searches_without_error(
    client: DecisionTraceClient, words: list[str]
) -> None:
    _check(client.search(" ".join(words)))
    _check(client.search("".join(words)))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("price increase", {"Price increase approved"}),
        ('"broken"', {'Refund for "broken" item'}),
        ("AND OR", {"AND OR NOT NEAR"}),
        ("NEAR", {"AND OR NOT NEAR"}),
        ("💸 café", {"emoji 💸 and café"}),  # symbols are not words: ignored
        ("café", {"emoji 💸 and café"}),
        ("price nonexistentword", set()),
    ],
)
def test_syntax_words_are_searched_as_plain_words(
    client: DecisionTraceClient, text: str, expected: set[str]
) -> None:
    assert {e.description for e in client.search(text)} == expected


META = [
    "%",
    "_",
    "a%b",
    "a_b",
    "*",
    "'",
    "''",
    '"',
    "\\",
    "'; DROP TABLE events; --",
    "1 OR 1=1",
    "?",
    ":name",
    "$1",
    "[x]",
    "\x00nul",
    "NULL",
]


def test_filter_values_with_sql_meta_characters_match_literally(
    make_client: Callable[..., DecisionTraceClient],
) -> None:
    client = make_client()
    ids = {}
    for index, value in enumerate(META):
        ids[value] = (
            client.trace(f"meta.{index}", "meta")
            .by_user(value, "who")
            .affecting_order(value, {"v": value})
            .with_tags(value)
            .record()
        )
    client.trace("plain.event", "plain").by_user("ab", "who").affecting_order("ab").with_tags(
        "ab"
    ).record()
    for value in META:
        for found in (
            client.query(actor_ids=[value]),
            client.query(object_ids=[value]),
            client.query(tags=[value]),
            client.query(event_types=[f"meta.{META.index(value)}"]),
            client.get_object_history(value),
        ):
            assert [e.id for e in found] == [ids[value]], value
    assert client.query(actor_ids=["%"], tags=["_"]) == []
    assert len(client.query(limit=None)) == len(META) + 1
