"""PostgreSQL ledger write throughput: the exporter alone vs a hand-written ``COPY``.

Target: ``SQLiteSpanExporter(ledger=<PostgresLedger>).write()`` turning a list of
finished spans into committed rows (decode + the backend's one-statement
``unnest ... INSERT ... ON CONFLICT DO NOTHING RETURNING`` batch, 512 spans a
transaction, the span processor's batch size) reaches at least 0.7x the throughput of a
hand-written psycopg ``COPY ... FROM STDIN`` of the same rows (built beforehand, not
timed; ``write_row`` a row, sequence numbers given) into ``events``, ``event_objects``
and ``event_tags`` of a fresh schema made by the backend (same partitions, indexes,
generated ``tsvector`` and GIN index), 512 events a transaction.

Each repeat writes every span into a fresh schema for each side, rotating which goes
first. Prints the median events per second of each, the ratio, and the bytes per event
the ledger side's tables and indexes take. It also times a binary ``COPY`` of the same
rows (``FORMAT BINARY``, column types set), faster still, and prints the ratio to it for
information (the target is against the text ``COPY`` a person writes first).

    python benchmarks/bench_pg_write.py [--quick]      # server: $DECISION_TRACE_BENCH_PG
"""

from __future__ import annotations

import gc

from _common import (
    chunks,
    finished_spans,
    fmt_rate,
    header,
    make_events,
    median,
    report_ratio,
    scratch_dir,
    size,
    timed,
)
from _pg import (
    copy_transactions,
    ledger_schema,
    print_bytes,
    row_counts,
    scratch_schema,
    server_or_skip,
    time_copy,
)

from decision_trace._decode import record_from_span
from decision_trace.exporters import SQLiteSpanExporter
from decision_trace.storage import open_ledger

BATCH = 512
TITLE = "PostgreSQL ledger write throughput: exporter alone vs hand-written COPY (512 rows/txn)"


def main() -> None:
    server = server_or_skip(TITLE)
    header(TITLE, "decision-trace >= 0.7x psycopg COPY")
    print(f"   {server}")
    count = size(40 * BATCH, 4 * BATCH)
    repeats = size(5, 2)
    with scratch_dir() as tmp:
        spans = finished_spans(make_events(count, seed=5), tmp / "source.db")
    batches = chunks(spans, BATCH)
    records = [record_from_span(s) for s in spans]
    rows = copy_transactions(records, BATCH)
    expected = tuple(sum(len(t[k]) for t in rows) for k in range(3))
    print(f"   {count:,} spans, {BATCH} a transaction, {repeats} repeats")

    def ours(run: int) -> float:
        with scratch_schema("write") as url:
            ledger_schema(url)
            ledger = open_ledger(url)
            exporter = SQLiteSpanExporter(ledger=ledger)

            def go() -> None:
                for batch in batches:
                    exporter.write(batch)

            gc.collect()
            seconds = timed(go)
            exporter.shutdown()
            ledger.close()
            if row_counts(url) != expected:
                raise AssertionError(f"stored {row_counts(url)} rows, expected {expected}")
            if run == 0:
                print_bytes(url, count)
            return seconds

    def plain(run: int) -> float:
        with scratch_schema("copy") as url:
            return time_copy(url, rows)

    def binary(run: int) -> float:
        with scratch_schema("copyb") as url:
            return time_copy(url, rows, binary=True)

    sides = [(ours, []), (plain, []), (binary, [])]
    for run in range(repeats):
        for k in range(len(sides)):
            fn, out = sides[(run + k) % len(sides)]
            out.append(fn(run))
    ours_s, plain_s, binary_s = (out for _, out in sides)

    ours_rate, plain_rate = count / median(ours_s), count / median(plain_s)
    binary_rate = count / median(binary_s)
    print(f"   psycopg binary COPY:         median {fmt_rate(binary_rate)}")
    print(f"   psycopg COPY:                median {fmt_rate(plain_rate)}")
    print(f"   SQLiteSpanExporter.write:    median {fmt_rate(ours_rate)}")
    print(
        "   per repeat, write/COPY: "
        + ", ".join(f"{p / o:.2f}" for o, p in zip(ours_s, plain_s, strict=True))
    )
    print(f"   write/binary COPY: {ours_rate / binary_rate:.2f}x (information, no target)")
    report_ratio("pg write/copy", ours_rate / plain_rate, at_least=0.7)


if __name__ == "__main__":
    main()
