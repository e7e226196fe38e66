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
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from ..errors import EventNotFoundError, InvalidInputError, StoreError
from ..models import ObjectType, TraceEvent
from ..serialize import chain_to_json, event_to_json, summary_to_json
from ..storage import EventFilters, Ledger
from ..storage.http import API_PREFIX, MAX_PAGE
from ._paging import (
    FILTERS,
    MAX_INT64,
    Params,
    event_page,
    filters_from,
    order_from,
    search_page,
)
from .openapi import openapi_document

__all__ = ["API_PREFIX", "MAX_PAGE", "TokenCheck", "json_error", "routes"]

_logger = logging.getLogger("decision_trace.server")

TokenCheck = Callable[[Request], Response | None]
"""The app's authentication: a 401 response for a request without the right bearer
token, None for one that may go on."""

READY_TIMEOUT_S = 5.0
"""How long ``/readyz`` waits for the ledger before answering 503."""


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


def _page_json(page: tuple[list[TraceEvent], str | None]) -> dict[str, Any]:
    events, next_cursor = page
    return {"events": [event_to_json(e) for e in events], "next_cursor": next_cursor}


# --- the routes ------------------------------------------------------------------------


# The "dt_text" path convertor (any character, newlines too) is registered by _paging.

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
        Params(request.query_params, frozenset())
        return JSONAnswer(openapi_document())

    async def events(self, request: Request) -> Response:
        params = Params(request.query_params, FILTERS | {"order", "limit", "offset", "cursor"})
        filters = filters_from(params)
        order = order_from(params)
        limit = params.integer("limit", default=100, maximum=MAX_PAGE)
        offset = params.integer("offset", default=0, maximum=MAX_INT64)
        cursor = params.one("cursor")
        if cursor is not None and offset:
            raise InvalidInputError("offset", "goes with the first page only, not with a cursor")
        page = await run_in_threadpool(
            event_page, self.ledger, filters, order, limit, offset, cursor
        )
        return JSONAnswer(_page_json(page))

    async def count(self, request: Request) -> Response:
        filters = filters_from(Params(request.query_params, FILTERS))
        return JSONAnswer({"count": await run_in_threadpool(self.ledger.count, filters)})

    async def event(self, request: Request) -> Response:
        Params(request.query_params, frozenset())
        event_id = request.path_params["event_id"]
        event = await run_in_threadpool(self.ledger.get_event, event_id)
        if event is None:
            return json_error(404, f"no event with id {event_id!r}")
        return JSONAnswer(event_to_json(event))

    async def chain(self, request: Request) -> Response:
        Params(request.query_params, frozenset())
        event_id = request.path_params["event_id"]

        def work() -> list[dict[str, Any]]:
            return chain_to_json(self.ledger.get_chain(event_id))

        return JSONAnswer({"events": await run_in_threadpool(work)})

    async def event_ids(self, request: Request) -> Response:
        params = Params(request.query_params, frozenset({"prefix", "limit"}))
        prefix = params.one("prefix")
        if prefix is None:
            raise InvalidInputError("prefix", "is required")
        limit = params.integer("limit", default=10, maximum=MAX_PAGE)
        ids = await run_in_threadpool(
            lambda: self.ledger.event_ids_with_prefix(prefix, limit=limit)
        )
        return JSONAnswer({"ids": ids})

    async def objects(self, request: Request) -> Response:
        params = Params(request.query_params, frozenset({"id"}))
        external_id = params.one("id")
        if external_id is None:
            raise InvalidInputError("id", "is required")
        types = await run_in_threadpool(self.ledger.object_types_of, external_id)
        return JSONAnswer({"external_id": external_id, "types": [t.value for t in types]})

    async def history(self, request: Request) -> Response:
        params = Params(request.query_params, frozenset({"limit", "cursor"}))
        kind = ObjectType.parse(request.path_params["object_type"], "object_type")
        external_id = request.path_params["external_id"]
        if not external_id:
            raise InvalidInputError("external_id", "must be a non-empty string")
        filters = EventFilters.build(object_types=kind, object_ids=external_id)
        limit = params.integer("limit", default=100, maximum=MAX_PAGE)
        page = await run_in_threadpool(
            event_page, self.ledger, filters, "asc", limit, 0, params.one("cursor")
        )
        return JSONAnswer(
            {"object_type": kind.value, "external_id": external_id, **_page_json(page)}
        )

    async def search(self, request: Request) -> Response:
        params = Params(request.query_params, frozenset({"q", "limit", "cursor"}))
        text = params.one("q")
        if text is None:
            raise InvalidInputError("q", "is required (the words to search for)")
        limit = params.integer("limit", default=50, maximum=MAX_PAGE)
        page = await run_in_threadpool(search_page, self.ledger, text, limit, params.one("cursor"))
        return JSONAnswer(_page_json(page))

    async def stats(self, request: Request) -> Response:
        params = Params(request.query_params, frozenset({"days"}))
        days_text = params.one("days")
        days = None if days_text is None else params.integer("days", default=0, maximum=MAX_INT64)

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
