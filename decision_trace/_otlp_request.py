"""Stored events to an OTLP ``ExportTraceServiceRequest`` (protobuf), and its answer
back: the wire format of shipping (:mod:`decision_trace.shipping`).

Each event becomes the span a receiver decodes back into the same record (the
attributes of :func:`decision_trace._encode.record_attributes`, the event's ids and
times, ``service.name`` on the resource, an error status for a failed event), so
``decision-trace serve``, an OpenTelemetry Collector or any OTLP backend receives what
the local exporter would have sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Span, Status

from ._encode import record_attributes
from .attributes import SERVICE_NAME, AttributeValue
from .models import Outcome
from .record import EventRecord

__all__ = ["EncodedBatch", "PartialSuccess", "encode_request", "parse_response"]

SCOPE_NAME = "decision_trace.shipping"
"""The instrumentation scope of shipped spans."""

_FAILURE = Outcome.FAILURE.value


@dataclass(frozen=True)
class EncodedBatch:
    """One request's body and what went into it.

    Attributes:
        body: The serialized ``ExportTraceServiceRequest``.
        sent: The indexes (into the records given) of the events in ``body``.
        unencodable: ``(index, reason)`` of the events that cannot be sent at all (an id
            that is not hex of the right size, a time OTLP cannot carry).
    """

    body: bytes
    sent: tuple[int, ...]
    unencodable: tuple[tuple[int, str], ...]


@dataclass(frozen=True)
class PartialSuccess:
    """The ``partial_success`` of an OTLP answer.

    Attributes:
        rejected_spans: How many spans the receiver did not accept (0: all accepted).
        error_message: Why, in the receiver's words.
    """

    rejected_spans: int
    error_message: str


def _set_value(target: AnyValue, value: AttributeValue) -> None:
    if isinstance(value, str):
        target.string_value = value
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    else:
        values = target.array_value.values
        for item in value:
            values.add().string_value = str(item)


def _fill_span(span: Span, record: EventRecord) -> None:
    trace_id = bytes.fromhex(record.trace_id)
    span_id = bytes.fromhex(record.id)
    if len(trace_id) != 16 or len(span_id) != 8:
        raise ValueError(
            f"ids must be 32 and 16 hex digits, got {record.trace_id!r}, {record.id!r}"
        )
    span.trace_id = trace_id
    span.span_id = span_id
    if record.parent_id:
        parent = bytes.fromhex(record.parent_id)
        if len(parent) != 8:
            raise ValueError(f"parent id must be 16 hex digits, got {record.parent_id!r}")
        span.parent_span_id = parent
    span.name = record.event_type
    span.kind = Span.SpanKind.SPAN_KIND_INTERNAL
    span.start_time_unix_nano = record.start_ns  # ValueError when negative or too big
    span.end_time_unix_nano = record.start_ns + max(0, record.duration_ns)
    attributes = span.attributes
    for key, value in record_attributes(record).items():
        pair: KeyValue = attributes.add()
        pair.key = key
        _set_value(pair.value, value)
    if record.outcome == _FAILURE:
        span.status.code = Status.StatusCode.STATUS_CODE_ERROR
        if record.error:
            span.status.message = record.error


def encode_request(records: Sequence[EventRecord], *, scope_version: str = "") -> EncodedBatch:
    """``records`` as one OTLP/HTTP protobuf request body, grouped by service name.

    An event that cannot be encoded is left out and named in ``unencodable``; the
    others are still sent.
    """
    request = ExportTraceServiceRequest()
    scopes: dict[str | None, ScopeSpans] = {}
    sent: list[int] = []
    unencodable: list[tuple[int, str]] = []
    for index, record in enumerate(records):
        scope_spans = scopes.get(record.service_name)
        if scope_spans is None:
            resource_spans = request.resource_spans.add()
            if record.service_name is not None:
                pair = resource_spans.resource.attributes.add()
                pair.key = SERVICE_NAME
                pair.value.string_value = record.service_name
            scope_spans = resource_spans.scope_spans.add()
            scope_spans.scope.name = SCOPE_NAME
            scope_spans.scope.version = scope_version
            scopes[record.service_name] = scope_spans
        span = scope_spans.spans.add()
        try:
            _fill_span(span, record)
        except Exception as exc:  # a value the wire format cannot carry
            del scope_spans.spans[-1]
            unencodable.append((index, f"cannot be sent as OTLP: {type(exc).__name__}: {exc}"))
            continue
        sent.append(index)
    return EncodedBatch(request.SerializeToString(), tuple(sent), tuple(unencodable))


def parse_response(body: bytes, content_type: str) -> PartialSuccess:
    """The ``partial_success`` of a 2xx answer (protobuf, or JSON when the receiver says
    so); an empty or unreadable body counts as full success, as OTLP clients take it.
    """
    response = ExportTraceServiceResponse()
    if body:
        try:
            if "json" in content_type.lower():
                json_format.Parse(body.decode("utf-8"), response, ignore_unknown_fields=True)
            else:
                response.ParseFromString(body)
        except Exception:
            return PartialSuccess(0, "")
    partial = response.partial_success
    return PartialSuccess(int(partial.rejected_spans), str(partial.error_message))
