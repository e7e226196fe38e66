"""record() cost in the caller's thread (batch durability) vs a bare OpenTelemetry span.

Target: decision-trace's ``record()`` of the benchmark event (user or AI-agent actor, one
or two objects with a small state, ``because()`` with a ~120-character reasoning, a 5-key
context, one alternative with its rejection reason, two tags), built with the fluent API,
costs at most 1.25x a bare OpenTelemetry SDK span carrying the same number of attributes
(same values) through a ``BatchSpanProcessor`` with a do-nothing exporter.

Both run in the same process, in pairs of bursts (which side goes first alternates); each
burst is timed in the caller's thread (wall clock, background writer running), both
pipelines are flushed between bursts (not timed). Prints the median microseconds per call
of each side and the ratio: the median of the per-pair ratios, because on a shared
machine the speed of both sides drifts together by more than the difference measured.

    python benchmarks/bench_record.py [--quick]
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from typing import Any

from _common import (
    QUICK,
    EventData,
    header,
    make_events,
    median,
    record_event,
    report_ratio,
    scratch_dir,
    size,
    timed,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from decision_trace import DecisionTraceClient


class NullExporter(SpanExporter):
    """Accepts spans and does nothing."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class Capture(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def attributes_of(events: list[EventData], path: Any) -> list[tuple[str, dict[str, Any]]]:
    """The exact (name, attributes) decision-trace puts on each event's span."""
    capture = Capture()
    with DecisionTraceClient(db_path=path) as client:
        client.tracer_provider.add_span_processor(SimpleSpanProcessor(capture))
        for e in events:
            record_event(client, e)
        client.flush()
    by_index = sorted(capture.spans, key=lambda s: s.start_time or 0)
    return [(s.name, dict(s.attributes or {})) for s in by_index]


def main() -> None:
    header(
        "record() in the caller's thread vs a bare OTel span (BatchSpanProcessor)",
        "decision-trace <= 1.25x the bare span",
    )
    burst = size(2_000, 300)
    repeats = size(21, 3)
    events = make_events(burst, seed=3)
    with scratch_dir() as tmp:
        shaped = attributes_of(events, tmp / "capture.db")
        counts = sorted({len(a) for _, a in shaped})
        print(f"   attributes per span: {counts}; {burst} calls a burst, {repeats} bursts each")

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(NullExporter()))
        tracer = provider.get_tracer("bare")
        client = DecisionTraceClient(db_path=tmp / "record.db")

        def bare() -> None:
            for name, attrs in shaped:
                span = tracer.start_span(name, attributes=dict(attrs))
                span.end()

        def ours() -> None:
            for e in events:
                record_event(client, e)

        ours_s: list[float] = []
        bare_s: list[float] = []
        bare()  # warm-up
        ours()
        client.flush()
        provider.force_flush()
        for i in range(repeats):
            order = [(bare, bare_s), (ours, ours_s)]
            if i % 2:
                order.reverse()
            for fn, out in order:
                gc.collect()
                out.append(timed(fn) / burst)
                client.flush()
                provider.force_flush()
        client.close()
        provider.shutdown()

    ours_us, bare_us = median(ours_s) * 1e6, median(bare_s) * 1e6
    ratios = sorted(o / b for o, b in zip(ours_s, bare_s, strict=True))
    print(f"   bare OTel span:          median {bare_us:7.2f} us/call")
    print(f"   decision-trace record(): median {ours_us:7.2f} us/call")
    print(
        f"   per-pair ratios: min {ratios[0]:.2f}x, median {median(ratios):.2f}x, "
        f"max {ratios[-1]:.2f}x; ratio of the medians {ours_us / bare_us:.2f}x"
    )
    if QUICK:
        print("   (quick mode: sizes too small for a meaningful ratio)")
    report_ratio("record/bare", median(ratios), at_most=1.25)


if __name__ == "__main__":
    main()
