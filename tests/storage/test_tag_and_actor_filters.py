"""The tag filter answers the same whether its tag is rare (events found from the tag
index, then sorted) or common (the time index walked, each event's tags checked), and the
actor-type filter pages newest first; on both backends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from decision_trace.query import RARE_TAG_ROWS
from decision_trace.record import EventRecord
from decision_trace.storage import EventFilters, Ledger, open_ledger

pytestmark = pytest.mark.usefixtures("ledger_target")

EVENTS = RARE_TAG_ROWS + 400
"""Enough that the common tag is past the rare threshold."""


def record(i: int) -> EventRecord:
    tags = ["common"]
    if i % 97 == 0:
        tags.append("rare")
    return EventRecord(
        id=f"{0xC0FFEE000000 + i:016x}",
        trace_id=f"{0xBEEF + i:032x}",
        parent_id=None,
        # Not in commit order: written in one order, dated in another.
        start_ns=1_700_000_000_000_000_000 + ((i * 7919) % EVENTS) * 1_000_000,
        duration_ns=0,
        event_type="order.created",
        description="",
        actor_type=("ai_agent", "user", "system")[i % 3],
        actor_id=f"a-{i % 5}",
        actor_name=None,
        actor_json=None,
        reasoning=None,
        decision_json=None,
        object_types=(),
        object_ids=(),
        objects_json=None,
        tags=tuple(tags),
        outcome="success",
        error=None,
        metadata_json=None,
        service_name=None,
    )


@pytest.fixture
def ledger(ledger_target: str) -> Iterator[Ledger]:
    opened = open_ledger(ledger_target)
    opened.write([record(i) for i in range(EVENTS)])
    yield opened
    opened.close()


def newest_first(records: list[EventRecord]) -> list[str]:
    return [r.id for r in sorted(records, key=lambda r: r.start_ns, reverse=True)]


@pytest.mark.parametrize("tag", ["rare", "common", "absent"])
def test_a_tag_filter_pages_newest_first_however_many_carry_the_tag(
    ledger: Ledger, tag: str
) -> None:
    expected = newest_first([record(i) for i in range(EVENTS) if tag in record(i).tags])
    assert (tag == "common") == (len(expected) > RARE_TAG_ROWS)
    filters = EventFilters.build(tags=tag)
    assert [e.id for e in ledger.query(filters, limit=30)] == expected[:30]
    assert [e.id for e in ledger.query(filters, limit=30, offset=10)] == expected[10:40]
    assert ledger.count(filters) == len(expected)
    combined = EventFilters.build(tags=tag, actor_types="user")
    wanted = newest_first(
        [record(i) for i in range(EVENTS) if tag in record(i).tags and i % 3 == 1]
    )
    assert [e.id for e in ledger.query(combined, limit=20)] == wanted[:20]
    assert ledger.count(combined) == len(wanted)


def test_an_actor_type_filter_pages_newest_first(ledger: Ledger) -> None:
    expected = newest_first([record(i) for i in range(EVENTS) if i % 3 == 0])
    filters = EventFilters.build(actor_types="ai_agent")
    assert [e.id for e in ledger.query(filters, limit=25)] == expected[:25]
    assert [e.id for e in ledger.query(filters, limit=25, order="asc")] == expected[::-1][:25]
