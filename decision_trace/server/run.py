"""``decision-trace serve``: the ASGI app under uvicorn and the gRPC receiver, in one
process, sharing one ledger and one writer.

Logs one line when it starts (where it listens, and how to listen elsewhere), one when
it stops, and one per error; no line per request. SIGTERM or SIGINT stops it cleanly:
no new connections or RPCs, the requests in flight are answered, every accepted span is
written, the ledger is closed, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..storage import Ledger, open_ledger
from ._auth import BearerToken
from ._service import IngestService
from .app import create_app
from .grpc_ingest import GrpcReceiver, start_grpc_server

__all__ = ["ServeOptions", "serve"]

logger = logging.getLogger("decision_trace.server")

_SHUTDOWN_GRACE = 30.0
"""Seconds requests in flight get to finish after SIGTERM, HTTP and gRPC alike."""


@dataclass(frozen=True)
class ServeOptions:
    """What ``decision-trace serve`` was asked for."""

    db: str
    host: str = "127.0.0.1"
    port: int = 4318
    grpc_port: int | None = 4317
    token: str | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    request_timeout: float = 30.0
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None


class _GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, with a deadline for each request's headers.

    uvicorn waits forever for a request line and headers that never complete (it only
    times out idle keep-alive connections, and any byte resets that), so a client that
    opens connections and trickles half a request holds them open without end. Here a
    connection whose next request's headers are not complete within ``header_timeout``
    seconds (``--request-timeout``) of its opening, or of its previous answer, is
    closed. The body has its own deadline in the ingest endpoint.
    """

    header_timeout = 30.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        if not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_deadline)

    def _cancel_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        idle = self.cycle is None or self.cycle.response_complete
        if idle and self.conn.their_state is h11.IDLE:
            self.transport.close()


class _Server(uvicorn.Server):
    """uvicorn's server; a stop signal also stops the gRPC receiver at once, and one that
    came before uvicorn took over the signals (``stop``) stops it too."""

    def __init__(
        self, config: uvicorn.Config, grpc_receiver: GrpcReceiver | None, stop: threading.Event
    ) -> None:
        super().__init__(config)
        self._grpc = grpc_receiver
        self._stop = stop
        self.stopping_grpc: Any = None

    async def on_tick(self, counter: int) -> bool:
        if self._stop.is_set():
            return True
        return await super().on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._grpc is not None and self.stopping_grpc is None:
            receiver = self._grpc
            done = threading.Event()
            self.stopping_grpc = done

            def stop() -> None:
                receiver.stop(_SHUTDOWN_GRACE).wait()
                done.set()

            threading.Thread(target=stop, name="decision-trace-grpc-stop", daemon=True).start()


def _configure_logging(command: str = "serve") -> None:
    """Our lines and uvicorn's warnings to stderr, one line each, with a timestamp and
    the command's name."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s decision-trace {command}: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    ours = logging.getLogger("decision_trace")
    ours.handlers[:] = [handler]
    ours.setLevel(logging.INFO)
    ours.propagate = False
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        theirs = logging.getLogger(name)
        theirs.handlers[:] = [handler] if name == "uvicorn" else []
        theirs.setLevel(logging.WARNING)
        theirs.propagate = name != "uvicorn"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket (so that a taken port is one clear error, here).

    Raises:
        OSError: the address cannot be listened on.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def _grpc_credentials(options: ServeOptions) -> Any:
    if options.ssl_certfile is None or options.ssl_keyfile is None:
        return None
    import grpc

    key = Path(options.ssl_keyfile).read_bytes()
    cert = Path(options.ssl_certfile).read_bytes()
    return grpc.ssl_server_credentials([(key, cert)])


@contextlib.contextmanager
def _stop_signals() -> Iterator[threading.Event]:
    """SIGTERM and SIGINT set the event instead of ending the process, from the start to
    the end of :func:`serve`: a signal during start-up skips serving, one during the
    final writes lets them finish. (uvicorn installs its own handlers while it serves,
    and raises the caught signal again after its shutdown: with these in place, that
    second delivery only sets the event, and the process exits 0.)"""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(options: ServeOptions) -> None:
    """Run the ledger service until SIGTERM or SIGINT.

    Raises:
        StoreError: the ledger cannot be opened.
        OSError: a port cannot be listened on, or a TLS file cannot be read.
        ValueError: the token holds characters a header cannot carry.
    """
    _configure_logging()
    with _stop_signals() as stop:
        _serve(options, stop)


def _serve(options: ServeOptions, stop: threading.Event) -> None:
    token_check = BearerToken(options.token)
    scheme = "https" if options.ssl_certfile else "http"
    ledger: Ledger = open_ledger(options.db, durability="sync")
    service = IngestService(ledger)
    grpc_receiver: GrpcReceiver | None = None
    http_socket: socket.socket | None = None
    try:
        http_socket = _listen(options.host, options.port)
        if options.grpc_port is not None:
            grpc_receiver = start_grpc_server(
                service,
                token_check,
                host=options.host,
                port=options.grpc_port,
                max_message_bytes=options.max_body_bytes,
                credentials=_grpc_credentials(options),
            )
        app = create_app(
            ledger,
            token=options.token or "",
            max_body_bytes=options.max_body_bytes,
            request_timeout=options.request_timeout,
            ingest=service,
        )
        protocol = type(
            "GuardedH11Protocol",
            (_GuardedH11Protocol,),
            {"header_timeout": options.request_timeout},
        )
        config = uvicorn.Config(
            app,
            http=protocol,
            lifespan="on",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=int(_SHUTDOWN_GRACE),
            ssl_certfile=options.ssl_certfile,
            ssl_keyfile=options.ssl_keyfile,
        )
        server = _Server(config, grpc_receiver, stop)
        http_port = http_socket.getsockname()[1]
        grpc_text = (
            f"OTLP/gRPC on {options.host}:{grpc_receiver.port}"
            if grpc_receiver is not None
            else "OTLP/gRPC off"
        )
        where = (
            "only this machine can connect (--host 0.0.0.0 listens on every interface)"
            if _is_loopback(options.host)
            else "reachable from the network"
            + ("" if token_check.required else "; no token: anyone who reaches it can write")
        )
        logger.info(
            "listening on %s://%s:%d (OTLP/HTTP /v1/traces, read API /api/v1, web view /), "
            "%s; ledger %s; %s; token %s",
            scheme,
            options.host,
            http_port,
            grpc_text,
            ledger.location,
            where,
            "required" if token_check.required else "not required",
        )
        if not stop.is_set():
            server.run(sockets=[http_socket])
        if server.stopping_grpc is not None:
            server.stopping_grpc.wait(_SHUTDOWN_GRACE + 5)
        elif grpc_receiver is not None:
            grpc_receiver.stop(_SHUTDOWN_GRACE).wait(_SHUTDOWN_GRACE + 5)
        grpc_receiver = None
    finally:
        if grpc_receiver is not None:
            grpc_receiver.stop(0)
        if http_socket is not None:
            http_socket.close()
        service.close()
        ledger.close()
    logger.info("stopped; every accepted span is in %s", ledger.location)
