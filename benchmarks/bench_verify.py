"""``verify`` of a 200,000-event SQLite ledger, and what the chain costs on disk.

Target: ``ledger.verify()`` checks at least 100,000 events a second (issue 17).

The limit, measured in the same run on the same file: reading the rows verify reads
(``SELECT`` of the chain, the events and their objects, in order, in Python, every row
fetched), and ``hashlib.sha256`` over the bytes verify hashes (each event's skeleton, its
salted payload and its chain entry, built beforehand, outside the timing). Prints the
median events/s over the repeats, the two limits, and verify's time over their sum.

Also prints bytes per event with and without the chain: the ledger file after VACUUM,
and a copy of it with the chain table and the salt column dropped, after VACUUM.

The ledger (``--events N``; 200,000, or 3,000 with ``--quick``) holds the e-commerce
events of ``bench_web.py`` (eight event types, five actor types, order and product
states before/after, customers, tags, reasoning with context and alternatives), written
through ``open_ledger(path).write()`` in batches of 5,000 and cached under the
benchmarks' cache folder.

    python benchmarks/bench_verify.py [--quick] [--events N]
"""

from __future__ import annotations

import gc
import hashlib
import shutil
import sqlite3
import sys
import time
from pathlib import Path

from _common import fmt_rate, header, median, report_ratio, scratch_dir, size, timed
from bench_web import cached_ledger

from decision_trace import integrity
from decision_trace._rows import EVENT_COLUMNS
from decision_trace.storage import open_ledger

TARGET_PER_S = 100_000
LEDGER_VERSION = 1
"""Bump when the ledger's content changes (the cached file is then rebuilt)."""


def _arg(name: str, default: int) -> int:
    if name in sys.argv[1:]:
        return int(sys.argv[sys.argv.index(name) + 1])
    return default


def verify_ledger(count: int) -> Path:
    """The chained ledger of ``count`` events, built once and cached."""
    return cached_ledger("verify", count, LEDGER_VERSION)


def time_verify(path: Path) -> tuple[float, integrity.VerifyReport]:
    ledger = open_ledger(path, read_only=True)
    try:
        gc.collect()
        start = time.perf_counter()
        report = ledger.verify()
        return time.perf_counter() - start, report
    finally:
        ledger.close()


_EVENTS_SQL = f"SELECT {', '.join(EVENT_COLUMNS)}, salt FROM events ORDER BY rowid"
_CHAIN_SQL = (
    "SELECT position, kind, event_id, start_ns, skeleton, commitment, hash, body "
    "FROM chain ORDER BY position"
)
_OBJECTS_SQL = (
    "SELECT event_rowid, object_type, external_id FROM event_objects ORDER BY event_rowid, position"
)


def time_read(path: Path) -> float:
    """Seconds to fetch every row verify reads, in Python, in one snapshot."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        gc.collect()

        def go() -> None:
            conn.execute("BEGIN")
            for sql in (_CHAIN_SQL, _EVENTS_SQL, _OBJECTS_SQL):
                for _ in conn.execute(sql):
                    pass
            conn.execute("COMMIT")

        return timed(go)
    finally:
        conn.close()


def hashed_bytes(path: Path) -> list[bytes]:
    """The bytes verify hashes, per event: its skeleton, salt + payload, chain entry."""
    skeleton_of = [EVENT_COLUMNS.index(c) for c in integrity.SKELETON_COLUMNS]
    payload_of = [EVENT_COLUMNS.index(c) for c in integrity.PAYLOAD_COLUMNS]
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        objects: dict[int, tuple[list[str], list[str]]] = {}
        for rowid, object_type, external_id in conn.execute(_OBJECTS_SQL):
            types, ids = objects.setdefault(rowid, ([], []))
            types.append(object_type)
            ids.append(external_id)
        out: list[bytes] = []
        entry = bytes(32 + 8 + 1 + 8 + 32 + 32) + b"dt-chain-1"
        for row in conn.execute(_EVENTS_SQL):
            types, ids = objects.get(row[0], ([], []))
            out.append(integrity.skeleton_bytes([row[i] for i in skeleton_of], types))
            salt = bytes.fromhex(row[-1]) if row[-1] else b""
            out.append(salt + integrity.payload_bytes([row[i] for i in payload_of], ids))
            out.append(entry)
        return out
    finally:
        conn.close()


def time_hash(chunks: list[bytes]) -> float:
    sha256 = hashlib.sha256
    gc.collect()

    def go() -> None:
        for chunk in chunks:
            sha256(chunk).digest()

    return timed(go)


def vacuumed_size(path: Path, *statements: str) -> int:
    """Bytes of ``path`` after ``statements`` and VACUUM (on the given copy)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in statements:
            conn.execute(statement)
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return path.stat().st_size + sum(
        Path(f"{path}{s}").stat().st_size for s in ("-wal",) if Path(f"{path}{s}").exists()
    )


def main() -> None:
    header(
        "verify() of a SQLite ledger vs reading its rows + SHA-256 of its bytes",
        f"verify checks >= {TARGET_PER_S:,} events/s",
    )
    count = _arg("--events", size(200_000, 3_000))
    repeats = size(5, 1)
    path = verify_ledger(count)

    verify_s: list[float] = []
    read_s: list[float] = []
    report = None
    for run in range(repeats):
        if run % 2:
            read_s.append(time_read(path))
            seconds, report = time_verify(path)
        else:
            seconds, report = time_verify(path)
            read_s.append(time_read(path))
        verify_s.append(seconds)
    assert report is not None
    if report.ok and report.events == count:
        print("   verify report: ok")
    else:
        print(f"   verify report: FAILED {report.problems[:3]}; events {report.events} of {count}")
    chunks = hashed_bytes(path)
    megabytes = sum(len(c) for c in chunks) / 1e6
    hash_s = [time_hash(chunks) for _ in range(repeats)]
    del chunks

    v, r, h = median(verify_s), median(read_s), median(hash_s)
    rate = count / v
    print(f"   {count:,} events, {report.entries:,} chain entries; {repeats} runs each")
    print(f"   verify():                  median {v:6.2f} s  {fmt_rate(rate)} events")
    print(f"   read the rows (Python):    median {r:6.2f} s  {fmt_rate(count / r)} events")
    print(f"   sha256 of {megabytes:,.0f} MB:         median {h:6.2f} s  {fmt_rate(count / h)}")
    print(f"   verify / (read + hash): {v / (r + h):.2f}x")

    with scratch_dir() as tmp:
        chained, plain = tmp / "chained.db", tmp / "plain.db"
        shutil.copy(path, chained)
        shutil.copy(path, plain)
        with_chain = vacuumed_size(chained)
        without = vacuumed_size(
            plain,
            "DROP TABLE chain",
            "DROP TABLE ledger_meta",
            "ALTER TABLE events DROP COLUMN salt",
        )
    print(
        f"   bytes per event: {with_chain / count:,.0f} with the chain, "
        f"{without / count:,.0f} without (chain + salt: "
        f"{(with_chain - without) / count:,.0f} bytes, "
        f"+{(with_chain / without - 1) * 100:.0f}%)"
    )
    report_ratio(f"verify events/s / {TARGET_PER_S:,}", rate / TARGET_PER_S, at_least=1.0)


if __name__ == "__main__":
    main()
