"""``record()`` with ``durability="sync"`` vs plain sqlite3, one event a transaction.

Target: with ``durability="sync"`` (``record()`` returns once the event is committed,
``synchronous=FULL``), recording the benchmark event through the fluent API reaches at
least 0.8x the rate of plain ``sqlite3`` committing the same rows (built beforehand) one
event a transaction (``BEGIN IMMEDIATE``, the event row, its object and tag rows,
``COMMIT``) into the same schema, indexes and FTS5, WAL and ``synchronous=FULL``.

Each repeat uses fresh files for both sides, alternating which goes first. Prints the
median events per second of each and the ratio.

    python benchmarks/bench_sync.py [--quick]
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


def main() -> None:
    header(
        "record() with durability='sync' vs plain sqlite3, one event a transaction",
        "decision-trace >= 0.8x plain sqlite3",
    )
    count = size(1_000, 50)
    repeats = size(5, 2)
    events = make_events(count, seed=11)
    with scratch_dir() as tmp:
        records = [record_from_span(s) for s in finished_spans(events, tmp / "source.db")]
        rows = plain_transactions(records, 1)
        print(f"   {count:,} events, one a transaction, {repeats} repeats")

        def ours(run: int) -> float:
            client = DecisionTraceClient(db_path=tmp / f"ours-{run}.db", durability="sync")

            def go() -> None:
                for e in events:
                    record_event(client, e)

            gc.collect()
            seconds = timed(go)
            client.close()
            return seconds

        def plain(run: int) -> float:
            return time_plain_inserts(tmp / f"plain-{run}.db", rows, synchronous="FULL")

        ours_s, plain_s = alternate(ours, plain, repeats)

    ours_rate, plain_rate = count / median(ours_s), count / median(plain_s)
    print(f"   plain sqlite3, one row a transaction: median {fmt_rate(plain_rate)}")
    print(f"   record(), durability='sync':          median {fmt_rate(ours_rate)}")
    report_ratio("sync/plain", ours_rate / plain_rate, at_least=0.8)


if __name__ == "__main__":
    main()
