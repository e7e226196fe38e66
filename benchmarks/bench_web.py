"""The web view on a 1,000,000-event ledger: each page of a real ``decision-trace serve``
over HTTP, next to the Ledger query that dominates it.

Target: every page answers within 300 ms (the median of ``--requests`` requests; the
95th percentile is printed too), on a 1,000,000-event SQLite ledger.

The limit, measured in the same run: the Ledger call the page cannot do without (the
query of its rows), made directly on the same file in this process. The ratio
page/query is what HTTP, the route and the HTML rendering add.

The ledger (``--events N``, default 1,000,000; 20,000 with ``--quick``) is written
through ``open_ledger(path).write()`` in batches of EventRecords of a realistic shape:
eight event types, five actor types, orders whose status moves (``state_before`` /
``state_after``), products whose price moves, customers, two tags, a ~120-character
reasoning with its context, alternatives and rejection reasons, one workflow of four
events in every 50, one event in 20 failed. It is cached under the benchmarks' cache
folder (``$DECISION_TRACE_BENCH_CACHE``, default ``$TMPDIR/decision-trace-bench``) by
its size and :data:`LEDGER_VERSION`.

    python benchmarks/bench_web.py [--quick] [--events N] [--requests N]
"""

from __future__ import annotations

import gc
import html
import http.client
import json
import re
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from _common import (
    CHAIN_EVERY,
    EVENT_TYPES,
    MILLION_START,
    MILLION_STEP,
    cache_dir,
    header,
    iter_events,
    report_ratio,
    size,
)
from _server import running_server

from decision_trace.record import EventRecord, ns_from_datetime
from decision_trace.storage import EventFilters, Ledger, open_ledger

TARGET_MS = 300.0
LEDGER_VERSION = 1
"""Bump when the ledger's content changes (the cached file is then rebuilt)."""
BATCH = 5_000
"""Records a ``write()`` while building the ledger."""
PAGE_SIZE = 50
"""Rows of a timeline or search page (the web view's ``TIMELINE_PAGE``)."""
HISTORY_PAGE = 200
"""Events of an object story's page (the web view's ``HISTORY_PAGE``)."""
DEEP_PAGES = 20
"""How many "older" links the deep timeline page is away from the first page."""


def _arg(name: str, default: int) -> int:
    if name in sys.argv[1:]:
        return int(sys.argv[sys.argv.index(name) + 1])
    return default


# --- the ledger --------------------------------------------------------------------------

_STATUSES = ("pending", "paid", "held", "shipped", "delivered", "refunded", "cancelled")
_ACTORS: tuple[tuple[str, str, str, str | None], ...] = (
    # actor type, id pattern, name, actor JSON; by index % 20 (8 users, 6 agents, ...)
    *(("user", "user-{n}", "Support Rep", '{"role":"support"}'),) * 8,
    *(("ai_agent", "agent-{m}", "Pricing Agent", '{"model":"gpt-4o"}'),) * 6,
    *(("compute", "job-{m}", "Nightly reconciliation", None),) * 3,
    *(("system", "rules-engine", "Rules engine", None),) * 2,
    ("external", "stripe", "Stripe", '{"service_name":"stripe"}'),
)


def _span_id(index: int, salt: int = 0) -> str:
    # An odd multiplier is a bijection of 64-bit integers: ids are unique and not 0.
    return format(((index + 1) * 0x9E3779B97F4A7C15 + salt) % 2**64 or 1, "016x")


def _records(count: int) -> Iterator[EventRecord]:
    """The ledger's events, oldest first (deterministic)."""
    trace_id = parent = ""
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    for e in iter_events(count, seed=3, orders=max(10, count // 5)):
        i = e.index
        actor_type, id_pattern, actor_name, actor_json = _ACTORS[i % len(_ACTORS)]
        actor_id = id_pattern.format(n=e.actor_id.rpartition("-")[2], m=i % 7)
        slot = i % CHAIN_EVERY
        if slot == 0 or slot > 3:
            trace_id = _span_id(i) + _span_id(i, salt=1)
        if slot == 0:
            parent = _span_id(i)
        object_types, object_ids, states = [], [], []
        for object_type, external_id, state in e.objects:
            object_types.append(object_type)
            object_ids.append(external_id)
            if object_type == "order":
                k = (i * 7 + len(external_id)) % (len(_STATUSES) - 1)
                states.append(
                    {
                        "state": {"total": state["total"]},
                        "before": {"status": _STATUSES[k]},
                        "after": {"status": _STATUSES[k + 1]},
                    }
                )
            else:
                price = state["price"]
                states.append(
                    {
                        "state": {},
                        "before": {"price": price},
                        "after": {"price": round(price * 1.05, 2)},
                    }
                )
        if i % 10 == 0:
            object_types.append("customer")
            object_ids.append(f"cust-{i % 50_000:05d}")
            states.append({"state": {"tier": e.context["customer_tier"]}})
        failed = i % 20 == 19
        decision = {
            "context": e.context,
            "alternatives": [e.alternative],
            "rejection_reasons": e.rejection,
            "confidence": 0.5 + (i % 50) / 100 if actor_type == "ai_agent" else None,
            "risk_level": None,
        }
        yield EventRecord(
            id=_span_id(i),
            trace_id=trace_id,
            parent_id=parent if 0 < slot <= 3 else None,
            start_ns=ns_from_datetime(MILLION_START + MILLION_STEP * i, "start"),
            duration_ns=1_000_000 + i % 5_000_000,
            event_type=e.event_type,
            description=e.description,
            actor_type=actor_type,
            actor_id=actor_id,
            actor_name=actor_name,
            actor_json=actor_json,
            reasoning=e.reasoning,
            decision_json=dumps(decision),
            object_types=tuple(object_types),
            object_ids=tuple(object_ids),
            objects_json=dumps(states),
            tags=e.tags,
            outcome="failure" if failed else "success",
            error="gateway timeout after 3 retries" if failed else None,
            metadata_json=None,
            service_name="shop",
        )


def web_ledger(count: int) -> Path:
    """The ledger of ``count`` events, built once and cached."""
    return cached_ledger("web", count, LEDGER_VERSION)


def cached_ledger(name: str, count: int, version: int) -> Path:
    """A ledger of ``count`` of this benchmark's events, built once and cached as
    ``<name>-ledger-<count>-v<version>.db`` (bench_verify.py builds its own so)."""
    path = cache_dir() / f"{name}-ledger-{count}-v{version}.db"
    marker = Path(f"{path}.done")
    if path.exists() and marker.exists() and marker.read_text() == str(count):
        return path
    for suffix in ("", "-wal", "-shm", ".done"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    print(f"   building the {count:,}-event ledger at {path} (once)...", flush=True)
    start = time.perf_counter()
    ledger = open_ledger(path)
    try:
        batch: list[EventRecord] = []
        for record in _records(count):
            batch.append(record)
            if len(batch) == BATCH:
                ledger.write(batch)
                batch = []
        if batch:
            ledger.write(batch)
    finally:
        ledger.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    marker.write_text(str(count))
    print(f"   built in {time.perf_counter() - start:.0f} s", flush=True)
    return path


# --- the pages -------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    """One page of the web view and the Ledger call that dominates it."""

    name: str
    path: str
    query_name: str
    query: Callable[[Ledger], Any]


def _get(conn: http.client.HTTPConnection, path: str) -> bytes:
    conn.request("GET", path, headers={"Accept": "text/html"})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
    return body


_NEXT = re.compile(
    rb'<a[^>]*\brel="next"[^>]*\bhref="([^"]+)"|<a[^>]*\bhref="([^"]+)"[^>]*\brel="next"'
)


def _next_link(body: bytes) -> str | None:
    match = _NEXT.search(body)
    if match is None:
        return None
    return html.unescape((match.group(1) or match.group(2)).decode())


@dataclass(frozen=True)
class Targets:
    """What the pages ask about, taken from the ledger itself."""

    event_id: str
    chain_id: str
    order_id: str
    actor_id: str
    search_text: str
    deep_path: str
    deep_end_ns: int
    stats_days: int
    """The overview's window: from the ledger's first day to today."""


def pick_targets(path: Path, count: int, conn: http.client.HTTPConnection) -> Targets:
    raw = sqlite3.connect(path)
    middle = count // 2
    (event_id,) = raw.execute("SELECT id FROM events WHERE rowid = ?", (middle,)).fetchone()
    (actor_id,) = raw.execute(
        "SELECT actor_id FROM events WHERE rowid >= ? AND actor_type = 'user' LIMIT 1", (middle,)
    ).fetchone()
    (chain_id,) = raw.execute(
        "SELECT id FROM events WHERE rowid = ?", ((middle // CHAIN_EVERY) * CHAIN_EVERY + 2,)
    ).fetchone()
    # The most touched of a few hundred orders: a long object story.
    (order_id,) = raw.execute(
        "SELECT external_id FROM event_objects WHERE object_type = 'order' AND "
        "event_rowid BETWEEN ? AND ? GROUP BY external_id ORDER BY count(*) DESC, external_id "
        "LIMIT 1",
        (middle, middle + 500),
    ).fetchone()
    raw.close()
    # The deep page: follow the timeline's "older" link DEEP_PAGES times.
    deep_path = "/"
    for _ in range(DEEP_PAGES):
        link = _next_link(_get(conn, deep_path))
        if link is None:
            raise RuntimeError(f"no older-events link on {deep_path}")
        deep_path = link
    deep_end_ns = ns_from_datetime(
        MILLION_START + MILLION_STEP * (count - DEEP_PAGES * PAGE_SIZE), "e"
    )
    return Targets(
        event_id=event_id,
        chain_id=chain_id,
        order_id=order_id,
        actor_id=actor_id,
        search_text="carrier refund approved",
        deep_path=deep_path,
        deep_end_ns=deep_end_ns,
        stats_days=min(3660, (datetime.now(timezone.utc) - MILLION_START).days + 1),
    )


def pages(t: Targets) -> list[Page]:
    def timeline(filters: EventFilters) -> Callable[[Ledger], Any]:
        return lambda ledger: ledger.query(filters, limit=PAGE_SIZE + 1)

    by_type = EVENT_TYPES[2]
    return [
        Page("timeline", "/", "query(limit=51)", timeline(EventFilters())),
        Page(
            "timeline by type",
            "/?" + urlencode({"event_type": by_type}),
            "query(event_types)",
            timeline(EventFilters.build(event_types=[by_type])),
        ),
        Page(
            "timeline by actor",
            "/?" + urlencode({"actor_type": "user", "actor_id": t.actor_id}),
            "query(actor_ids)",
            timeline(EventFilters.build(actor_types=["user"], actor_ids=[t.actor_id])),
        ),
        Page(
            "timeline by actor type",
            "/?" + urlencode({"actor_type": "ai_agent"}),
            "query(actor_types)",
            timeline(EventFilters.build(actor_types=["ai_agent"])),
        ),
        Page(
            "timeline by object",
            "/?" + urlencode({"object_type": "order", "object_id": t.order_id}),
            "query(object)",
            timeline(EventFilters.build(object_types=["order"], object_ids=[t.order_id])),
        ),
        Page(
            "timeline by tag",
            "/?" + urlencode({"tag": "fraud"}),
            "query(tags)",
            timeline(EventFilters.build(tags=["fraud"])),
        ),
        Page(
            "timeline by absent tag",
            "/?" + urlencode({"tag": "no-such-tag"}),
            "query(tags)",
            timeline(EventFilters.build(tags=["no-such-tag"])),
        ),
        Page(
            f"timeline {DEEP_PAGES} pages in",
            t.deep_path,
            "query(end=...)",
            timeline(EventFilters(end_ns=t.deep_end_ns)),
        ),
        Page(
            "object story",
            f"/objects/order/{quote(t.order_id)}",
            "query(object, 201)",
            lambda ledger: ledger.query(
                EventFilters.build(object_types=["order"], object_ids=[t.order_id]),
                limit=HISTORY_PAGE + 1,
            ),
        ),
        Page(
            "event",
            f"/events/{t.event_id}",
            "get_event",
            lambda ledger: ledger.get_event(t.event_id),
        ),
        Page(
            "chain",
            f"/events/{t.chain_id}/chain",
            "get_chain",
            lambda ledger: ledger.get_chain(t.chain_id),
        ),
        Page(
            "search",
            "/search?" + urlencode({"q": t.search_text}),
            "iter_search, 51",
            lambda ledger: first_of(ledger.iter_search(t.search_text), PAGE_SIZE + 1),
        ),
        Page(
            "stats",
            f"/stats?days={t.stats_days}",
            "count/day + query",
            lambda ledger: overview_queries(ledger, t.stats_days),
        ),
    ]


DAY_NS = 86_400 * 10**9
STATS_SAMPLE = 200
"""The newest events of the window the overview's breakdowns count (``STATS_SAMPLE``)."""


def overview_queries(ledger: Ledger, days: int) -> list[int]:
    """The Ledger calls of the overview page (``/stats?days=N``): one count a UTC day of
    the window, then the window's newest ``STATS_SAMPLE`` events."""
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    start_ns = int((today - timedelta(days=days - 1)).timestamp()) * 10**9
    counts = [
        ledger.count(
            EventFilters(start_ns=start_ns + k * DAY_NS, end_ns=start_ns + (k + 1) * DAY_NS)
        )
        for k in range(days)
    ]
    ledger.query(EventFilters(start_ns=start_ns), limit=STATS_SAMPLE)
    return counts


def first_of(stream: Generator[Any, None, None], n: int) -> list[Any]:
    """The first ``n`` items of ``stream``, which is then closed (as the search page does)."""
    with closing(stream):
        return list(islice(stream, n))


# --- timing --------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def time_calls(fn: Callable[[], Any], n: int) -> list[float]:
    """Milliseconds of ``n`` calls of ``fn`` (after one untimed call)."""
    fn()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    if "--help" in sys.argv[1:] or "-h" in sys.argv[1:]:
        print(__doc__)
        return
    count = _arg("--events", size(1_000_000, 20_000))
    requests = _arg("--requests", size(20, 3))
    header(
        f"web view pages on a {count:,}-event ledger (decision-trace serve over HTTP)",
        f"each page <= {TARGET_MS:.0f} ms (median of {requests} requests)",
    )
    path = web_ledger(count)
    ledger = open_ledger(path, read_only=True)
    print(
        f"   {count:,} events, {path.stat().st_size / 2**20:,.0f} MiB; {requests} requests a page"
    )
    all_met = True
    with running_server(str(path)) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        targets = pick_targets(path, count, conn)
        print(
            f"   object story of {targets.order_id}; stats over {targets.stats_days} days "
            f"(the ledger's first day to today); deep page {DEEP_PAGES} pages in"
        )
        rows = []
        for page in pages(targets):
            body = _get(conn, page.path)
            gc.collect()
            page_ms = time_calls(lambda p=page: _get(conn, p.path), requests)
            query_ms = time_calls(lambda p=page: p.query(ledger), requests)
            rows.append((page, page_ms, query_ms, len(body)))
        conn.close()
    ledger.close()
    print(
        f"   {'page':<24} {'median ms':>9} {'p95 ms':>8} {'query':<18} {'query ms':>8} "
        f"{'page/query':>10} {'KiB':>6}"
    )
    for page, page_ms, query_ms, body_bytes in rows:
        page_med, query_med = statistics.median(page_ms), statistics.median(query_ms)
        print(
            f"   {page.name:<24} {page_med:9.1f} {percentile(page_ms, 0.95):8.1f} "
            f"{page.query_name:<18} {query_med:8.2f} {page_med / max(query_med, 1e-3):9.1f}x "
            f"{body_bytes / 1024:6.0f}"
        )
    for page, page_ms, _, _ in rows:
        all_met &= report_ratio(
            f"{page.name} / {TARGET_MS:.0f} ms", statistics.median(page_ms) / TARGET_MS, at_most=1.0
        )
    print(f"   all pages within target: {'yes' if all_met else 'no'}")


if __name__ == "__main__":
    main()
