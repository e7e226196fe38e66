"""A TraceBuilder needs only a Recorder: it can be built and tested without a client,
over any OpenTelemetry provider."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span, SpanContext, TraceFlags, Tracer

from decision_trace import Redaction, TraceBuilder, record
from decision_trace import attributes as keys
from decision_trace.errors import EventNotFoundError


@dataclass
class FakeRecorder:
    """Remembers spans in a dict; knows parents only from what it remembered."""

    tracer: Tracer
    redaction: Redaction | None = None
    remembered: dict[str, SpanContext] = field(default_factory=dict)

    def remember(self, span: Span) -> str:
        context = span.get_span_context()
        event_id = record.span_id_hex(context.span_id)
        self.remembered[event_id] = context
        return event_id

    def parent_context(self, parent: str) -> SpanContext:
        known = self.remembered.get(parent)
        if known is None:
            raise EventNotFoundError(parent)
        return SpanContext(known.trace_id, known.span_id, False, TraceFlags(TraceFlags.SAMPLED))


@pytest.fixture
def spans() -> Iterator[tuple[FakeRecorder, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield FakeRecorder(provider.get_tracer("test")), exporter
    provider.shutdown()


def test_a_builder_records_through_its_recorder(
    spans: tuple[FakeRecorder, InMemorySpanExporter],
) -> None:
    recorder, exporter = spans
    parent_id = TraceBuilder(recorder, "order.created", "Order placed").by_user("cust-1").record()
    child_id = (
        TraceBuilder(recorder, "order.refunded", "Refund")
        .by_ai_agent("bot", "Support Bot")
        .affecting_order("ord-1", {"status": "refunded"})
        .because("Parcel arrived crushed")
        .child_of(parent_id)
        .record()
    )
    assert set(recorder.remembered) == {parent_id, child_id}
    parent, child = exporter.get_finished_spans()
    assert child.parent is not None and child.parent.span_id == parent.context.span_id
    assert child.attributes is not None
    assert child.attributes[keys.EVENT_TYPE] == "order.refunded"
    assert child.attributes[keys.REASONING] == "Parcel arrived crushed"
    assert child.attributes[keys.OBJECT_IDS] == ("ord-1",)
    with pytest.raises(EventNotFoundError):
        TraceBuilder(recorder, "x.y").child_of("0" * 16)


def test_a_builder_applies_its_recorders_redaction(
    spans: tuple[FakeRecorder, InMemorySpanExporter],
) -> None:
    recorder, exporter = spans
    recorder.redaction = Redaction()  # drop e-mail addresses
    TraceBuilder(recorder, "customer.updated").by_user("u1", email="ann@example.com").record()
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert keys.USER_EMAIL not in span.attributes
    assert "ann@example.com" not in repr(dict(span.attributes))
