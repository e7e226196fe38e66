"""PostgreSQL end-to-end sustained throughput (batch durability) vs a hand-written COPY.

Target: recording events with the fluent API in a loop until ``client.flush()`` returns,
with ``DecisionTraceClient(db_path="postgresql://...")`` (batch durability: the
background writer commits up to 512 a transaction through the PostgreSQL ledger),
sustains at least 0.5x the throughput of a hand-written psycopg ``COPY ... FROM STDIN``
of the same rows (built beforehand, not timed; the limit of ``bench_pg_write.py``) into
``events``, ``event_objects`` and ``event_tags`` of a fresh schema made by the backend,
512 events a transaction.

Each repeat uses fresh schemas for both sides, alternating which goes first. Prints the
median events per second of each and the ratio.

    python benchmarks/bench_pg_end_to_end.py [--quick]   # server: $DECISION_TRACE_BENCH_PG
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
    record_event,
    report_ratio,
    scratch_dir,
    size,
    timed,
)
from _pg import (
    copy_transactions,
    ledger_schema,
    row_counts,
    scratch_schema,
    server_or_skip,
    time_copy,
)

from decision_trace import DecisionTraceClient
from decision_trace._decode import record_from_span

BATCH = 512
TITLE = "PostgreSQL end-to-end sustained throughput: record loop until flushed vs COPY"


def main() -> None:
    server = server_or_skip(TITLE)
    header(TITLE, "decision-trace >= 0.5x psycopg COPY")
    print(f"   {server}")
    count = size(50_000, 2_000)
    repeats = size(5, 2)
    events = make_events(count, seed=9)
    with scratch_dir() as tmp:
        records = [record_from_span(s) for s in finished_spans(events, tmp / "source.db")]
    rows = copy_transactions(records, BATCH)
    expected = tuple(sum(len(t[k]) for t in rows) for k in range(3))
    print(f"   {count:,} events, {repeats} repeats")

    def ours(run: int) -> float:
        with scratch_schema("e2e") as url:
            ledger_schema(url)
            client = DecisionTraceClient(db_path=url)

            def go() -> None:
                for e in events:
                    record_event(client, e)
                if not client.flush():
                    raise RuntimeError("flush failed")

            gc.collect()
            seconds = timed(go)
            client.close()
            if row_counts(url) != expected:
                raise AssertionError(f"stored {row_counts(url)} rows, expected {expected}")
            return seconds

    def plain(run: int) -> float:
        with scratch_schema("copy") as url:
            return time_copy(url, rows)

    ours_s, plain_s = alternate(ours, plain, repeats)

    ours_rate, plain_rate = count / median(ours_s), count / median(plain_s)
    print(f"   psycopg COPY:                median {fmt_rate(plain_rate)}")
    print(f"   record() loop until flushed: median {fmt_rate(ours_rate)}")
    print(
        "   per repeat, end-to-end/COPY: "
        + ", ".join(f"{p / o:.2f}" for o, p in zip(ours_s, plain_s, strict=True))
    )
    report_ratio("pg end-to-end/copy", ours_rate / plain_rate, at_least=0.5)


if __name__ == "__main__":
    main()
