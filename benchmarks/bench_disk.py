"""Bytes on disk per event vs a hand-written schema holding the same events.

Target: a decision-trace ledger takes at most 1.2x the bytes per event of a schema
written by hand for the same events and the same five queries (see ``bench_queries.py``):
an events table (ids, times, type, description, actor, reasoning, the context,
alternatives and rejection reasons as JSON), an objects table (type, id, time, state
JSON), a tags table, the indexes those queries need (time, type+time, actor, trace,
parent, object type+id+time, object id+time) and an FTS5 index over description,
reasoning and context, rows inserted 512 a transaction.

Both files hold the same generated events (decision-trace's written through the public
API, batch durability); sizes are taken after a WAL checkpoint (file + WAL).

    python benchmarks/bench_disk.py [--quick]
"""

from __future__ import annotations

import json
import random
import sqlite3

from _common import (
    MILLION_START,
    MILLION_STEP,
    chunks,
    db_size,
    header,
    make_events,
    record_event,
    report_ratio,
    scratch_dir,
    size,
)

from decision_trace import DecisionTraceClient
from decision_trace.record import ns_from_datetime

HAND_SCHEMA = """
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    span_id TEXT NOT NULL UNIQUE,
    trace_id TEXT NOT NULL,
    parent_id TEXT,
    ts INTEGER NOT NULL,
    duration INTEGER NOT NULL,
    type TEXT NOT NULL,
    description TEXT NOT NULL,
    actor_type TEXT,
    actor_id TEXT,
    actor_name TEXT,
    actor_model TEXT,
    reasoning TEXT,
    context TEXT,
    alternatives TEXT,
    rejections TEXT,
    outcome TEXT NOT NULL,
    service TEXT
);
CREATE INDEX ev_ts ON events (ts);
CREATE INDEX ev_type ON events (type, ts);
CREATE INDEX ev_actor ON events (actor_type, actor_id, ts);
CREATE INDEX ev_trace ON events (trace_id);
CREATE INDEX ev_parent ON events (parent_id);
CREATE TABLE objects (
    event_id INTEGER NOT NULL,
    pos INTEGER NOT NULL,
    type TEXT NOT NULL,
    external_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    state TEXT,
    PRIMARY KEY (event_id, pos)
) WITHOUT ROWID;
CREATE INDEX obj_by_object ON objects (type, external_id, ts);
CREATE INDEX obj_by_id ON objects (external_id, ts);
CREATE TABLE tags (tag TEXT NOT NULL, event_id INTEGER NOT NULL,
                   PRIMARY KEY (tag, event_id)) WITHOUT ROWID;
CREATE VIRTUAL TABLE events_fts USING fts5(
    description, reasoning, context, content='events', content_rowid='id'
);
CREATE TRIGGER events_ai AFTER INSERT ON events BEGIN
    INSERT INTO events_fts (rowid, description, reasoning, context)
    VALUES (new.id, new.description, new.reasoning, new.context);
END;
"""


def dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def main() -> None:
    header(
        "bytes on disk per event vs a hand-written schema",
        "decision-trace <= 1.2x the hand-written schema",
    )
    count = size(200_000, 5_000)
    events = make_events(count, seed=13, orders=count // 5)
    rng = random.Random(1)
    with scratch_dir() as tmp:
        ours_path = tmp / "ours.db"
        with DecisionTraceClient(db_path=ours_path, service_name="bench") as client:
            for e in events:
                record_event(client, e, at=MILLION_START + MILLION_STEP * e.index)
        hand_path = tmp / "hand.db"
        conn = sqlite3.connect(hand_path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(HAND_SCHEMA)
        for part in chunks(events, 512):
            ev, ob, tg = [], [], []
            for e in part:
                rowid = e.index + 1
                ts = ns_from_datetime(MILLION_START + MILLION_STEP * e.index, "ts")
                ev.append(
                    (
                        rowid,
                        f"{rng.getrandbits(64):016x}",
                        f"{rng.getrandbits(128):032x}",
                        None,
                        ts,
                        0,
                        e.event_type,
                        e.description,
                        "ai_agent" if e.is_agent else "user",
                        e.actor_id,
                        e.actor_name,
                        e.model,
                        e.reasoning,
                        dumps(e.context),
                        dumps([e.alternative]),
                        dumps(e.rejection),
                        "success",
                        "bench",
                    )
                )
                for pos, (object_type, external_id, state) in enumerate(e.objects):
                    ob.append((rowid, pos, object_type, external_id, ts, dumps(state)))
                tg.extend((tag, rowid) for tag in e.tags)
            conn.execute("BEGIN")
            conn.executemany(f"INSERT INTO events VALUES ({','.join('?' * 18)})", ev)
            conn.executemany("INSERT INTO objects VALUES (?,?,?,?,?,?)", ob)
            conn.executemany("INSERT OR IGNORE INTO tags VALUES (?,?)", tg)
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        with sqlite3.connect(ours_path) as ours_conn:
            ours_conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        ours_bytes, hand_bytes = db_size(ours_path) / count, db_size(hand_path) / count
    print(f"   {count:,} events")
    print(f"   hand-written schema: {hand_bytes:8.1f} bytes/event")
    print(f"   decision-trace:      {ours_bytes:8.1f} bytes/event")
    report_ratio("bytes per event", ours_bytes / hand_bytes, at_most=1.2)


if __name__ == "__main__":
    main()
