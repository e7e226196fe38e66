"""Query parameters and cursor pages, shared by the read API (``api.py``) and the web
view (``web/``): one parser of filters and times, one keyset cursor.

The cursor of an event list is a keyset: the microsecond of the last event returned, its
id, and how many events of that microsecond came before, so a page costs the same however
deep it is, and events recorded while a client pages through never make it see an event
twice. A search's cursor is the last event's id and position.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from itertools import islice
from typing import Any

from starlette.convertors import PathConvertor, register_url_convertor
from starlette.datastructures import QueryParams

from ..errors import InvalidInputError
from ..models import TraceEvent
from ..record import epoch_ns
from ..storage import EventFilters, Ledger, Order

__all__ = [
    "FILTERS",
    "MAX_INT64",
    "Params",
    "event_page",
    "filters_from",
    "order_from",
    "parse_time",
    "search_page",
]

_RESUME_WINDOW = 1000
"""How far past its expected place a cursor's last event is looked for (events stored
meanwhile in front of it, for search's newest-stored-first order)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
MAX_INT64 = 2**63 - 1
"""The largest whole number a parameter may hold."""


class _AnyText(PathConvertor):
    """Starlette's ``path`` convertor, but matching every character: its ``.*`` stops at
    a newline, and an id holding one (``%0A``) would then match no route at all."""

    regex = "[\\s\\S]*"


register_url_convertor("dt_text", _AnyText())


# --- parameters ------------------------------------------------------------------------


class Params:
    """A request's query parameters, checked against the ones an endpoint takes."""

    def __init__(self, query: QueryParams, allowed: frozenset[str]) -> None:
        self._params = query
        for name in self._params:
            if name not in allowed:
                known = ", ".join(sorted(allowed)) or "none"
                raise InvalidInputError(name, f"is not a parameter here (known: {known})")

    def one(self, name: str) -> str | None:
        values = self._params.getlist(name)
        if len(values) > 1:
            raise InvalidInputError(name, "must be given at most once")
        return values[0] if values else None

    def many(self, name: str) -> list[str] | None:
        values = self._params.getlist(name)
        return values or None

    def integer(self, name: str, *, default: int, maximum: int) -> int:
        text = self.one(name)
        if text is None:
            return default
        if not re.fullmatch(r"[0-9]{1,19}", text):
            raise InvalidInputError(name, f"must be a whole number from 0 to {maximum}")
        value = int(text)
        if value > maximum:
            raise InvalidInputError(name, f"must be at most {maximum}, got {value}")
        return value


_TIME = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})"
    r"(?:[Tt ](?P<h>[0-9]{2}):(?P<m>[0-9]{2})(?::(?P<s>[0-9]{2})(?:[.,](?P<frac>[0-9]+))?)?)?"
    r"(?P<tz>[Zz]|[+-][0-9]{2}:?[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?)?"
)


def parse_time(text: str, field: str) -> int:
    """Nanoseconds since the epoch of an ISO 8601 / RFC 3339 time (``2026-03-01``,
    ``2026-03-01T12:00:00Z``, ``...T12:00:00.123456789+02:00``); no offset means UTC.

    Raises:
        InvalidInputError: ``text`` is not such a time, naming ``field``.
    """
    match = _TIME.fullmatch(text)
    problem = "must be an ISO 8601 time such as 2026-03-01T12:00:00Z"
    if match is None:
        raise InvalidInputError(field, f"{problem}, got {text!r}")
    tz = match["tz"]
    offset = None if tz is None or tz in "Zz" else tz
    stamp = f"{match['date']}T{match['h'] or '00'}:{match['m'] or '00'}:{match['s'] or '00'}"
    try:
        moment = datetime.fromisoformat(stamp)
        if offset is not None:
            if ":" not in offset[:4]:
                offset = offset[:3] + ":" + offset[3:]
            moment = datetime.fromisoformat(stamp + offset)
    except ValueError as exc:
        raise InvalidInputError(field, f"{problem}, got {text!r} ({exc})") from None
    fraction = (match["frac"] or "")[:9].ljust(9, "0")
    return epoch_ns(moment, field) + int(fraction)


def _nanoseconds(text: str, field: str) -> int:
    if not re.fullmatch(r"[+-]?[0-9]{1,30}", text):
        raise InvalidInputError(field, f"must be an integer (nanoseconds since 1970), got {text!r}")
    return int(text)


FILTERS = frozenset(
    {
        "start",
        "end",
        "start_ns",
        "end_ns",
        "event_type",
        "actor_type",
        "actor_id",
        "object_type",
        "object_id",
        "tag",
        "outcome",
        "correlation_id",
    }
)


def filters_from(params: Params) -> EventFilters:
    """Every filter of ``query()`` from the query string (lists as repeated parameters;
    times as ISO 8601 ``start``/``end`` or integer ``start_ns``/``end_ns``)."""
    bounds: dict[str, int | None] = {}
    for name in ("start", "end"):
        text, ns_text = params.one(name), params.one(f"{name}_ns")
        if text is not None and ns_text is not None:
            raise InvalidInputError(f"{name}_ns", f"give {name} or {name}_ns, not both")
        bounds[name] = (
            parse_time(text, name)
            if text is not None
            else _nanoseconds(ns_text, f"{name}_ns")
            if ns_text is not None
            else None
        )
    try:
        filters = EventFilters.build(
            event_types=params.many("event_type"),
            actor_types=params.many("actor_type"),
            actor_ids=params.many("actor_id"),
            object_types=params.many("object_type"),
            object_ids=params.many("object_id"),
            tags=params.many("tag"),
            outcome=params.one("outcome"),
            correlation_id=params.one("correlation_id"),
        )
    except InvalidInputError as exc:  # name the query parameter, not query()'s argument
        name = _PARAMETER_OF.get(exc.field, exc.field)
        raise InvalidInputError(name, exc.problem) from None
    return replace(filters, start_ns=bounds["start"], end_ns=bounds["end"])


_PARAMETER_OF = {
    "event_types": "event_type",
    "actor_types": "actor_type",
    "actor_ids": "actor_id",
    "object_types": "object_type",
    "object_ids": "object_id",
    "tags": "tag",
}


def order_from(params: Params) -> Order:
    order = params.one("order")
    if order is None or order == "desc":
        return "desc"
    if order == "asc":
        return "asc"
    raise InvalidInputError("order", f"must be 'desc' or 'asc', got {order!r}")


# --- cursors ---------------------------------------------------------------------------


def _fingerprint(*parts: object) -> str:
    """What a cursor was made for (the filters and order, or the search text)."""
    return hashlib.sha256(repr(parts).encode("utf-8", "replace")).hexdigest()[:16]


def _encode_cursor(fields: dict[str, Any]) -> str:
    raw = json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


_BAD_CURSOR = "is not a cursor this server gave for these parameters"


def _decode_cursor(text: str, fingerprint: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """The fields of a cursor :func:`_encode_cursor` made for ``fingerprint``.

    Raises:
        InvalidInputError: anything else.
    """
    if len(text) > 512:
        raise InvalidInputError("cursor", _BAD_CURSOR)
    try:
        data = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error):
        raise InvalidInputError("cursor", _BAD_CURSOR) from None
    if (
        not isinstance(data, dict)
        or data.get("f") != fingerprint
        or set(data) != {"f", *keys}
        or not isinstance(data.get("i"), str)
        or not all(type(data[key]) is int and abs(data[key]) < 2**62 for key in keys if key != "i")
        or data.get("n", 1) < 1
    ):
        raise InvalidInputError("cursor", _BAD_CURSOR)
    return data


def _microsecond(event: TraceEvent) -> int:
    """The microsecond an event started in (its timestamp's precision)."""
    return (event.timestamp - _EPOCH) // _MICROSECOND


def _resume(
    stream: Iterator[TraceEvent], last_id: str, seen: int, want: int
) -> tuple[list[TraceEvent], int]:
    """The ``want`` events after ``last_id`` in ``stream``, where it was event number
    ``seen`` (1-based), and how many events of the stream precede them.

    Events stored or deleted meanwhile may have moved it: it is looked for among the
    first ``seen + _RESUME_WINDOW`` events. Not found (deleted), the page starts after
    position ``seen`` instead. Memory holds at most the window, however deep the page.
    """
    after_seen: list[TraceEvent] = []  # the events past position `seen`, in case
    for position, event in enumerate(stream, 1):
        if event.id == last_id:
            return list(islice(stream, want)), position
        if position > seen:
            after_seen.append(event)
            if len(after_seen) >= _RESUME_WINDOW + want:
                break
    return after_seen[:want], seen


def event_page(
    ledger: Ledger,
    filters: EventFilters,
    order: Order,
    limit: int,
    offset: int,
    cursor: str | None,
) -> tuple[list[TraceEvent], str | None]:
    """One page of the events matching ``filters`` and the cursor of the next page (None
    on the last), for a worker thread.

    Raises:
        InvalidInputError: ``cursor`` was not made for these filters and order.
    """
    fingerprint = _fingerprint(filters, order)
    before = 0  # events of the page's first microsecond that came before it
    if cursor is None:
        events = ledger.query(filters, limit=limit + 1, offset=offset, order=order)
        first_us = None
    else:
        state = _decode_cursor(cursor, fingerprint, ("b", "i", "n"))
        first_us, last_id, seen = state["b"], state["i"], state["n"]
        # From the start of that microsecond: its events, then the older (or newer) ones.
        if order == "desc":
            end = (first_us + 1) * 1000
            if filters.end_ns is not None:
                end = min(end, filters.end_ns)
            bounded = replace(filters, end_ns=end)
        else:
            start = first_us * 1000
            if filters.start_ns is not None:
                start = max(start, filters.start_ns)
            bounded = replace(filters, start_ns=start)
        found = ledger.query(bounded, limit=limit + 2, offset=seen - 1, order=order)
        if found and found[0].id == last_id and _microsecond(found[0]) == first_us:
            events, before = found[1:], seen
        else:  # events stored or deleted in that microsecond meanwhile: find it again
            with closing(ledger.iter_events(bounded, order=order)) as stream:
                events, before = _resume(stream, last_id, seen, limit + 1)
    more = len(events) > limit
    events = events[:limit]
    next_cursor = None
    if more and events:
        last_us = _microsecond(events[-1])
        same = 0
        for event in reversed(events):
            if _microsecond(event) != last_us:
                break
            same += 1
        if same == len(events) and last_us == first_us:
            same += before
        next_cursor = _encode_cursor(
            {"f": fingerprint, "b": last_us, "i": events[-1].id, "n": same}
        )
    return events, next_cursor


def search_page(
    ledger: Ledger, text: str, limit: int, cursor: str | None
) -> tuple[list[TraceEvent], str | None]:
    """One page of a full-text search, most recently stored first, and the cursor of the
    next page (None on the last), for a worker thread.

    Raises:
        InvalidInputError: ``cursor`` was not made for this search.
    """
    fingerprint = _fingerprint("search", text)
    with closing(ledger.iter_search(text)) as stream:
        if cursor is None:
            events, before = list(islice(stream, limit + 1)), 0
        else:
            state = _decode_cursor(cursor, fingerprint, ("i", "n"))
            events, before = _resume(stream, state["i"], state["n"], limit + 1)
    more = len(events) > limit
    events = events[:limit]
    next_cursor = None
    if more and events:
        next_cursor = _encode_cursor(
            {"f": fingerprint, "i": events[-1].id, "n": before + len(events)}
        )
    return events, next_cursor
