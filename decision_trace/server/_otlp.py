"""OTLP messages to ledger records, and the OTLP answers: what the HTTP and the gRPC
receivers share.

An ``ExportTraceServiceRequest`` becomes SDK :class:`~opentelemetry.sdk.trace.ReadableSpan`
objects (the public constructor), and each of those goes through
:func:`decision_trace._decode.record_from_span`, the decoder the local exporter uses: a
span means the same thing wherever it is stored. Attribute values come back as the SDK
holds them (sequences as tuples, maps as dicts, bytes as bytes, an empty value as None),
which is exactly what the OTLP encoder of the sending SDK was given.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from .._decode import record_from_span
from ..record import MAX_NS, EventRecord

__all__ = [
    "Decoded",
    "MalformedRequest",
    "decode_request",
    "export_response",
    "parse_json",
    "parse_protobuf",
    "rejection_message",
    "response_body",
    "status_body",
]

_IS_REMOTE_KNOWN = 0x100
"""``SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`` of the OTLP ``flags`` field."""
_IS_REMOTE = 0x200
"""``SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK``."""

_KINDS = {
    PbSpan.SPAN_KIND_INTERNAL: SpanKind.INTERNAL,
    PbSpan.SPAN_KIND_SERVER: SpanKind.SERVER,
    PbSpan.SPAN_KIND_CLIENT: SpanKind.CLIENT,
    PbSpan.SPAN_KIND_PRODUCER: SpanKind.PRODUCER,
    PbSpan.SPAN_KIND_CONSUMER: SpanKind.CONSUMER,
}
_UNSET = Status(StatusCode.UNSET)
_OK = Status(StatusCode.OK)
_ERROR_MESSAGE_LIMIT = 10
"""How many rejected spans ``error_message`` names one by one."""


class MalformedRequest(ValueError):
    """The body is not an ``ExportTraceServiceRequest`` (HTTP 400, gRPC never: there the
    framework parses)."""


@dataclass
class Decoded:
    """One request's spans as records, and the spans that cannot become one."""

    records: list[EventRecord] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    """``(span id or "?", why)`` of each span that is not stored."""

    @property
    def spans(self) -> int:
        """How many spans the request held."""
        return len(self.records) + len(self.rejected)


# --- parsing --------------------------------------------------------------------------


def parse_protobuf(body: bytes) -> ExportTraceServiceRequest:
    """The request in a binary protobuf body (``application/x-protobuf``).

    Raises:
        MalformedRequest: it is not one.
    """
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise MalformedRequest(f"not an OTLP ExportTraceServiceRequest: {exc}") from None
    return request


def parse_json(body: bytes) -> ExportTraceServiceRequest:
    """The request in an OTLP/JSON body (``application/json``).

    OTLP/JSON is the protobuf JSON mapping with two changes: trace and span ids are hex
    (not base64), and keys may be lowerCamelCase or the proto field names. Enums may be
    integers or names, 64-bit integers strings or numbers; unknown fields are ignored,
    as the specification requires.

    Raises:
        MalformedRequest: it is not one.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise MalformedRequest(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise MalformedRequest("an OTLP/JSON request must be a JSON object")
    try:
        _hex_ids_to_base64(document)
        request = ExportTraceServiceRequest()
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except MalformedRequest:
        raise
    except (json_format.ParseError, RecursionError, ValueError, TypeError) as exc:
        message = " ".join(str(exc).split())[:300]
        raise MalformedRequest(f"not an OTLP/JSON ExportTraceServiceRequest: {message}") from None
    return request


def _items(parent: Mapping[str, Any], *names: str) -> Iterable[Any]:
    for name in names:
        value = parent.get(name)
        if isinstance(value, list):
            yield from value


def _hex_ids_to_base64(document: dict[str, Any]) -> None:
    """Rewrite every trace and span id from OTLP/JSON hex to the base64 that the
    protobuf JSON parser expects, in place. Anything of the wrong shape is left for the
    parser to report."""
    for resource_spans in _items(document, "resourceSpans", "resource_spans"):
        if not isinstance(resource_spans, dict):
            continue
        for scope_spans in _items(resource_spans, "scopeSpans", "scope_spans"):
            if not isinstance(scope_spans, dict):
                continue
            for span in _items(scope_spans, "spans"):
                if not isinstance(span, dict):
                    continue
                _convert_ids(span, ("traceId", "trace_id", "spanId", "span_id"))
                _convert_ids(span, ("parentSpanId", "parent_span_id"))
                for link in _items(span, "links"):
                    if isinstance(link, dict):
                        _convert_ids(link, ("traceId", "trace_id", "spanId", "span_id"))


def _convert_ids(holder: MutableMapping[str, Any], keys: Iterable[str]) -> None:
    for key in keys:
        value = holder.get(key)
        if not isinstance(value, str):
            continue
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise MalformedRequest(f"{key} must be hex (OTLP/JSON), got {value[:40]!r}") from None
        holder[key] = base64.b64encode(raw).decode("ascii")


# --- decoding -------------------------------------------------------------------------


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(_value(item) for item in value.array_value.values)
    if kind == "kvlist_value":
        return {item.key: _value(item.value) for item in value.kvlist_value.values}
    return getattr(value, kind)


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _sdk_attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    """Attributes for SDK objects that clean their attributes (a resource, a scope):
    without the empty keys they would log a warning about."""
    return {pair.key: _value(pair.value) for pair in pairs if pair.key}


def _span_id(raw: bytes, size: int, what: str) -> int:
    if len(raw) != size:
        raise ValueError(f"{what} must be {size} bytes, got {len(raw)}")
    number = int.from_bytes(raw, "big")
    if number == 0:
        raise ValueError(f"{what} is all zeros")
    return number


def _readable_span(
    span: PbSpan, resource: Resource, scope: InstrumentationScope | None
) -> ReadableSpan:
    trace_id = _span_id(span.trace_id, 16, "trace_id")
    span_id = _span_id(span.span_id, 8, "span_id")
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    if start > MAX_NS or end > MAX_NS:
        raise ValueError("start or end time after 2262-04-11 (beyond 64-bit nanoseconds)")
    flags = span.flags
    trace_flags = TraceFlags(flags & 0xFF)
    # The W3C trace state is left out: no ledger column holds it, and parsing a hostile
    # one makes the SDK log a warning per entry.
    context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=trace_flags)
    parent = None
    if span.parent_span_id:
        if len(span.parent_span_id) != 8:
            raise ValueError(f"parent_span_id must be 8 bytes, got {len(span.parent_span_id)}")
        parent_id = int.from_bytes(span.parent_span_id, "big")
        if parent_id:
            parent = SpanContext(
                trace_id,
                parent_id,
                is_remote=bool(flags & _IS_REMOTE_KNOWN and flags & _IS_REMOTE),
                trace_flags=trace_flags,
            )
    code = span.status.code
    if code == span.status.STATUS_CODE_ERROR:
        status = Status(StatusCode.ERROR, span.status.message or None)
    elif code == span.status.STATUS_CODE_OK:
        status = _OK
    else:
        status = _UNSET
    events = [
        Event(event.name, _attributes(event.attributes), event.time_unix_nano)
        for event in span.events
    ]
    links = [
        Link(
            SpanContext(
                int.from_bytes(link.trace_id, "big"),
                int.from_bytes(link.span_id, "big"),
                is_remote=True,
                trace_flags=TraceFlags(link.flags & 0xFF),
            ),
            _attributes(link.attributes),
        )
        for link in span.links
    ]
    return ReadableSpan(
        name=span.name,
        context=context,
        parent=parent,
        resource=resource,
        attributes=_attributes(span.attributes),
        events=events,
        links=links,
        kind=_KINDS.get(span.kind, SpanKind.INTERNAL),
        status=status,
        start_time=start,
        end_time=end,
        instrumentation_scope=scope,
    )


def decode_request(request: ExportTraceServiceRequest) -> Decoded:
    """Every span of ``request`` as the record the local exporter would store for it.

    A span that cannot become a record (an id of the wrong size or all zeros, a time
    beyond what a ledger holds, a value the decoder refuses) is listed in
    ``rejected``; the others are decoded, as the local exporter skips one malformed
    span and stores the rest.
    """
    decoded = Decoded()
    records, rejected = decoded.records, decoded.rejected
    for resource_spans in request.resource_spans:
        resource = Resource(
            _sdk_attributes(resource_spans.resource.attributes),
            resource_spans.schema_url or None,
        )
        for scope_spans in resource_spans.scope_spans:
            pb_scope = scope_spans.scope
            scope = InstrumentationScope(
                pb_scope.name,
                pb_scope.version or None,
                scope_spans.schema_url or None,
                _sdk_attributes(pb_scope.attributes) or None,
            )
            for span in scope_spans.spans:
                try:
                    records.append(record_from_span(_readable_span(span, resource, scope)))
                except Exception as exc:
                    rejected.append((span.span_id.hex() or "?", _reason(exc)))
    return decoded


def _reason(exc: BaseException) -> str:
    try:
        text = " ".join(str(exc).split())
    except Exception:
        text = ""
    return (text or type(exc).__name__)[:200]


def rejection_message(rejected: list[tuple[str, str]]) -> str:
    """``error_message`` for a partial success: how many spans, and why, for the first
    few of them."""
    shown = "; ".join(f"{span_id}: {why}" for span_id, why in rejected[:_ERROR_MESSAGE_LIMIT])
    more = len(rejected) - _ERROR_MESSAGE_LIMIT
    suffix = f"; and {more} more" if more > 0 else ""
    return f"{len(rejected)} span(s) not stored ({shown}{suffix})"


# --- answers --------------------------------------------------------------------------


def export_response(rejected: list[tuple[str, str]]) -> ExportTraceServiceResponse:
    """The ``ExportTraceServiceResponse``: ``partial_success`` set only when a span was
    rejected, as the specification asks."""
    response = ExportTraceServiceResponse()
    if rejected:
        response.partial_success.rejected_spans = len(rejected)
        response.partial_success.error_message = rejection_message(rejected)
    return response


def response_body(response: ExportTraceServiceResponse, as_json: bool) -> bytes:
    """The response in the request's encoding (OTLP/JSON keys are lowerCamelCase)."""
    if as_json:
        return str(json_format.MessageToJson(response, indent=None)).encode("utf-8")
    return bytes(response.SerializeToString())


def status_body(code: int, message: str, as_json: bool) -> bytes:
    """A ``google.rpc.Status`` body, what OTLP/HTTP answers a failed request with."""
    status = status_pb2.Status(code=code, message=message)
    if as_json:
        return str(json_format.MessageToJson(status, indent=None)).encode("utf-8")
    return bytes(status.SerializeToString())
