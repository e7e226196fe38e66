"""The web view: server-rendered pages over a ledger (docs/web.md).

``decision-trace serve`` and ``decision-trace ui`` mount :func:`routes` beside the read
API. Pages are Jinja2 templates (autoescaped) with one static stylesheet and one small
script; everything works with JavaScript off. The service's bearer token protects them
(header or login cookie). Only ``POST /login`` and ``POST /logout`` take a body; no
page writes to the ledger.

    ====================================  ==========================================
    ``/``                                 the timeline, newest first, with filters
    ``/objects/{type}/{id}``              an object's story, oldest first
    ``/events/{id}``                      one decision, everything about it
    ``/events/{id}/chain``                the workflow around it, as a waterfall
    ``/search?q=``                        full-text search (``order:123`` jumps)
    ``/stats``                            counts, and events per day as a chart
    ``/login``, ``/logout``               signing in with the token
    ``/static/...``                       the stylesheet and the script
    ====================================  ==========================================
"""

from __future__ import annotations

from pathlib import Path

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...storage import Ledger
from .._auth import BearerToken
from ._session import Session
from .pages import SECURITY_HEADERS, Pages

__all__ = ["SECURITY_HEADERS", "routes"]

_STATIC = Path(__file__).parent / "static"


class _WithHeaders:
    """An ASGI app answering as ``app`` does, with the security headers added."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in SECURITY_HEADERS.items()
            if name != "Cache-Control"
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self._headers]}
            await send(message)

        await self._app(scope, receive, send_with_headers)


def routes(ledger: Ledger, token: BearerToken) -> list[BaseRoute]:
    """The web view's routes over ``ledger``, for the app to mount at its root.

    Args:
        ledger: The ledger to show (any backend).
        token: The service's token: with one set, pages need it as a bearer header or
            the login cookie; static files are open to all (they hold no data).
    """
    pages = Pages(ledger, Session(token))
    guarded = pages.guarded
    return [
        Route("/", guarded(pages.timeline), methods=["GET"]),
        Route("/events/{event_id:dt_text}/chain", guarded(pages.chain), methods=["GET"]),
        Route("/events/{event_id:dt_text}", guarded(pages.event), methods=["GET"]),
        Route(
            "/objects/{object_type}/{external_id:dt_text}",
            guarded(pages.object_story),
            methods=["GET"],
        ),
        Route("/search", guarded(pages.search), methods=["GET"]),
        Route("/stats", guarded(pages.stats), methods=["GET"]),
        Route("/login", pages.login_form, methods=["GET"]),
        Route("/login", pages.login, methods=["POST"]),
        Route("/logout", pages.logout, methods=["POST"]),
        Mount("/static", _WithHeaders(StaticFiles(directory=_STATIC)), name="static"),
    ]
