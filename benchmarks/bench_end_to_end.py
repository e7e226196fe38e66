"""End-to-end sustained throughput (batch durability) vs the plain-SQLite limit.

Target: recording events with the fluent API in a loop until ``client.flush()`` returns
(batch durability: the background writer commits 512 a transaction) sustains at least
0.5x the throughput of plain ``sqlite3`` inserting the same rows (one statement a table,
``INSERT ... SELECT ... FROM json_each(?)``, its fastest way; rows built
beforehand) into the same schema, indexes and FTS5, 512 rows a transaction.

Each repeat uses fresh files for both sides, alternating which goes first. Prints the
median events per second of each and the ratio.

    python benchmarks/bench_end_to_end.py [--quick]
"""

from __future__ import annotations

import gc

from _common import (
    alternate,
    finished_spans,
    fmt_rate,
    header,
    make_events,
    median,
    plain_transactions,
    record_event,
    report_ratio,
    scratch_dir,
    size,
    time_plain_inserts,
    timed,
)

from decision_trace import DecisionTraceClient
from decision_trace._decode import record_from_span

BATCH = 512


def main() -> None:
    header(
        "end-to-end sustained throughput: record loop until flushed vs plain sqlite3",
        "decision-trace >= 0.5x plain sqlite3",
    )
    count = size(50_000, 2_000)
    repeats = size(5, 2)
    events = make_events(count, seed=9)
    with scratch_dir() as tmp:
        records = [record_from_span(s) for s in finished_spans(events, tmp / "source.db")]
        rows = plain_transactions(records, BATCH)
        print(f"   {count:,} events, {repeats} repeats")

        def ours(run: int) -> float:
            client = DecisionTraceClient(db_path=tmp / f"ours-{run}.db")

            def go() -> None:
                for e in events:
                    record_event(client, e)
                if not client.flush():
                    raise RuntimeError("flush failed")

            gc.collect()
            seconds = timed(go)
            client.close()
            return seconds

        def plain(run: int) -> float:
            return time_plain_inserts(tmp / f"plain-{run}.db", rows, one_statement=True)

        ours_s, plain_s = alternate(ours, plain, repeats)

    ours_rate, plain_rate = count / median(ours_s), count / median(plain_s)
    print(f"   plain sqlite3 (json_each):   median {fmt_rate(plain_rate)}")
    print(f"   record() loop until flushed: median {fmt_rate(ours_rate)}")
    report_ratio("end-to-end/plain", ours_rate / plain_rate, at_least=0.5)


if __name__ == "__main__":
    main()
