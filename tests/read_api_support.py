"""The read API served for real: a small Starlette app mounting ``routes()`` (as the
server's ``create_app`` does) under a real uvicorn server, on a thread and a free port.

Test modules import what they need by name (``from read_api_support import serve``).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from decision_trace import DecisionTraceClient
from decision_trace.server.api import json_error, routes
from decision_trace.storage import Ledger

BASE = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
"""When the shop's first event happened."""


@dataclass
class Shop:
    """What :func:`record_shop` recorded: event ids by name, and the burst of events
    recorded in one microsecond."""

    ids: dict[str, str] = field(default_factory=dict)
    burst: datetime = BASE + timedelta(days=5)
    burst_ids: list[str] = field(default_factory=list)


def record_shop(target: str, *, burst: int = 7) -> Shop:
    """Record a small shop's events into the ledger ``target`` through a real client: a
    chain, every kind of actor, objects (ids with a slash, a newline, URL syntax),
    tags, a failure, non-ASCII text, and ``burst`` events in the very same microsecond."""
    shop = Shop()
    ids = shop.ids
    with DecisionTraceClient(db_path=target, service_name="shop") as client:
        ids["created"] = (
            client.trace("order.created", "Order placed")
            .by_user("cust-1", "Ann", email="ann@example.com")
            .affecting_order("ord/1", {"status": "new", "total": "89.00"})
            .affecting_customer("cust-1")
            .with_tags("web", "eu")
            .at(BASE)
            .record()
        )
        ids["fraud"] = (
            client.trace("fraud.checked", "Fraud screening passed")
            .by_ai_agent("fraud-bot", "Fraud Bot", model="gpt-x")
            .affecting_order("ord/1")
            .because(
                "Velocity and address checks are clean",
                context={"score": 0.02, "checks": ["velocity", "address"]},
                alternatives=[{"option": "hold for review"}],
                rejection_reasons={"hold for review": "score far below threshold"},
            )
            .with_confidence(0.97)
            .child_of(ids["created"])
            .at(BASE + timedelta(minutes=1))
            .record()
        )
        ids["refund"] = (
            client.trace("order.refunded", "Remboursé ✓ refund issued")
            .by_user("agent-7", "Sam", role="support")
            .affecting_order(
                "ord/1", state_before={"status": "paid"}, state_after={"status": "refunded"}
            )
            .because("Parcel arrived crushed; photos attached")
            .with_tags("support")
            .child_of(ids["created"])
            .at(BASE + timedelta(days=2))
            .record()
        )
        ids["restock"] = (
            client.trace("inventory.adjusted", "Nightly restock")
            .by_compute("restock-job", "Restock")
            .affecting_product("sku-9", state_before={"stock": 4}, state_after={"stock": 40})
            .affecting_product("two\nlines")
            .failed("supplier feed timed out")
            .at(BASE + timedelta(days=3))
            .record()
        )
        for n in range(burst):
            builder = (
                client.trace("burst.event", f"burst number {n}")
                .by_system("bulk-import")
                .with_tags("burst")
                .at(shop.burst)
            )
            if n % 2:
                builder.affecting_order("ord/1")
            if n % 3 == 0:
                builder.affecting_order("weird id/../%2F?#")
            shop.burst_ids.append(builder.record())
        ids["price"] = (
            client.trace("price.changed", "Summer pricing")
            .by_system("pricing")
            .affecting_product("sku-9", {"price": "19.99"})
            .with_tags("eu")
            .at(BASE + timedelta(days=40))
            .record()
        )
    return shop


def make_app(ledger: Ledger, token: str | None = None) -> Starlette:
    """The read API over ``ledger``; with ``token``, every request but the probes needs
    ``Authorization: Bearer <token>``."""

    def token_check(request: Request) -> Response | None:
        if token is None or request.headers.get("authorization") == f"Bearer {token}":
            return None
        return json_error(
            401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )

    return Starlette(routes=routes(ledger, token_check))


@contextmanager
def serve(ledger: Ledger, token: str | None = None) -> Iterator[str]:
    """Serve the read API over ``ledger`` with uvicorn on 127.0.0.1 and a free port;
    yield its base URL (``http://127.0.0.1:PORT``); stop it afterwards."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        make_app(ledger, token), log_level="warning", lifespan="off", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the read API server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def get(
    base: str, path: str, params: Any = None, *, token: str | None = None
) -> tuple[int, Any, dict[str, str]]:
    """GET ``base + path`` (``params`` urlencoded, lists repeated): ``(status, JSON,
    headers)``, the header names in lowercase."""
    url = base + path
    if params:
        url += "?" + urlencode(params, doseq=True)
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            headers = {k.lower(): v for k, v in response.headers.items()}
            return response.status, json.loads(response.read()), headers
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read()
            return exc.code, json.loads(body), {k.lower(): v for k, v in exc.headers.items()}
