"""Queries on a 1,000,000-event ledger vs the same SQL written by hand.

Target: each of these public calls takes at most 2x the same SQL run by hand with
``sqlite3`` on the same file, returning plain tuples (the event rows and, as the library
needs them to build each event, the rows of the objects they touched):

- ``get_object_history(order_id, "order")``  (oldest first)
- ``query(event_types=[t], start=..., end=..., limit=100)``  (newest first)
- ``search("<3 words>")``  (every word must match; newest stored first, limit 50: the
  hand-written SQL uses the same ordering)
- ``get_chain(id)``  (a workflow of 4 events)
- ``get_event(id)``

The ledger (1,000,000 events of the benchmark shape, 20,000 with ``--quick``) is built
once through the public API and cached under ``$TMPDIR/decision-trace-bench/``. Each
query cycles through the same set of targets on both sides, alternating which side goes
first. Prints the median microseconds per call of each and the ratio.

    python benchmarks/bench_queries.py [--quick]
"""

from __future__ import annotations

import gc
import sqlite3
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from _common import (
    CHAIN_EVERY,
    EVENT_TYPES,
    MILLION_START,
    MILLION_STEP,
    header,
    median,
    million_file,
    report_ratio,
    size,
)

from decision_trace import DecisionTraceClient
from decision_trace.query import fts_query
from decision_trace.record import ns_from_datetime

COLUMNS = (
    "e.rowid, e.id, e.trace_id, e.parent_id, e.start_ns, e.duration_ns, e.event_type, "
    "e.description, e.actor_type, e.actor_id, e.actor_name, e.actor_json, e.reasoning, "
    "e.decision_json, e.objects_json, e.tags_json, e.outcome, e.error, e.metadata_json, "
    "e.service_name"
)


def with_objects(conn: sqlite3.Connection, rows: list[Any]) -> tuple[list[Any], list[Any]]:
    """The rows and the objects they touched (what building the events needs)."""
    if not rows:
        return rows, []
    rowids = [r[0] for r in rows]
    objects = conn.execute(
        "SELECT event_rowid, object_type, external_id FROM event_objects "
        f"WHERE event_rowid IN ({','.join('?' * len(rowids))}) ORDER BY event_rowid, position",
        rowids,
    ).fetchall()
    return rows, objects


def main() -> None:
    header(
        "queries on a 1,000,000-event ledger vs the same SQL by hand (tuples)",
        "each decision-trace call <= 2x the hand-written SQL",
    )
    path, count = million_file()
    calls = size(200, 20)
    repeats = size(5, 2)
    raw = sqlite3.connect(path)
    # Targets taken from the file itself, spread across it.
    picks = [
        raw.execute("SELECT rowid, id, trace_id FROM events WHERE rowid = ?", (n,)).fetchone()
        for n in range(1 + count // 40, count, count // 20)
    ]
    event_ids = [p[1] for p in picks]
    chain_ids = [
        raw.execute(
            "SELECT id FROM events WHERE rowid = ?", ((p[0] // CHAIN_EVERY) * CHAIN_EVERY + 2,)
        ).fetchone()[0]
        for p in picks
    ]
    order_ids = [
        raw.execute(
            "SELECT external_id FROM event_objects WHERE event_rowid = ? AND position = 0",
            (p[0],),
        ).fetchone()[0]
        for p in picks
    ]
    ranges = []
    for i, p in enumerate(picks):
        start = MILLION_START + MILLION_STEP * p[0]
        ranges.append((EVENT_TYPES[i % len(EVENT_TYPES)], start, start + timedelta(hours=6)))
    words = (
        ["refund", "approved", "carrier"],
        ["price", "margin", "competitor"],
        [
            "fraud",
            "score",
            "review",
        ],
    )
    texts = [" ".join(w) for w in words]
    history_sizes = [
        raw.execute("SELECT count(*) FROM event_objects WHERE external_id = ?", (o,)).fetchone()[0]
        for o in order_ids
    ]
    hits = [
        raw.execute(
            "SELECT count(*) FROM events_fts WHERE events_fts MATCH ?", (fts_query(t),)
        ).fetchone()[0]
        for t in texts
    ]
    print(
        f"   {count:,} events; object histories of {min(history_sizes)}-{max(history_sizes)} "
        f"events; search texts match {hits} events; {calls} calls a repeat, {repeats} repeats"
    )
    raw.close()

    hand = sqlite3.connect(path, isolation_level=None)
    hand.execute("PRAGMA query_only = 1")
    client = DecisionTraceClient(db_path=path)

    def hand_history(i: int) -> Any:
        return with_objects(
            hand,
            hand.execute(
                f"SELECT {COLUMNS} FROM events AS e JOIN (SELECT DISTINCT event_rowid, start_ns "
                "FROM event_objects WHERE external_id = ? AND object_type = ?) AS h "
                "ON h.event_rowid = e.rowid ORDER BY h.start_ns, e.rowid LIMIT ?",
                (order_ids[i], "order", -1),
            ).fetchall(),
        )

    def hand_range(i: int) -> Any:
        event_type, start, end = ranges[i]
        return with_objects(
            hand,
            hand.execute(
                f"SELECT {COLUMNS} FROM events AS e WHERE e.start_ns >= ? AND e.start_ns < ? "
                "AND e.event_type IN (?) ORDER BY e.start_ns DESC, e.rowid DESC "
                "LIMIT ? OFFSET ?",
                (ns_from_datetime(start, "s"), ns_from_datetime(end, "e"), event_type, 100, 0),
            ).fetchall(),
        )

    def hand_search(i: int) -> Any:
        return with_objects(
            hand,
            hand.execute(
                f"SELECT {COLUMNS} FROM events AS e WHERE e.rowid IN (SELECT rowid FROM "
                "events_fts WHERE events_fts MATCH ? ORDER BY rowid DESC LIMIT ?) "
                "ORDER BY e.rowid DESC",
                (fts_query(texts[i % len(texts)]), 50),
            ).fetchall(),
        )

    def hand_event(i: int) -> Any:
        return with_objects(
            hand,
            hand.execute(
                f"SELECT {COLUMNS} FROM events AS e WHERE e.id = ?", (event_ids[i],)
            ).fetchall(),
        )

    def hand_chain(i: int) -> Any:
        (trace_id,) = hand.execute(
            "SELECT trace_id FROM events WHERE id = ?", (chain_ids[i],)
        ).fetchone()
        return with_objects(
            hand,
            hand.execute(
                f"SELECT {COLUMNS} FROM events AS e WHERE e.trace_id = ? "
                "ORDER BY e.start_ns, e.rowid",
                (trace_id,),
            ).fetchall(),
        )

    cases: list[tuple[str, Callable[[int], Any], Callable[[int], Any]]] = [
        (
            "object history",
            lambda i: client.get_object_history(order_ids[i], "order"),
            hand_history,
        ),
        (
            "type + time range, limit 100",
            lambda i: client.query(
                event_types=[ranges[i][0]], start=ranges[i][1], end=ranges[i][2], limit=100
            ),
            hand_range,
        ),
        ("search, 3 words", lambda i: client.search(texts[i % len(texts)]), hand_search),
        ("get_chain", lambda i: client.get_chain(chain_ids[i]), hand_chain),
        ("get_event", lambda i: client.get_event(event_ids[i]), hand_event),
    ]

    n_targets = len(picks)
    all_met = True
    for name, ours, by_hand in cases:
        # Same results on both sides (sanity check, not timed).
        for i in range(n_targets):
            if name == "get_chain":
                got = len(list(ours(i).walk()))
            elif name == "get_event":
                got = 1 if ours(i) is not None else 0
            else:
                got = len(ours(i))
            expected = len(by_hand(i)[0])
            if got != expected:
                raise AssertionError(f"{name}: decision-trace {got} events, by hand {expected}")
        ours_s: list[float] = []
        hand_s: list[float] = []
        for run in range(repeats):
            order = [(ours, ours_s), (by_hand, hand_s)]
            if run % 2:
                order.reverse()
            for fn, out in order:
                gc.collect()
                start = time.perf_counter()
                for k in range(calls):
                    fn(k % n_targets)
                out.append((time.perf_counter() - start) / calls)
        ours_us, hand_us = median(ours_s) * 1e6, median(hand_s) * 1e6
        print(f"   {name}: by hand {hand_us:8.1f} us, decision-trace {ours_us:8.1f} us")
        all_met &= report_ratio(name, ours_us / hand_us, at_most=2.0)
    client.close()
    hand.close()
    print(f"   all queries within target: {'yes' if all_met else 'no'}")


if __name__ == "__main__":
    main()
