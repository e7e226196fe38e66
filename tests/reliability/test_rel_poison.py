"""One event the store cannot take costs only itself: every other event of its batch is
written, whatever the error (docs/guarantees.md). On both backends, except the test of
the SQLite store's one-statement batch insert."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from reliability_support import stored_ids

from decision_trace._rows import EVENT_COLUMNS
from decision_trace.errors import StoreError
from decision_trace.exporters import SQLiteSpanExporter
from decision_trace.processor import LedgerSpanProcessor
from decision_trace.record import EventRecord, span_id_hex
from decision_trace.store import Store, _event_row

# Hand-made spans that reach the writer with a value Python cannot bind into SQLite
# (the builder refuses such values at the call; spans from elsewhere are not checked).
# Each makes one span through one of two providers sharing the ledger processor:
# ``plain`` (a normal resource) or ``odd`` (a service name with a lone surrogate, which
# the decoder now replaces, so the odd provider's spans are good ones).
BadSpan = Callable[[TracerProvider, TracerProvider], int]


def _start_after_2262(plain: TracerProvider, odd: TracerProvider) -> int:
    span = plain.get_tracer("app").start_span("bad.time", start_time=2**63 + 1)
    span.end(end_time=2**63 + 2)  # beyond int64 nanoseconds: OverflowError when bound
    return span.get_span_context().span_id


def _start_before_1677(plain: TracerProvider, odd: TracerProvider) -> int:
    span = plain.get_tracer("app").start_span("bad.time", start_time=-(2**63) - 5)
    span.end(end_time=-(2**63) - 1)
    return span.get_span_context().span_id


def _surrogate_in_description(plain: TracerProvider, odd: TracerProvider) -> int:
    # A decision span made by hand (not through the builder, which cleans text): the lone
    # surrogate reaches the writer, and UTF-8 cannot hold it (UnicodeEncodeError).
    attributes = {"decision_trace.event_type": "bad.text", "decision_trace.description": "\ud83d"}
    span = plain.get_tracer("app").start_span("bad.text", attributes=attributes)
    span.end()
    return span.get_span_context().span_id


def _surrogate_in_tag(plain: TracerProvider, odd: TracerProvider) -> int:
    attributes = {"decision_trace.event_type": "bad.tag", "decision_trace.tags": ["eu\udc00"]}
    span = plain.get_tracer("app").start_span("bad.tag", attributes=attributes)
    span.end()
    return span.get_span_context().span_id


BAD_SPANS = {
    "start-after-2262": _start_after_2262,
    "start-before-1677": _start_before_1677,
    "surrogate-in-description": _surrogate_in_description,
    "surrogate-in-tag": _surrogate_in_tag,
}


@pytest.fixture
def providers() -> Iterator[tuple[TracerProvider, TracerProvider]]:
    plain = TracerProvider(shutdown_on_exit=False)
    odd = TracerProvider(
        resource=Resource.create({"service.name": "shop-\ud800"}), shutdown_on_exit=False
    )
    yield plain, odd
    plain.shutdown()
    odd.shutdown()


_stored_ids = stored_ids
"""The ids in the ledger, after checking it is intact (SQLite: integrity and FTS5 checks)."""


@pytest.mark.parametrize("bad", list(BAD_SPANS), ids=list(BAD_SPANS))
@pytest.mark.parametrize("durability", ["batch", "sync"])
def test_one_unbindable_event_costs_only_itself(
    ledger_target: str,
    providers: tuple[TracerProvider, TracerProvider],
    durability: str,
    bad: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """599 good events and one bad one in their midst: the 599 are written, the bad one is
    counted as failed (and logged in batch mode, raised in sync mode), flush() is False."""
    caplog.set_level(logging.ERROR, logger="decision_trace")
    plain, odd = providers
    # One batch for all 600 in batch mode: the writer waits for a full batch or 10 s.
    ledger = LedgerSpanProcessor(
        SQLiteSpanExporter(ledger_target),
        durability="batch" if durability == "batch" else "sync",
        max_batch_size=1_000,
        schedule_delay_s=10.0,
    )
    plain.add_span_processor(ledger)
    odd.add_span_processor(ledger)
    tracer = plain.get_tracer("app")
    good: set[str] = set()
    for i in range(600):
        if i == 300:
            if durability == "sync":
                with pytest.raises(StoreError, match="cannot store 1 event"):
                    BAD_SPANS[bad](plain, odd)
            else:
                bad_id = span_id_hex(BAD_SPANS[bad](plain, odd))
            continue
        span = tracer.start_span(f"work.{i}", attributes={"i": i})
        span.end()
        good.add(span_id_hex(span.get_span_context().span_id))

    assert ledger.force_flush() is False
    stats = ledger.stats()
    assert (stats.recorded, stats.written, stats.failed, stats.queued) == (600, 599, 1, 0)
    assert _stored_ids(ledger_target) == good
    if durability == "batch":
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and bad_id in errors[0], errors
    assert ledger.force_flush() is True  # reported once
    ledger.shutdown()


TEXTS = [
    "plain",
    "",
    "emoji 😀 and é",
    'ctl \x01\x1f\n\t"\\ end',
    "\u2028\u2029\ufeff",
    "\U0010ffff",
]


def _record(i: int, text: str | None, start_ns: int, duration_ns: int) -> EventRecord:
    return EventRecord(
        id=f"{i:016x}",
        trace_id=f"{i:032x}",
        parent_id=None if i % 2 else f"{i + 1:016x}",
        start_ns=start_ns,
        duration_ns=duration_ns,
        event_type=f"t.{text}",
        description=text or "",
        actor_type=text,
        actor_id=None,
        actor_name=text,
        actor_json=None if text is None else json.dumps({"name": text}),
        reasoning=text,
        decision_json=None if text is None else json.dumps({"context": {"k": text}}),
        object_types=("order", f"o{text}"),
        object_ids=(f"id-{text}", "2"),
        objects_json=None,
        tags=("a", f"tag {text}"),
        outcome="success",
        error=text,
        metadata_json=None,
        service_name=text,
    )


@pytest.mark.parametrize("with_nul", [False, True], ids=["json-statement", "nul-row-by-row"])
def test_batch_insert_stores_exactly_what_each_value_is(tmp_path: Path, with_nul: bool) -> None:
    """The one-statement batch insert keeps every type and byte that binding each value
    would: integers at the 64-bit edges stay INTEGER, NULL stays NULL, text round-trips
    (NUL, which SQLite's JSON functions cut, sends the batch through executemany)."""
    texts: list[str | None] = [*TEXTS, None]
    if with_nul:
        texts.append("nul \x00 inside")
    edges = [0, 1, -1, 2**63 - 1, -(2**63), 1_700_000_000_123_456_789]
    records = [
        _record(i, texts[i % len(texts)], edges[i % len(edges)], edges[(i + 1) % len(edges)])
        for i in range(1, 60)
    ]
    Store(tmp_path / "ours.db").write(records)
    plain_db = tmp_path / "plain.db"
    Store(plain_db).close()
    conn = sqlite3.connect(plain_db)
    conn.execute("BEGIN")
    for rowid, r in enumerate(records, 1):
        conn.execute(
            f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({','.join('?' * 20)})",
            _event_row(rowid, r),
        )
        conn.executemany(
            "INSERT INTO event_objects VALUES (?, ?, ?, ?, ?)",
            [
                (rowid, pos, t, x, r.start_ns)
                for pos, (t, x) in enumerate(zip(r.object_types, r.object_ids, strict=True))
            ],
        )
        conn.executemany("INSERT INTO event_tags VALUES (?, ?)", [(t, rowid) for t in r.tags])
    conn.execute("COMMIT")
    conn.close()

    def dump(db: Path) -> list[list[tuple[object, ...]]]:
        c = sqlite3.connect(db)
        c.text_factory = bytes  # compare bytes, not what Python decodes
        try:
            tables = []
            for table in ("events", "event_objects", "event_tags"):
                # The salt of each event's chain commitment is random: the rest must match.
                names = [row[1].decode() for row in c.execute(f"PRAGMA table_info({table})")]
                names = [name for name in names if name != "salt"]
                types = ", ".join(f"typeof({name})" for name in names)
                tables.append(
                    c.execute(
                        f"SELECT {', '.join(names)}, {types} FROM {table} ORDER BY 1, 2"
                    ).fetchall()
                )
            return tables
        finally:
            c.close()

    ours = dump(tmp_path / "ours.db")
    assert len(ours[0]) == 59 and len(ours[1]) == 118 and len(ours[2]) > 59
    assert ours == dump(plain_db)
