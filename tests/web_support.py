"""The web view served for real: ``create_app`` under uvicorn on a thread and a free port,
and a tiny HTTP client (``http.client``) that never follows redirects, so tests see
every 303, header and cookie as a browser would get them.

Test modules import what they need by name (``from web_support import serve_app``).
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlencode

import uvicorn
from starlette.applications import Starlette


@dataclass(frozen=True)
class Page:
    """One HTTP answer: status, headers (names in lowercase; repeated ones joined by
    ``\\n``) and the body as text."""

    status: int
    headers: dict[str, str]
    body: str

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@contextmanager
def serve_app(app: Starlette) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 and a free port; yield its base URL; stop
    it afterwards (the app's lifespan runs, so a ledger it opened is closed)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the web view's server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def fetch(
    base: str,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 60,
) -> Page:
    """One request to ``base + path`` (redirects are not followed)."""
    host_port = base.removeprefix("http://")
    host, _, port = host_port.partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    send_headers = dict(headers or {})
    if form is not None:
        body = urlencode(form).encode("ascii")
        send_headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request(method, path, body=body, headers=send_headers)
        response = conn.getresponse()
        data = response.read()
        merged: dict[str, str] = {}
        for name, value in response.getheaders():
            key = name.lower()
            merged[key] = f"{merged[key]}\n{value}" if key in merged else value
        return Page(response.status, merged, data.decode("utf-8", "replace"))
    finally:
        conn.close()
