"""``decision-trace ui``: the web view (and the read API) of one ledger, read-only, under
uvicorn on this machine, and a browser opened on it.

No ingest route: the ledger is opened read-only (an SQLite file is never created,
migrated or written; the same holds for PostgreSQL), and the app has no ``/v1/traces``.
"""

from __future__ import annotations

import logging
import threading
import time
import webbrowser
from collections.abc import Callable

import uvicorn

from ..storage import open_ledger
from .app import create_app
from .run import _configure_logging, _listen, _Server, _stop_signals

__all__ = ["run_ui", "url_of"]

_logger = logging.getLogger("decision_trace.server")


def url_of(host: str, port: int) -> str:
    """The URL a browser opens for ``host`` and ``port`` (IPv6 in brackets; the
    wildcard addresses as the loopback one, which a browser can reach)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def run_ui(
    db: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    open_browser: bool = True,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve the web view of ``db`` until SIGINT or SIGTERM.

    Args:
        db: The ledger (a path or a URL), opened read-only.
        host: Address to listen on.
        port: Port (0: any free one).
        open_browser: Open the default browser on the URL once the server listens.
        announce: Called with the URL once the server listens (the CLI prints it).

    Raises:
        StoreError: the ledger cannot be opened.
        OSError: the address cannot be listened on.
    """
    _configure_logging("ui")
    with _stop_signals() as stop:
        _run(db, host, port, open_browser, announce, stop)


def _run(
    db: str,
    host: str,
    port: int,
    open_browser: bool,
    announce: Callable[[str], None] | None,
    stop: threading.Event,
) -> None:
    ledger = open_ledger(db, read_only=True, create=False)
    try:
        sock = _listen(host, port)
        try:
            url = url_of(host, sock.getsockname()[1])
            app = create_app(ledger, read_only=True)
            config = uvicorn.Config(
                app,
                lifespan="on",
                log_config=None,
                access_log=False,
                server_header=False,
                timeout_keep_alive=5,
            )
            server = _Server(config, None, stop)

            def when_started() -> None:
                deadline = time.monotonic() + 60
                while not server.started and not server.should_exit:
                    if time.monotonic() > deadline:
                        return
                    time.sleep(0.02)
                if not server.started:
                    return
                if announce is not None:
                    announce(url)
                if open_browser:
                    try:
                        webbrowser.open(url)
                    except Exception as exc:  # no browser here is no reason to stop
                        _logger.warning("cannot open a browser (%s); open %s", exc, url)

            threading.Thread(target=when_started, name="decision-trace-ui", daemon=True).start()
            _logger.info("serving %s read-only at %s (Ctrl-C stops)", ledger.location, url)
            if not stop.is_set():
                server.run(sockets=[sock])
        finally:
            sock.close()
    finally:
        ledger.close()
    _logger.info("stopped")
