"""Ledger write throughput: the SQLite exporter alone vs plain sqlite3 at its fastest.

Target: ``SQLiteSpanExporter.write()`` turning a list of finished spans into committed
rows (decode + insert, 512 spans a transaction) reaches at least 0.7x the throughput of
plain ``sqlite3`` inserting the same rows (built beforehand, not timed; one
``INSERT ... SELECT ... FROM json_each(?)`` a table, which beats ``executemany``) into the
same schema, with the same indexes, FTS5 index and triggers, 512 rows a transaction,
same PRAGMAs (WAL, synchronous=NORMAL).

Each repeat writes every span into a fresh file for both sides, alternating which goes
first. Prints the median events per second of each and the ratio.

    python benchmarks/bench_ledger_write.py [--quick]
"""

from __future__ import annotations

import gc

from _common import (
    alternate,
    chunks,
    finished_spans,
    fmt_rate,
    header,
    make_events,
    median,
    plain_transactions,
    report_ratio,
    scratch_dir,
    size,
    time_plain_inserts,
    timed,
)

from decision_trace._decode import record_from_span
from decision_trace.exporters import SQLiteSpanExporter

BATCH = 512


def main() -> None:
    header(
        "ledger write throughput: exporter alone vs plain one-statement insert (512 rows/txn)",
        "decision-trace >= 0.7x plain sqlite3",
    )
    count = size(40 * BATCH, 4 * BATCH)
    repeats = size(5, 2)
    with scratch_dir() as tmp:
        spans = finished_spans(make_events(count, seed=5), tmp / "source.db")
        batches = chunks(spans, BATCH)
        records = [record_from_span(s) for s in spans]
        rows = plain_transactions(records, BATCH)
        print(f"   {count:,} spans, {BATCH} a transaction, {repeats} repeats")

        def ours(run: int) -> float:
            path = tmp / f"ours-{run}.db"
            exporter = SQLiteSpanExporter(db_path=path)

            def go() -> None:
                for batch in batches:
                    exporter.write(batch)

            gc.collect()
            seconds = timed(go)
            exporter.shutdown()
            return seconds

        def plain(run: int) -> float:
            return time_plain_inserts(tmp / f"plain-{run}.db", rows, one_statement=True)

        ours_s, plain_s = alternate(ours, plain, repeats)

    ours_rate, plain_rate = count / median(ours_s), count / median(plain_s)
    print(f"   plain sqlite3 (json_each): median {fmt_rate(plain_rate)}")
    print(f"   SQLiteSpanExporter.write:  median {fmt_rate(ours_rate)}")
    report_ratio("exporter/plain", ours_rate / plain_rate, at_least=0.7)


if __name__ == "__main__":
    main()
