"""The read API of ``decision-trace serve``: ``/api/v1/...``, ``/openapi.json``,
``/healthz`` and ``/readyz``.

Thin routes over one :class:`~decision_trace.storage.Ledger`: each parses its query
parameters, runs the ledger call on a worker thread (never on the event loop), and
answers JSON in the shapes of the command line's ``--json`` (``decision_trace.serialize``).
The app (``decision_trace.server.app``) mounts them::

    from starlette.applications import Starlette
    from decision_trace.server.api import routes

    app = Starlette(routes=routes(ledger, token_check))

Errors are JSON too, ``{"status": 400, "error": "limit: must be ..."}`` (with ``"field"``
for a bad parameter): 400 bad parameters, 401 (the app's ``token_check``), 404 an unknown
event or path, 405 a method other than GET, 503 a ledger that cannot be read.

Lists are pages, newest first (``events``; ``order=asc`` for oldest first), with an
opaque ``next_cursor`` to pass back as ``cursor`` for the next page (null on the last).
The cursor of ``events`` and of an object's history is a keyset: the microsecond of the
last event returned, its id, and how many events of that microsecond came before, so a
page costs the same however deep it is, and events recorded while a client pages
through never make it see an event twice.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import closing
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from itertools import islice
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from ..errors import EventNotFoundError, InvalidInputError, StoreError
from ..models import ObjectType, TraceEvent
from ..record import epoch_ns
from ..serialize import chain_to_json, event_to_json, summary_to_json
from ..storage import EventFilters, Ledger, Order
from ..storage.http import API_PREFIX, MAX_PAGE
from .openapi import openapi_document

__all__ = ["API_PREFIX", "MAX_PAGE", "TokenCheck", "json_error", "routes"]

_logger = logging.getLogger("decision_trace.server")

TokenCheck = Callable[[Request], Response | None]
"""The app's authentication: a 401 response for a request without the right bearer
token, None for one that may go on."""

READY_TIMEOUT_S = 5.0
"""How long ``/readyz`` waits for the ledger before answering 503."""

_RESUME_WINDOW = 1000
"""How far past its expected place a cursor's last event is looked for (events stored
meanwhile in front of it, for search's newest-stored-first order)."""

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
_MAX_INT64 = 2**63 - 1


# --- answers ---------------------------------------------------------------------------


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats as strings (JSON has no NaN or Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


class JSONAnswer(Response):
    """A JSON response: compact, ASCII, never cached (the ledger holds personal data)."""

    media_type = "application/json"

    def __init__(
        self, content: Any, status_code: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(
            content,
            status_code,
            {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", **(headers or {})},
        )

    def render(self, content: Any) -> bytes:
        try:
            text = json.dumps(content, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
        except ValueError:  # a NaN a foreign span carried in its attributes
            text = json.dumps(_finite(content), ensure_ascii=True, separators=(",", ":"))
        return text.encode("ascii")


def json_error(
    status: int, message: str, *, field: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    """The read API's error answer, ``{"status": N, "error": message}`` (and ``"field"``,
    the parameter at fault, for a 400). The app's ``token_check`` answers its 401 with it
    too, so that every error of the service has one shape."""
    body: dict[str, Any] = {"status": status, "error": message}
    if field is not None:
        body["field"] = field
    return JSONAnswer(body, status, headers)


# --- parameters ------------------------------------------------------------------------


class _Params:
    """A request's query parameters, checked against the ones an endpoint takes."""

    def __init__(self, request: Request, allowed: frozenset[str]) -> None:
        self._params = request.query_params
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


_FILTERS = frozenset(
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


def _filters(params: _Params) -> EventFilters:
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


def _order(params: _Params) -> Order:
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


def _event_page(
    ledger: Ledger,
    filters: EventFilters,
    order: Order,
    limit: int,
    offset: int,
    cursor: str | None,
) -> dict[str, Any]:
    """One page of the events matching ``filters`` (worker thread)."""
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
    return {"events": [event_to_json(e) for e in events], "next_cursor": next_cursor}


def _search_page(ledger: Ledger, text: str, limit: int, cursor: str | None) -> dict[str, Any]:
    """One page of a full-text search, most recently stored first (worker thread)."""
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
    return {"events": [event_to_json(e) for e in events], "next_cursor": next_cursor}


# --- the routes ------------------------------------------------------------------------


class _AnyText(PathConvertor):
    """Starlette's ``path`` convertor, but matching every character: its ``.*`` stops at
    a newline, and an id holding one (``%0A``) would then match no route at all."""

    regex = "[\\s\\S]*"


register_url_convertor("dt_text", _AnyText())

_Handler = Callable[[Request], Awaitable[Response]]


class _Endpoint:
    """An ASGI endpoint answering GET (and HEAD) with ``handler``, every other method with
    a JSON 405, and mapping the library's errors to JSON answers."""

    def __init__(self, handler: _Handler, token_check: TokenCheck | None) -> None:
        self._handler = handler
        self._token_check = token_check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        response = await self._answer(request)
        await response(scope, receive, send)

    async def _answer(self, request: Request) -> Response:
        if self._token_check is not None:
            denied = self._token_check(request)
            if denied is not None:
                return denied
        if request.method not in ("GET", "HEAD"):
            return json_error(
                405,
                f"{request.method} is not allowed: the read API only answers GET",
                headers={"Allow": "GET, HEAD"},
            )
        try:
            return await self._handler(request)
        except InvalidInputError as exc:
            return json_error(400, str(exc), field=exc.field)
        except EventNotFoundError as exc:
            return json_error(404, str(exc))
        except StoreError as exc:
            _logger.warning("the ledger cannot be read: %s", exc)
            return json_error(503, f"the ledger cannot be read: {exc}")
        except Exception:
            _logger.exception("error answering %s %s", request.method, request.url.path)
            return json_error(500, "internal error (logged by the server)")


class _ReadAPI:
    """The handlers, over one ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def healthz(self, request: Request) -> Response:
        return JSONAnswer({"ok": True})

    async def readyz(self, request: Request) -> Response:
        # One indexed lookup: the ledger answers. Not logged: a probe repeats every few
        # seconds while the store is down, and the reads that fail are logged already.
        try:
            await asyncio.wait_for(
                run_in_threadpool(self.ledger.trace_id_of, "0" * 16), READY_TIMEOUT_S
            )
        except asyncio.TimeoutError:
            return json_error(503, f"the ledger did not answer within {READY_TIMEOUT_S:g} s")
        except StoreError as exc:
            return json_error(503, f"the ledger cannot be read: {exc}")
        return JSONAnswer({"ready": True})

    async def openapi(self, request: Request) -> Response:
        _Params(request, frozenset())
        return JSONAnswer(openapi_document())

    async def events(self, request: Request) -> Response:
        params = _Params(request, _FILTERS | {"order", "limit", "offset", "cursor"})
        filters = _filters(params)
        order = _order(params)
        limit = params.integer("limit", default=100, maximum=MAX_PAGE)
        offset = params.integer("offset", default=0, maximum=_MAX_INT64)
        cursor = params.one("cursor")
        if cursor is not None and offset:
            raise InvalidInputError("offset", "goes with the first page only, not with a cursor")
        page = await run_in_threadpool(
            _event_page, self.ledger, filters, order, limit, offset, cursor
        )
        return JSONAnswer(page)

    async def count(self, request: Request) -> Response:
        filters = _filters(_Params(request, _FILTERS))
        return JSONAnswer({"count": await run_in_threadpool(self.ledger.count, filters)})

    async def event(self, request: Request) -> Response:
        _Params(request, frozenset())
        event_id = request.path_params["event_id"]
        event = await run_in_threadpool(self.ledger.get_event, event_id)
        if event is None:
            return json_error(404, f"no event with id {event_id!r}")
        return JSONAnswer(event_to_json(event))

    async def chain(self, request: Request) -> Response:
        _Params(request, frozenset())
        event_id = request.path_params["event_id"]

        def work() -> list[dict[str, Any]]:
            return chain_to_json(self.ledger.get_chain(event_id))

        return JSONAnswer({"events": await run_in_threadpool(work)})

    async def event_ids(self, request: Request) -> Response:
        params = _Params(request, frozenset({"prefix", "limit"}))
        prefix = params.one("prefix")
        if prefix is None:
            raise InvalidInputError("prefix", "is required")
        limit = params.integer("limit", default=10, maximum=MAX_PAGE)
        ids = await run_in_threadpool(
            lambda: self.ledger.event_ids_with_prefix(prefix, limit=limit)
        )
        return JSONAnswer({"ids": ids})

    async def objects(self, request: Request) -> Response:
        params = _Params(request, frozenset({"id"}))
        external_id = params.one("id")
        if external_id is None:
            raise InvalidInputError("id", "is required")
        types = await run_in_threadpool(self.ledger.object_types_of, external_id)
        return JSONAnswer({"external_id": external_id, "types": [t.value for t in types]})

    async def history(self, request: Request) -> Response:
        params = _Params(request, frozenset({"limit", "cursor"}))
        kind = ObjectType.parse(request.path_params["object_type"], "object_type")
        external_id = request.path_params["external_id"]
        if not external_id:
            raise InvalidInputError("external_id", "must be a non-empty string")
        filters = EventFilters.build(object_types=kind, object_ids=external_id)
        limit = params.integer("limit", default=100, maximum=MAX_PAGE)
        page = await run_in_threadpool(
            _event_page, self.ledger, filters, "asc", limit, 0, params.one("cursor")
        )
        return JSONAnswer({"object_type": kind.value, "external_id": external_id, **page})

    async def search(self, request: Request) -> Response:
        params = _Params(request, frozenset({"q", "limit", "cursor"}))
        text = params.one("q")
        if text is None:
            raise InvalidInputError("q", "is required (the words to search for)")
        limit = params.integer("limit", default=50, maximum=MAX_PAGE)
        page = await run_in_threadpool(_search_page, self.ledger, text, limit, params.one("cursor"))
        return JSONAnswer(page)

    async def stats(self, request: Request) -> Response:
        params = _Params(request, frozenset({"days"}))
        days_text = params.one("days")
        days = None if days_text is None else params.integer("days", default=0, maximum=_MAX_INT64)

        def work() -> dict[str, Any]:
            summary = self.ledger.summary(days=days)
            size, wal = self.ledger.size_bytes()
            return summary_to_json(
                summary, location=self.ledger.location, size_bytes=size, wal_bytes=wal
            )

        return JSONAnswer(await run_in_threadpool(work))

    async def not_found(self, request: Request) -> Response:
        return json_error(404, f"no such path: {request.url.path} (see /openapi.json)")


def routes(ledger: Ledger, token_check: TokenCheck) -> list[BaseRoute]:
    """The read API's routes over ``ledger``, for the app to mount at its root.

    Args:
        ledger: The ledger to answer from (any backend).
        token_check: The app's authentication, called first on every request except
            ``/healthz`` and ``/readyz`` (probes, which reveal nothing): a response
            (401) to send instead, or None to go on.
    """
    api = _ReadAPI(ledger)

    def route(path: str, handler: _Handler, *, open_to_all: bool = False) -> Route:
        return Route(path, _Endpoint(handler, None if open_to_all else token_check))

    return [
        route("/healthz", api.healthz, open_to_all=True),
        route("/readyz", api.readyz, open_to_all=True),
        route("/openapi.json", api.openapi),
        route(f"{API_PREFIX}/events", api.events),
        route(f"{API_PREFIX}/events/count", api.count),
        route(f"{API_PREFIX}/events/{{event_id}}", api.event),
        route(f"{API_PREFIX}/events/{{event_id}}/chain", api.chain),
        route(f"{API_PREFIX}/event-ids", api.event_ids),
        route(f"{API_PREFIX}/objects", api.objects),
        route(f"{API_PREFIX}/objects/{{object_type}}/{{external_id:dt_text}}/history", api.history),
        route(f"{API_PREFIX}/search", api.search),
        route(f"{API_PREFIX}/stats", api.stats),
        route(API_PREFIX, api.not_found),
        route(f"{API_PREFIX}/{{rest:dt_text}}", api.not_found),
    ]
