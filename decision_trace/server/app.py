"""The ASGI application of the ledger service: :func:`create_app`.

Routes:

- ``POST /v1/traces``: OTLP/HTTP ingest (:mod:`decision_trace.server.ingest`).
- The read API (``/api/v1/...``, ``/openapi.json``, ``/healthz``, ``/readyz``):
  :func:`decision_trace.server.api.routes`, given the ledger (shared with ingest, and
  closed by the factory, when it opened it, after the last request) and the token check
  as the read API takes it (a JSON 401 answer, or None to go on).
- The web view (``/``, ``/events/...``, ``/objects/...``, ``/search``, ``/stats``,
  ``/login``, ``/static/...``): :func:`decision_trace.server.web.routes` (docs/web.md),
  behind the same token (header or login cookie).

``read_only=True`` (``decision-trace ui``) leaves out ingest: no ``/v1/traces``.

The application runs under any asyncio ASGI server (``uvicorn --factory
decision_trace.server:create_app``); ``decision-trace serve`` runs it under uvicorn
beside the OTLP/gRPC receiver.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..storage import Ledger, open_ledger
from . import api, web
from ._auth import BearerToken
from ._service import IngestService
from .ingest import MIB, OtlpHttpReceiver

__all__ = ["create_app"]


def create_app(
    db: str | os.PathLike[str] | Ledger | None = None,
    *,
    token: str | None = None,
    max_body_bytes: int = 16 * MIB,
    request_timeout: float = 30.0,
    write_timeout: float = 5.0,
    max_pending_spans: int = 50_000,
    ingest: IngestService | None = None,
    read_only: bool = False,
) -> Starlette:
    """The ledger service as a Starlette application.

    Usable under any asyncio ASGI server; ``decision-trace serve`` is this app under
    uvicorn plus the gRPC receiver. For example::

        from decision_trace.server import create_app

        app = create_app("postgresql://ledger@db/ledger", token="s3cret")

    Args:
        db: The ledger: a path (SQLite), a ``postgresql://`` URL, or an open
            :class:`~decision_trace.storage.Ledger` (the caller closes it). None means
            ``$DECISION_TRACE_DB``, else the default file. A ledger opened here commits
            with ``durability="sync"`` (an acknowledged span survives power loss on
            SQLite) and is closed when the application shuts down.
        token: The bearer token every request must carry; None means
            ``$DECISION_TRACE_TOKEN`` (unset or empty: no token).
        max_body_bytes: Largest OTLP request body, compressed or not (413 past it).
        request_timeout: Seconds a client has to send an export's body (408 past it).
        write_timeout: Seconds an export waits for the ledger before it is answered
            503 with ``Retry-After``.
        max_pending_spans: Spans that may wait to be written before exports are
            answered 503 with ``Retry-After``.
        ingest: A running :class:`~decision_trace.server.IngestService` to share
            (``decision-trace serve`` shares one with the gRPC receiver); the caller
            closes it. By default the app makes its own on the ledger.
        read_only: Serve only the read API and the web view, no ingest route (a
            ledger opened here is opened read-only).

    Raises:
        StoreError: the ledger cannot be opened.
        ValueError: the token holds characters a header cannot carry.
    """
    token_check = BearerToken.from_environment(token)
    owns_ledger = not isinstance(db, Ledger)
    ledger: Ledger
    if isinstance(db, Ledger):
        ledger = db
    elif ingest is not None:
        ledger = ingest.ledger
        owns_ledger = False
    elif read_only:
        ledger = open_ledger(db, read_only=True, create=False)
    else:
        ledger = open_ledger(db, durability="sync")
    routes: list[BaseRoute] = []
    service: IngestService | None = None
    owns_ingest = False
    if not read_only:
        owns_ingest = ingest is None
        service = (
            ingest
            if ingest is not None
            else IngestService(
                ledger, write_timeout=write_timeout, max_pending_spans=max_pending_spans
            )
        )
        receiver = OtlpHttpReceiver(
            service,
            token_check,
            max_body_bytes=max_body_bytes,
            body_timeout=request_timeout,
        )
        routes.append(Route("/v1/traces", receiver.handle, methods=["POST"]))
    routes.extend(_read_api_routes(ledger, token_check))
    routes.extend(web.routes(ledger, token_check))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if owns_ingest and service is not None:
                service.close()
            if owns_ledger:
                ledger.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.ledger = ledger
    app.state.ingest = service
    app.state.token_check = token_check
    return app


def _read_api_routes(ledger: Ledger, token_check: BearerToken) -> list[BaseRoute]:
    """The read API's routes, its token check answering 401 in the API's JSON shape."""

    def check(request: Request) -> Response | None:
        if token_check(request):
            return None
        return api.json_error(
            401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )

    return list(api.routes(ledger, check))
