"""The pages: thin handlers that ask the ledger one or two bounded questions each and
render a template.

Every handler runs its ledger calls on a worker thread, asks for at most a page of
events (a limit on every call), and renders through :mod:`._format`, whose values the
templates escape. Only ``POST /login`` and ``POST /logout`` take anything but GET/HEAD,
and neither touches the ledger.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ...errors import EventNotFoundError, InvalidInputError, StoreError
from ...models import ActorType, ChainNode, ObjectType, Outcome, TraceEvent
from ...storage import EventFilters, Ledger
from .._paging import FILTERS, Params, event_page, filters_from, search_page
from . import _format
from ._session import Session

__all__ = ["SECURITY_HEADERS", "Pages"]

_logger = logging.getLogger("decision_trace.server")

TIMELINE_PAGE = 50
"""Events on one page of the timeline and of search results."""

HISTORY_PAGE = 200
"""Events on one page of an object's story."""

CHAIN_ROWS = 500
"""Events of a chain drawn on its page."""

STATS_DAYS = (7, 30, 90, 365)
"""The windows the overview offers; the first page shows 30 days."""

STATS_SAMPLE = 200
"""The newest events of the overview's window that its breakdowns count."""

_DAY_NS = 86_400 * 10**9

_LOGIN_BODY_LIMIT = 8192

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}
"""Headers of every page and static file: no inline script or style, no framing, no
referrer, no sniffing, not cached (the ledger holds personal data)."""

_TEMPLATES = Path(__file__).parent / "templates"

_OBJECT_QUERY = re.compile(r"^\s*([A-Za-z_]+)(?::\s*|\s+)(\S(?:.*\S)?)\s*$", re.DOTALL)
_EVENT_ID = re.compile(r"^\s*([0-9a-fA-F]{16})\s*$")
_ID_PREFIX = re.compile(r"[0-9a-fA-F]{4,15}")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,  # the templates ship with the package: no stat() per page
    )
    env.globals.update(
        object_href=_format.object_href,
        event_href=_format.event_href,
        time_tag=_format.time_tag,
        fold=_format.fold,
        clean=_format.clean,
        first_line=_format.first_line,
        value_text=_format.value_text,
        diff_rows=_format.diff_rows,
        duration_text=_format.duration_text,
        highlight=_format.highlight,
        alternatives=_format.alternatives,
        actor_badges=_format.ACTOR_BADGES,
        actor_types=[t.value for t in ActorType],
        object_types=[t.value for t in ObjectType],
        outcomes=[o.value for o in Outcome],
    )
    return env


@dataclass(frozen=True)
class _ChainRow:
    depth: int
    event: TraceEvent
    x: float
    width: float


_Handler = Callable[[Request], Awaitable[Response]]


class Pages:
    """The page handlers over one ledger, behind one :class:`Session`."""

    def __init__(self, ledger: Ledger, session: Session) -> None:
        self.ledger = ledger
        self.session = session
        self.env = _environment()

    # -- plumbing ------------------------------------------------------------------------

    def render(self, name: str, status: int = 200, **context: Any) -> Response:
        """A template as an HTML response with the security headers."""
        context.setdefault("login_required", self.session.required)
        context.setdefault("q", "")
        html = self.env.get_template(name).render(**context)
        return HTMLResponse(html, status, headers=SECURITY_HEADERS)

    def error(self, status: int, title: str, message: str) -> Response:
        """An error page (the message is escaped like everything else)."""
        return self.render("error.html", status, title=title, message=message)

    def guarded(self, handler: _Handler) -> _Handler:
        """``handler`` behind the token check and the library's errors as pages."""

        async def endpoint(request: Request) -> Response:
            if not self.session.allows(request):
                if self.session.has_header(request):
                    response = self.error(401, "Not signed in", "Wrong bearer token.")
                    response.headers["WWW-Authenticate"] = "Bearer"
                    return response
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return _redirect("/login?" + urlencode({"next": target}))
            try:
                return await handler(request)
            except InvalidInputError as exc:
                return self.error(400, "Bad request", str(exc))
            except EventNotFoundError as exc:
                return self.error(404, "Not found", str(exc))
            except StoreError as exc:
                _logger.warning("the ledger cannot be read: %s", exc)
                return self.error(503, "Ledger unavailable", f"The ledger cannot be read: {exc}")
            except Exception:
                _logger.exception("error answering %s %s", request.method, request.url.path)
                return self.error(500, "Internal error", "Internal error (logged by the server).")

        return endpoint

    # -- pages ---------------------------------------------------------------------------

    async def timeline(self, request: Request) -> Response:
        """``/``: newest events first, filtered, a page at a time."""
        query = _form_values(request)
        params = Params(query, FILTERS | {"cursor"})
        filters = filters_from(params)
        cursor = params.one("cursor")
        events, next_cursor = await run_in_threadpool(
            event_page, self.ledger, filters, "desc", TIMELINE_PAGE, 0, cursor
        )
        form = {k: v for k, v in query.multi_items() if k != "cursor"}
        next_href = None
        if next_cursor is not None:
            next_href = "/?" + urlencode([*form.items(), ("cursor", next_cursor)])
        return self.render(
            "timeline.html",
            events=events,
            form=form,
            filtered=bool(form),
            first_page=cursor is None,
            next_href=next_href,
        )

    async def object_story(self, request: Request) -> Response:
        """``/objects/{type}/{id}``: the events that touched one object, oldest first:
        the newest :data:`HISTORY_PAGE` of them, and a cursor to the earlier ones (an
        object touched a million times still answers with one page)."""
        kind = ObjectType.parse(request.path_params["object_type"], "object_type")
        external_id = request.path_params["external_id"]
        if not external_id:
            raise InvalidInputError("external_id", "must be a non-empty string")
        params = Params(request.query_params, frozenset({"cursor"}))
        cursor = params.one("cursor")
        filters = EventFilters.build(object_types=kind, object_ids=external_id)

        def work() -> tuple[list[TraceEvent], str | None, int]:
            events, earlier = event_page(self.ledger, filters, "desc", HISTORY_PAGE, 0, cursor)
            total = (
                len(events)
                if cursor is None and earlier is None
                else self.ledger.count_object_history(external_id, kind)
            )
            return events[::-1], earlier, total

        events, earlier, total = await run_in_threadpool(work)
        if not events and cursor is None:
            return self.error(
                404,
                "No such object",
                f"No recorded event touched {kind.value} {external_id!r}.",
            )
        here = _format.object_href(kind.value, external_id)
        return self.render(
            "object.html",
            kind=kind.value,
            external_id=external_id,
            events=events,
            total=total,
            latest_page=cursor is None,
            latest_href=here,
            earlier_href=None if earlier is None else f"{here}?cursor={quote(earlier)}",
        )

    async def event(self, request: Request) -> Response:
        """``/events/{id}``: everything about one decision."""
        Params(request.query_params, frozenset())
        event_id = request.path_params["event_id"]
        event = await run_in_threadpool(self.ledger.get_event, event_id)
        if event is None:
            full = await run_in_threadpool(self._unique_id, event_id)
            if full is not None:
                return _redirect(_format.event_href(full))
            return self.error(404, "No such event", f"No event with id {event_id!r}.")
        return self.render("event.html", event=event)

    def _unique_id(self, prefix: str) -> str | None:
        """The one stored event id starting with ``prefix`` (4 to 15 hex digits, as
        ``decision-trace show 3f2a`` takes), or None."""
        if not _ID_PREFIX.fullmatch(prefix):
            return None
        ids = self.ledger.event_ids_with_prefix(prefix.lower(), limit=2)
        return ids[0] if len(ids) == 1 else None

    async def chain(self, request: Request) -> Response:
        """``/events/{id}/chain``: the workflow's tree as a waterfall."""
        Params(request.query_params, frozenset())
        event_id = request.path_params["event_id"]
        root = await run_in_threadpool(self.ledger.get_chain, event_id)
        rows, total = _waterfall(root)
        start = min(r.event.timestamp for r in rows)
        end = max(r.event.timestamp + r.event.duration for r in rows)
        return self.render(
            "chain.html",
            root=root.event,
            focus=event_id,
            rows=rows,
            total=total,
            span=_format.duration_text(end - start),
        )

    async def search(self, request: Request) -> Response:
        """``/search?q=``: full-text results; an object (``order:123``, ``order 123``)
        or an event id goes straight to its page."""
        params = Params(request.query_params, frozenset({"q", "cursor"}))
        text = (params.one("q") or "").strip()
        cursor = params.one("cursor")
        if not text:
            return self.render("search.html", q="", events=[], words=[], next_href=None)
        if cursor is None:
            target = await run_in_threadpool(self._direct_target, text)
            if target is not None:
                return _redirect(target)
        events, next_cursor = await run_in_threadpool(
            search_page, self.ledger, text, TIMELINE_PAGE, cursor
        )
        next_href = None
        if next_cursor is not None:
            next_href = "/search?" + urlencode({"q": text, "cursor": next_cursor})
        words = [w for w in re.split(r"\W+", text) if w]
        return self.render("search.html", q=text, events=events, words=words, next_href=next_href)

    def _direct_target(self, text: str) -> str | None:
        """Where the search box goes instead of searching: ``type:id`` always goes to
        the object; ``type id`` when such an object was touched (else ``order refund``
        could never be searched for); a whole event id when it is stored."""
        match = _OBJECT_QUERY.match(text)
        if match is not None and match.group(1).lower() in {t.value for t in ObjectType}:
            kind, external_id = match.group(1).lower(), match.group(2)
            explicit = text.split(match.group(1), 1)[1].lstrip().startswith(":")
            if explicit or self.ledger.object_history(external_id, kind, limit=1):
                return _format.object_href(kind, external_id)
        match = _EVENT_ID.match(text)
        if match is not None and self.ledger.get_event(match.group(1).lower()) is not None:
            return _format.event_href(match.group(1).lower())
        if len(text) >= 8:
            full = self._unique_id(text)
            if full is not None:
                return _format.event_href(full)
        return None

    async def stats(self, request: Request) -> Response:
        """``/stats``: events per UTC day over a window (exact, one count per day on the
        time index), and by type, actor type and outcome among the window's newest
        :data:`STATS_SAMPLE` events (one query with a limit): never a scan of the whole
        ledger."""
        params = Params(request.query_params, frozenset({"days"}))
        days = params.integer("days", default=30, maximum=3660)
        if days < 1:
            raise InvalidInputError("days", "must be at least 1")
        overview = await run_in_threadpool(_overview, self.ledger, days)
        return self.render("stats.html", o=overview, days=days, choices=STATS_DAYS)

    # -- signing in ----------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        """``GET /login``."""
        if not self.session.required:
            return _redirect("/")
        nxt = _safe_next(request.query_params.get("next"))
        return self.render("login.html", next=nxt, failed=False, login_required=False)

    async def login(self, request: Request) -> Response:
        """``POST /login``: check the typed token; set the cookie and go on, or say no."""
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _LOGIN_BODY_LIMIT:
                return self.error(413, "Too large", "The login form is larger than expected.")
        fields = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        nxt = _safe_next(fields.get("next"))
        if not self.session.required:
            return _redirect(nxt)
        if not self.session.check_typed(fields.get("token", "")):
            return self.render("login.html", 401, next=nxt, failed=True, login_required=False)
        response = _redirect(nxt)
        self.session.login(response, secure=request.url.scheme == "https")
        return response

    async def logout(self, request: Request) -> Response:
        """``POST /logout``: clear the cookie."""
        response = _redirect("/login" if self.session.required else "/")
        self.session.logout(response, secure=request.url.scheme == "https")
        return response


def _redirect(target: str) -> Response:
    return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)


def _safe_next(value: str | None) -> str:
    """A same-site path to go to after login (anything else: the timeline)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return "/"
    if any(ch in value for ch in "\r\n\\") or len(value) > 2000:
        return "/"
    return value


def _form_values(request: Request) -> QueryParams:
    """The query string without the empty fields an HTML form sends."""
    return QueryParams([(k, v) for k, v in request.query_params.multi_items() if v.strip()])


@dataclass(frozen=True)
class _Overview:
    """What the overview page draws."""

    bars: list[dict[str, Any]]
    peak: int
    total: int
    chart_width: int
    sampled: int
    sample_since: datetime | None
    by_event_type: list[tuple[str, int]]
    by_actor_type: list[tuple[str | None, int]]
    by_outcome: list[tuple[str, int]]


def _overview(ledger: Ledger, days: int) -> _Overview:
    """Events per UTC day over the last ``days`` days (today included), and the
    breakdowns of the window's newest :data:`STATS_SAMPLE` events (worker thread)."""
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    first = today - timedelta(days=days - 1)
    start_ns = int(first.timestamp()) * 10**9
    counts = [
        ledger.count(
            EventFilters(start_ns=start_ns + k * _DAY_NS, end_ns=start_ns + (k + 1) * _DAY_NS)
        )
        for k in range(days)
    ]
    peak = max([*counts, 1])
    bars = [
        {
            "day": (first + timedelta(days=k)).date().isoformat(),
            "count": n,
            "x": k * 10,
            "height": round(100 * n / peak, 2),
        }
        for k, n in enumerate(counts)
    ]
    sample = ledger.query(EventFilters(start_ns=start_ns), limit=STATS_SAMPLE)
    by_type: dict[str, int] = {}
    by_actor: dict[str | None, int] = {}
    by_outcome: dict[str, int] = {}
    for event in sample:
        by_type[event.event_type] = by_type.get(event.event_type, 0) + 1
        actor = None if event.actor is None else event.actor.type.value
        by_actor[actor] = by_actor.get(actor, 0) + 1
        by_outcome[event.outcome.value] = by_outcome.get(event.outcome.value, 0) + 1

    def ranked(counted: dict[Any, int]) -> list[Any]:
        return sorted(counted.items(), key=lambda item: (-item[1], str(item[0])))

    return _Overview(
        bars=bars,
        peak=peak,
        total=sum(counts),
        chart_width=10 * days,
        sampled=len(sample),
        sample_since=sample[-1].timestamp if sample else None,
        by_event_type=ranked(by_type)[:50],
        by_actor_type=ranked(by_actor),
        by_outcome=ranked(by_outcome),
    )


def _waterfall(root: ChainNode) -> tuple[list[_ChainRow], int]:
    """The first :data:`CHAIN_ROWS` events of a chain, depth first, each placed on a
    0-1000 scale of the chain's time, and how many events the chain holds."""
    walked = list(root.walk())
    shown = walked[:CHAIN_ROWS]
    start = min(e.timestamp for _, e in shown)
    end = max(e.timestamp + e.duration for _, e in shown)
    total = (end - start).total_seconds() or 1.0
    rows = []
    for depth, event in shown:
        x = (event.timestamp - start).total_seconds() / total * 1000
        width = max(event.duration.total_seconds() / total * 1000, 2.0)
        rows.append(_ChainRow(depth, event, round(min(x, 998.0), 2), round(width, 2)))
    return rows, len(walked)
