"""``EventRecord``: one event as a ledger stores it, and the time and JSON rules of its
columns. Knows no OpenTelemetry and no SQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from .errors import InvalidInputError


@dataclass(slots=True)
class EventRecord:
    """One event in the flat form the store keeps: ids, integers, text and JSON text."""

    id: str
    trace_id: str
    parent_id: str | None
    start_ns: int
    duration_ns: int
    event_type: str
    description: str
    actor_type: str | None
    actor_id: str | None
    actor_name: str | None
    actor_json: str | None
    reasoning: str | None
    decision_json: str | None
    object_types: tuple[str, ...]
    object_ids: tuple[str, ...]
    objects_json: str | None
    tags: tuple[str, ...]
    outcome: str
    error: str | None
    metadata_json: str | None
    service_name: str | None


def span_id_hex(span_id: int) -> str:
    """A span id as 16 lowercase hex characters."""
    return format(span_id, "016x")


def trace_id_hex(trace_id: int) -> str:
    """A trace id as 32 lowercase hex characters."""
    return format(trace_id, "032x")


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def datetime_from_ns(ns: int) -> datetime:
    """An aware UTC datetime from nanoseconds since the epoch (microsecond precision)."""
    return _EPOCH + timedelta(microseconds=ns // 1000)


MIN_NS = -(2**63)
"""The earliest storable time, 1677-09-21T00:12:43.145224192Z: times are 64-bit
nanosecond counts since the epoch (SQLite integers; OpenTelemetry span times)."""
MAX_NS = 2**63 - 1
"""The latest storable time, 2262-04-11T23:47:16.854775807Z."""


def epoch_ns(value: datetime, field: str) -> int:
    """Nanoseconds since the epoch, however far from it; a naive datetime is taken as
    UTC. :func:`ns_from_datetime` also checks that the result can be stored.

    Raises:
        InvalidInputError: ``value`` is not a datetime, or its timezone gives no offset.
    """
    if not isinstance(value, datetime):
        raise InvalidInputError(field, f"must be a datetime, got {type(value).__name__}")
    try:
        if value.tzinfo is None or value.utcoffset() is None:
            value = value.replace(tzinfo=timezone.utc)
        delta = value - _EPOCH
    except Exception as exc:  # a tzinfo whose utcoffset() fails
        raise InvalidInputError(field, f"cannot be converted to UTC: {exc!r}") from None
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def ns_from_datetime(value: datetime, field: str) -> int:
    """Nanoseconds since the epoch; a naive datetime is taken as UTC.

    Raises:
        InvalidInputError: ``value`` is not a datetime, or lies outside the storable
            range (1677-09-21 to 2262-04-11 UTC, :data:`MIN_NS` to :data:`MAX_NS`).
    """
    ns = epoch_ns(value, field)
    if not MIN_NS <= ns <= MAX_NS:
        raise InvalidInputError(
            field,
            "must be between 1677-09-21T00:12:43.145225Z and 2262-04-11T23:47:16.854775Z "
            f"(times are stored as 64-bit nanoseconds since 1970), got {value.isoformat()}",
        )
    return ns


def span_ns_from_datetime(value: datetime, field: str) -> int:
    """:func:`ns_from_datetime` for a span's own time (``at()``), which OpenTelemetry
    also sends over OTLP: there a time is an unsigned count, so one before 1970 would
    make the whole export batch fail.

    Raises:
        InvalidInputError: ``value`` is not a datetime, or lies outside 1970-01-01 to
            2262-04-11 UTC (0 to :data:`MAX_NS`).
    """
    ns = epoch_ns(value, field)
    if not 0 <= ns <= MAX_NS:
        raise InvalidInputError(
            field,
            "must be between 1970-01-01T00:00:00Z and 2262-04-11T23:47:16.854775Z "
            "(a span's time is a 64-bit count of nanoseconds since 1970, unsigned in "
            f"OpenTelemetry's wire format), got {value.isoformat()}",
        )
    return ns


_scan_json: Callable[[str, int], tuple[Any, int]] = json.decoder.JSONDecoder().scan_once  # type: ignore[attr-defined]


def loads_json(text: str) -> Any:
    """Decode JSON text this module wrote (compact, one value): ``json.loads`` without
    its two whitespace regex passes; anything else goes through ``json.loads``."""
    try:
        value, end = _scan_json(text, 0)
    except StopIteration:
        return json.loads(text)  # raises the usual JSONDecodeError
    return value if end == len(text) else json.loads(text)
