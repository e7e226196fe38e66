"""Queries on a 1,000,000-event PostgreSQL ledger vs the same SQL written by hand.

Target: each of these public calls, on ``DecisionTraceClient(db_path="postgresql://...")``,
takes at most 2x the same SQL run by hand through one psycopg connection (autocommit),
returning plain tuples (the event rows with their JSON columns as text and, as the
library needs them to build each event, the rows of the objects they touched):

- ``get_object_history(order_id, "order")``  (oldest first)
- ``query(event_types=[t], start=..., end=..., limit=100)``  (newest first)
- ``search("<3 words>")``  (every word must match; newest stored first, limit 50)
- ``get_chain(id)``  (a workflow of 4 events)
- ``get_event(id)``

The hand-written SQL is the simplest that uses the schema's indexes: those on free text a
user chooses (event type, object id and type) hold its first 300 characters, so the hand
side compares ``left(column, 300)`` too, as the library does; it binds plain values where
the library binds arrays (``= ANY(%s)``), and ``get_chain`` takes two statements.

The ledger holds the same events as ``bench_queries.py`` (1,000,000, 20,000 with
``--quick``), recorded through the public API once and cached in a schema of the server
(see ``_pg.million_schema``: the schema's name carries the schema version and a hash of
its SQL, so a ledger of another schema version is never used; ``--rebuild`` builds it
again). Each query cycles through the same targets on both sides, alternating which side
goes first. Prints the median microseconds per call of each, the ratio, and the bytes per
event of the ledger's tables and indexes.

    python benchmarks/bench_pg_queries.py [--quick] [--rebuild]   # $DECISION_TRACE_BENCH_PG
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from _common import (
    CHAIN_EVERY,
    EVENT_TYPES,
    MILLION_START,
    MILLION_STEP,
    header,
    median,
    report_ratio,
    size,
)
from _pg import drop_million, million_schema, print_bytes, server_in_use, server_or_skip

from decision_trace import DecisionTraceClient
from decision_trace.record import ns_from_datetime

COLUMNS = (
    "e.seq, e.id, e.trace_id, e.parent_id, e.start_ns, e.duration_ns, e.event_type, "
    "e.description, e.actor_type, e.actor_id, e.actor_name, e.actor_json::text, e.reasoning, "
    "e.decision_json::text, e.objects_json::text, e.tags_json::text, e.outcome, e.error, "
    "e.metadata_json::text, e.service_name"
)
TITLE = "queries on a 1,000,000-event PostgreSQL ledger vs the same SQL by hand (tuples)"


def with_objects(conn: Any, rows: list[Any]) -> tuple[list[Any], list[Any]]:
    """The rows and the objects they touched (what building the events needs)."""
    if not rows:
        return rows, []
    objects = conn.execute(
        "SELECT event_seq, object_type, external_id FROM event_objects "
        "WHERE event_seq = ANY(%s) AND start_ns = ANY(%s) ORDER BY event_seq, position",
        ([r[0] for r in rows], list({r[4] for r in rows})),
    ).fetchall()
    return rows, objects


def main() -> None:
    server = server_or_skip(TITLE)
    header(TITLE, "each decision-trace call <= 2x the hand-written SQL")
    print(f"   {server}")
    url, count = million_schema(rebuild="--rebuild" in sys.argv[1:])
    try:
        run(url, count)
    finally:
        drop_million(url)


def run(url: str, count: int) -> None:
    calls = size(200, 20)
    repeats = size(5, 2)
    with server_in_use():
        targets = pick_targets(url, count)
        print(
            f"   {count:,} events; object histories of {min(targets.history_sizes)}-"
            f"{max(targets.history_sizes)} events; search texts match {targets.hits} events; "
            f"{calls} calls a repeat, {repeats} repeats"
        )
        print_bytes(url, count)
    measure(url, targets, calls, repeats)


@dataclass
class Targets:
    """What the queries look up, taken from the ledger itself, spread across it."""

    event_ids: list[str]
    chain_ids: list[str]
    order_ids: list[str]
    ranges: list[tuple[str, datetime, datetime]]
    texts: list[str]
    history_sizes: list[int]
    hits: list[int]


def pick_targets(url: str, count: int) -> Targets:
    """The same kind of targets as ``bench_queries.py`` picks from its SQLite file."""
    raw = psycopg.connect(url, autocommit=True)
    # Targets taken from the ledger itself, spread across it (seq n is the n-th event).
    picks = [
        raw.execute("SELECT seq, id, trace_id FROM events WHERE seq = %s", (n,)).fetchone()
        for n in range(1 + count // 40, count, count // 20)
    ]
    event_ids = [p[1] for p in picks]
    chain_ids = [
        raw.execute(
            "SELECT id FROM events WHERE seq = %s", ((p[0] // CHAIN_EVERY) * CHAIN_EVERY + 2,)
        ).fetchone()[0]
        for p in picks
    ]
    order_ids = [
        raw.execute(
            "SELECT external_id FROM event_objects WHERE event_seq = %s AND position = 0",
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
        ["fraud", "score", "review"],
    )
    texts = [" ".join(w) for w in words]
    history_sizes = [
        raw.execute(
            "SELECT count(*) FROM event_objects WHERE left(external_id, 300) = %s "
            "AND external_id = %s",
            (o, o),
        ).fetchone()[0]
        for o in order_ids
    ]
    hits = [
        raw.execute(
            "SELECT count(*) FROM events WHERE search @@ plainto_tsquery('simple', %s)", (t,)
        ).fetchone()[0]
        for t in texts
    ]
    raw.close()
    return Targets(event_ids, chain_ids, order_ids, ranges, texts, history_sizes, hits)


def measure(url: str, targets: Targets, calls: int, repeats: int) -> None:
    """Time each query on both sides and print the ratios."""
    event_ids, chain_ids, order_ids = targets.event_ids, targets.chain_ids, targets.order_ids
    ranges, texts = targets.ranges, targets.texts
    hand: Any = None
    client: Any = None

    def connect() -> None:
        # Fresh connections for each query (inside the restart lock): a server restart
        # between two of them must not leave either side with a dead connection.
        nonlocal hand, client
        for old in (hand, client):
            if old is not None:
                old.close()
        hand = psycopg.connect(url, autocommit=True)
        hand.execute("SET default_transaction_read_only = on")
        client = DecisionTraceClient(db_path=url)

    def hand_history(i: int) -> Any:
        return with_objects(
            hand,
            hand.execute(
                f"SELECT {COLUMNS} FROM events AS e JOIN (SELECT DISTINCT event_seq, start_ns "
                "FROM event_objects WHERE left(external_id, 300) = %s AND external_id = %s "
                "AND left(object_type, 300) = %s AND object_type = %s) AS h "
                "ON h.event_seq = e.seq AND h.start_ns = e.start_ns ORDER BY e.start_ns, e.seq",
                (order_ids[i], order_ids[i], "order", "order"),
            ).fetchall(),
        )

    def hand_range(i: int) -> Any:
        event_type, start, end = ranges[i]
        return with_objects(
            hand,
            hand.execute(
                f"SELECT {COLUMNS} FROM events AS e WHERE e.start_ns >= %s AND e.start_ns < %s "
                "AND left(e.event_type, 300) = %s AND e.event_type = %s "
                "ORDER BY e.start_ns DESC, e.seq DESC LIMIT %s",
                (
                    ns_from_datetime(start, "s"),
                    ns_from_datetime(end, "e"),
                    event_type,
                    event_type,
                    100,
                ),
            ).fetchall(),
        )

    def hand_search(i: int) -> Any:
        return with_objects(
            hand,
            hand.execute(
                f"SELECT {COLUMNS} FROM events AS e "
                "WHERE e.search @@ plainto_tsquery('simple', %s) ORDER BY e.seq DESC LIMIT %s",
                (texts[i % len(texts)], 50),
            ).fetchall(),
        )

    def hand_event(i: int) -> Any:
        return with_objects(
            hand,
            hand.execute(
                f"SELECT {COLUMNS} FROM events AS e WHERE e.id = %s", (event_ids[i],)
            ).fetchall(),
        )

    def hand_chain(i: int) -> Any:
        (trace_id,) = hand.execute(
            "SELECT trace_id FROM events WHERE id = %s", (chain_ids[i],)
        ).fetchone()
        return with_objects(
            hand,
            hand.execute(
                f"SELECT {COLUMNS} FROM events AS e WHERE e.trace_id = %s "
                "ORDER BY e.start_ns, e.seq",
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

    n_targets = len(event_ids)
    all_met = True
    for name, ours, by_hand in cases:
        with server_in_use():
            connect()
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
