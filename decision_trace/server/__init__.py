"""The ledger service: OTLP ingest (HTTP and gRPC) in front of any ledger, and the read
API (``api.py``), as one ASGI application (``decision-trace serve``; docs/server.md).

Needs the ``server`` extra: ``pip install 'decision-trace-otel[server]'``.

:func:`create_app` builds the application for any asyncio ASGI server::

    from decision_trace.server import create_app

    app = create_app("traces.db", token="s3cret")   # uvicorn module:app --port 4318

:class:`BearerToken` is the token check every route uses; :class:`IngestService` the
decoder and writer that the HTTP and gRPC receivers share.
"""

from __future__ import annotations

from ._auth import TOKEN_ENV_VAR, BearerToken
from ._service import IngestService, IngestUnavailable
from .app import create_app

__all__ = ["TOKEN_ENV_VAR", "BearerToken", "IngestService", "IngestUnavailable", "create_app"]
