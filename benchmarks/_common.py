"""Shared helpers for the benchmarks: the event shape, timing, the plain-SQLite baseline.

Not a benchmark itself (``make bench`` runs ``benchmarks/bench_*.py`` only).

Every benchmark compares decision-trace with its physical limit measured in the same run,
prints the medians over repeats and one line ``ratio: ...`` with the target, and exits 0
whether or not the target is met (a missed target is reported, not an error).

``--quick`` on the command line (or ``DECISION_TRACE_BENCH_QUICK=1``) shrinks every size
so the whole set runs in seconds (used by ``tests/test_benchmarks_smoke.py``).
"""

from __future__ import annotations

import gc
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from decision_trace import DecisionTraceClient  # noqa: E402
from decision_trace._rows import EVENT_COLUMNS  # noqa: E402
from decision_trace.record import EventRecord  # noqa: E402

QUICK = "--quick" in sys.argv[1:] or os.environ.get("DECISION_TRACE_BENCH_QUICK") == "1"


def size(full: int, quick: int) -> int:
    """``full`` normally, ``quick`` with ``--quick``."""
    return quick if QUICK else full


def cache_dir() -> Path:
    """Where big reusable files (the 1,000,000-event ledger) are kept between runs."""
    base = os.environ.get("DECISION_TRACE_BENCH_CACHE")
    path = Path(base) if base else Path(tempfile.gettempdir()) / "decision-trace-bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temporary folder removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="dt-bench-") as name:
        yield Path(name)


# --- the event shape ------------------------------------------------------------------

EVENT_TYPES = (
    "order.refunded",
    "order.cancelled",
    "price.changed",
    "inventory.adjusted",
    "payment.captured",
    "shipment.delayed",
    "promotion.applied",
    "fraud.reviewed",
)

_WORD_TEXT = (
    "customer reported damaged item arrived late carrier lost parcel refund approved "
    "policy allows full credit within thirty days margin target competitor lowered "
    "price demand forecast stock level warehouse transfer supplier delay fraud score "
    "threshold exceeded manual review velocity check address mismatch loyalty tier "
    "gold silver bronze promotion eligible basket value shipping cost express "
    "standard region north south east west weekend campaign budget remaining "
    "conversion elasticity model predicts higher revenue lower churn risk inventory "
    "shrinkage audit cycle count variance tolerance exception escalated approved "
    "rejected pending retry gateway timeout declined card issuer authorization "
    "captured partial settlement currency exchange rate tax exemption invoice "
    "duplicate order quantity limit bundle discount coupon expired reissued goodwill "
    "gesture premium subscriber backorder restock eta carrier sla breach "
    "compensation voucher seasonal clearance markdown floor ceiling guardrail "
    "confidence anomaly detected baseline deviation sensor feed batch nightly "
    "reconciliation ledger mismatch resolved"
)
_WORDS = tuple(_WORD_TEXT.split())

_TIERS = ("gold", "silver", "bronze", "none")
_CHANNELS = ("web", "ios", "android", "store", "phone")
_REGIONS = ("eu-west", "us-east", "us-west", "apac")
_ACTIONS = ("replace", "partial_refund", "hold", "escalate", "ignore")


@dataclass(frozen=True)
class EventData:
    """One event of the benchmark shape, as plain data."""

    index: int
    event_type: str
    description: str
    is_agent: bool
    actor_id: str
    actor_name: str
    model: str | None
    objects: tuple[tuple[str, str, dict[str, Any]], ...]
    reasoning: str
    context: dict[str, Any]
    alternative: dict[str, Any]
    rejection: dict[str, str]
    tags: tuple[str, str]


def make_events(count: int, seed: int = 7, *, orders: int | None = None) -> list[EventData]:
    """``count`` events of the issue's shape: a user or AI-agent actor, one or two objects
    with a small state dict, a ~120-character reasoning with a 5-key context, one
    alternative with its rejection reason, two tags."""
    return list(iter_events(count, seed, orders=orders))


def iter_events(count: int, seed: int = 7, *, orders: int | None = None) -> Iterator[EventData]:
    """:func:`make_events` one at a time (the same events for the same arguments), for
    ledgers too big to hold as a list."""
    rng = random.Random(seed)
    order_space = orders if orders is not None else max(10, count // 5)
    for i in range(count):
        is_agent = i % 2 == 1
        words = []
        while sum(len(w) + 1 for w in words) < 120:
            words.append(rng.choice(_WORDS))
        reasoning = " ".join(words)[:120].rstrip()
        order_id = f"ord-{rng.randrange(order_space):07d}"
        objects: list[tuple[str, str, dict[str, Any]]] = [
            ("order", order_id, {"status": rng.choice(("paid", "refunded", "held")), "total": 42.5})
        ]
        if is_agent:
            sku = f"SKU-{rng.randrange(order_space // 4 + 1):06d}"
            objects.append(("product", sku, {"price": round(rng.uniform(5, 500), 2)}))
        action = rng.choice(_ACTIONS)
        yield EventData(
            index=i,
            event_type=EVENT_TYPES[rng.randrange(len(EVENT_TYPES))],
            description=f"Decision {i} on {order_id}",
            is_agent=is_agent,
            actor_id=f"agent-{i % 7}" if is_agent else f"user-{rng.randrange(5000)}",
            actor_name="Pricing Agent" if is_agent else "Support Rep",
            model="gpt-4o" if is_agent else None,
            objects=tuple(objects),
            reasoning=reasoning,
            context={
                "customer_tier": rng.choice(_TIERS),
                "order_total": round(rng.uniform(10, 900), 2),
                "items": rng.randrange(1, 9),
                "channel": rng.choice(_CHANNELS),
                "region": rng.choice(_REGIONS),
            },
            alternative={"action": action, "reason": f"consider {action}"},
            rejection={action: "not justified by the evidence at hand"},
            tags=(rng.choice(("refund", "pricing", "fraud", "ops")), rng.choice(_REGIONS)),
        )


def record_event(
    client: DecisionTraceClient,
    e: EventData,
    *,
    at: datetime | None = None,
    parent: str | None = None,
) -> str:
    """Record one event through the public fluent API."""
    builder = client.trace(e.event_type, e.description)
    if e.is_agent:
        builder.by_ai_agent(e.actor_id, e.actor_name, model=e.model)
    else:
        builder.by_user(e.actor_id, e.actor_name)
    for object_type, external_id, state in e.objects:
        builder.affecting(object_type, external_id, state)
    builder.because(
        e.reasoning,
        context=e.context,
        alternatives=[e.alternative],
        rejection_reasons=e.rejection,
    ).with_tags(*e.tags)
    if at is not None:
        builder.at(at)
    if parent is not None:
        builder.child_of(parent)
    return builder.record()


# --- timing and reporting --------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(
    ours: Callable[[int], float], plain: Callable[[int], float], repeats: int
) -> tuple[list[float], list[float]]:
    """Run both sides ``repeats`` times, alternating which goes first; their seconds."""
    ours_s: list[float] = []
    plain_s: list[float] = []
    for run in range(repeats):
        if run % 2:
            ours_s.append(ours(run))
            plain_s.append(plain(run))
        else:
            plain_s.append(plain(run))
            ours_s.append(ours(run))
    return ours_s, plain_s


def plain_transactions(records: Sequence[EventRecord], per_transaction: int) -> list[PlainRows]:
    """The rows of ``records``, ``per_transaction`` events a transaction, rowids from 1."""
    transactions = []
    next_rowid = 1
    for part in chunks(records, per_transaction):
        transactions.append(plain_rows(part, next_rowid))
        next_rowid += len(part)
    return transactions


def time_plain_inserts(
    path: Path,
    transactions: Sequence[PlainRows],
    synchronous: str = "NORMAL",
    *,
    one_statement: bool = False,
) -> float:
    """Seconds plain ``sqlite3`` takes to commit ``transactions`` (from ``plain_rows``)
    into a fresh file with decision-trace's schema: by ``executemany``, or with
    ``one_statement`` by one ``INSERT ... SELECT ... FROM json_each(?)`` a table (the
    fastest plain way for many rows a transaction; the JSON encoding is timed, as
    binding is for ``executemany``)."""
    empty_schema_file(path)
    conn = plain_connect(path, synchronous=synchronous)
    insert = plain_insert_one_statement if one_statement else plain_insert

    def go() -> None:
        for rows in transactions:
            insert(conn, rows)

    gc.collect()
    seconds = timed(go)
    conn.close()
    return seconds


def header(title: str, target: str) -> None:
    print(f"== {title}")
    print(f"   target: {target}")
    print(f"   mode: {'quick' if QUICK else 'full'}; {machine()}")


def machine() -> str:
    return (
        f"nproc {os.cpu_count()}, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, {platform.machine()}"
    )


def report_ratio(
    label: str, ratio: float, *, at_most: float | None = None, at_least: float | None = None
) -> bool:
    """Print the ratio line; return whether the target is met."""
    if at_most is not None:
        met = ratio <= at_most
        target = f"<= {at_most}x"
    else:
        assert at_least is not None
        met = ratio >= at_least
        target = f">= {at_least}x"
    print(f"ratio {label}: {ratio:.2f}x (target {target}) {'MET' if met else 'MISSED'}")
    return met


def fmt_rate(per_s: float) -> str:
    return f"{per_s:,.0f}/s"


# --- the plain-SQLite limit -------------------------------------------------------------


PlainRows = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]
"""The event, object and tag rows of one transaction."""


def plain_rows(
    records: Sequence[EventRecord], first_rowid: int
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The rows decision-trace's schema holds for ``records`` (built outside any timing)."""
    events, objects, tags = [], [], []
    for rowid, r in enumerate(records, first_rowid):
        events.append(
            (
                rowid,
                r.id,
                r.trace_id,
                r.parent_id,
                r.start_ns,
                r.duration_ns,
                r.event_type,
                r.description,
                r.actor_type,
                r.actor_id,
                r.actor_name,
                r.actor_json,
                r.reasoning,
                r.decision_json,
                r.objects_json,
                json.dumps(list(r.tags), separators=(",", ":")) if r.tags else None,
                r.outcome,
                r.error,
                r.metadata_json,
                r.service_name,
            )
        )
        for position, (object_type, external_id) in enumerate(
            zip(r.object_types, r.object_ids, strict=True)
        ):
            objects.append((rowid, position, object_type, external_id, r.start_ns))
        tags.extend((tag, rowid) for tag in r.tags)
    return events, objects, tags


PLAIN_INSERT_EVENT = (
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({','.join('?' * len(EVENT_COLUMNS))})"
)
PLAIN_INSERT_OBJECT = (
    "INSERT INTO event_objects (event_rowid, position, object_type, external_id, start_ns) "
    "VALUES (?,?,?,?,?)"
)
PLAIN_INSERT_TAG = "INSERT INTO event_tags (tag, event_rowid) VALUES (?,?)"


def plain_connect(path: Path, synchronous: str = "NORMAL") -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


def plain_insert(
    conn: sqlite3.Connection,
    rows: tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]],
) -> None:
    """One transaction: executemany of the events, their objects and tags."""
    events, objects, tags = rows
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(PLAIN_INSERT_EVENT, events)
    conn.executemany(PLAIN_INSERT_OBJECT, objects)
    conn.executemany(PLAIN_INSERT_TAG, tags)
    conn.execute("COMMIT")


def _json_select(columns: int) -> str:
    values = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(columns))
    return f"SELECT {values} FROM json_each(?)"


PLAIN_INSERT_EVENTS_JSON = PLAIN_INSERT_EVENT.split(" VALUES ")[0] + " " + _json_select(20)
PLAIN_INSERT_OBJECTS_JSON = PLAIN_INSERT_OBJECT.split(" VALUES ")[0] + " " + _json_select(5)
PLAIN_INSERT_TAGS_JSON = PLAIN_INSERT_TAG.split(" VALUES ")[0] + " " + _json_select(2)
_plain_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def plain_insert_one_statement(
    conn: sqlite3.Connection,
    rows: tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]],
) -> None:
    """One transaction: the events, their objects and tags, one statement a table."""
    events, objects, tags = rows
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(PLAIN_INSERT_EVENTS_JSON, (_plain_json(events),))
    conn.execute(PLAIN_INSERT_OBJECTS_JSON, (_plain_json(objects),))
    conn.execute(PLAIN_INSERT_TAGS_JSON, (_plain_json(tags),))
    conn.execute("COMMIT")


def empty_schema_file(path: Path) -> None:
    """Create ``path`` with decision-trace's schema (tables, indexes, FTS, triggers)."""
    from decision_trace.store import Store

    Store(path).close()


def db_size(path: Path) -> int:
    """Bytes of a database file and its WAL/SHM companions."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(path) + suffix)
        if p.exists():
            total += p.stat().st_size
    return total


# --- the 1,000,000-event ledger ------------------------------------------------------------

MILLION_START = datetime(2026, 1, 1, tzinfo=timezone.utc)
MILLION_STEP = timedelta(seconds=2.5)
CHAIN_EVERY = 50
"""Every 50th event starts a workflow whose next 3 events are its children."""


def million_file() -> tuple[Path, int]:
    """The shared ledger of 1,000,000 events (20,000 with ``--quick``), built once.

    Built through the public API (batch durability, ``at()`` timestamps 2.5 s apart from
    2026-01-01) and cached in :func:`cache_dir`; rebuilt when missing or incomplete.
    """
    count = size(1_000_000, 20_000)
    path = cache_dir() / f"ledger-{count}.db"
    marker = Path(str(path) + ".done")
    if path.exists() and marker.exists() and marker.read_text() == str(count):
        return path, count
    for suffix in ("", "-wal", "-shm", ".done"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    print(f"   building the {count:,}-event ledger at {path} (once)...", flush=True)
    start = time.perf_counter()
    events = make_events(count, seed=1, orders=count // 5)
    with DecisionTraceClient(db_path=path, service_name="bench") as client:
        parent: str | None = None
        for e in events:
            at = MILLION_START + MILLION_STEP * e.index
            slot = e.index % CHAIN_EVERY
            if slot == 0:
                parent = record_event(client, e, at=at)
            elif slot <= 3:
                record_event(client, e, at=at, parent=parent)
            else:
                record_event(client, e, at=at)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    marker.write_text(str(count))
    print(f"   built in {time.perf_counter() - start:.0f} s", flush=True)
    return path, count


def finished_spans(events: Sequence[EventData], path: Path) -> list[Any]:
    """Record ``events`` through decision-trace and return the finished SDK spans."""
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    spans: list[Any] = []

    class Capture(SpanExporter):
        def export(self, batch: Sequence[Any]) -> SpanExportResult:
            spans.extend(batch)
            return SpanExportResult.SUCCESS

    with DecisionTraceClient(db_path=path) as client:
        client.tracer_provider.add_span_processor(SimpleSpanProcessor(Capture()))
        for e in events:
            record_event(client, e)
    return spans


def chunks(items: Sequence[Any], n: int) -> list[Sequence[Any]]:
    return [items[i : i + n] for i in range(0, len(items), n)]
