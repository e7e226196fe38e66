"""Peak RSS while recording 1,000,000 events (batch durability).

Target: recording 1,000,000 events of the benchmark shape through the fluent API, batch
durability, into a fresh ledger keeps the process's peak resident set size at or below
150 MB, and memory is flat after warm-up (the RSS at the end is within 10% of the RSS
after the first 10% of events). There is no side-by-side limit here; the ratio printed
is peak RSS / 150 MB.

    python benchmarks/bench_rss.py [--quick]      (--quick: 20,000 events)
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

from _common import header, make_events, record_event, report_ratio, scratch_dir, size

from decision_trace import DecisionTraceClient

LIMIT_MB = 150.0


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    header("peak RSS while recording 1,000,000 events (batch)", "<= 150 MB, flat after warm-up")
    count = size(1_000_000, 20_000)
    distinct = 10_000  # event payloads cycled, so the generator does not grow with count
    events = make_events(distinct, seed=17)
    samples: list[tuple[int, float]] = []
    step = count // 20
    with scratch_dir() as tmp:
        start = time.perf_counter()
        before = rss_mb()
        with DecisionTraceClient(db_path=tmp / "rss.db") as client:
            for i in range(count):
                record_event(client, events[i % distinct])
                if (i + 1) % step == 0:
                    samples.append((i + 1, rss_mb()))
            client.flush()
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"   {count:,} events in {seconds:.0f} s; RSS before recording {before:.1f} MB")
    print("   RSS (MB) every 5%: " + " ".join(f"{mb:.0f}" for _, mb in samples))
    warm = samples[1][1]
    end = samples[-1][1]
    growth = (end - warm) / warm
    flat = growth <= 0.10
    print(
        f"   after warm-up (10%): {warm:.1f} MB; at the end: {end:.1f} MB "
        f"({growth:+.1%}): {'flat' if flat else 'NOT flat'}"
    )
    print(f"   peak RSS: {peak:.1f} MB (limit {LIMIT_MB:.0f} MB)")
    report_ratio("peak RSS / 150 MB", peak / LIMIT_MB, at_most=1.0)


if __name__ == "__main__":
    main()
