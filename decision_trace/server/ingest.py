"""OTLP/HTTP trace ingest: ``POST /v1/traces``, as the OTLP specification and the
OpenTelemetry Collector's receiver answer it.

=====================================  ==============================================
request                                answer
=====================================  ==============================================
no or a wrong bearer token (when the   ``401``, ``WWW-Authenticate: Bearer``; nothing
service has one)                       is read or stored
a content type other than              ``415``
``application/x-protobuf`` or
``application/json``; a content
encoding other than ``gzip``,
``deflate`` or none
``Content-Length`` over the limit      ``413`` before a byte of the body is read
a body (or its decompressed form)      ``413`` as soon as the count passes the limit
growing past the limit while read      (a gzip bomb is never inflated whole)
a body that is not a request, a        ``400``
broken gzip stream
a body not sent within the request     ``408``
timeout
too much in flight, the ledger         ``503`` with ``Retry-After`` (the OpenTelemetry
failing or slower than the write       exporters wait that long and retry)
timeout
otherwise                              ``200`` with an ``ExportTraceServiceResponse``;
                                       ``partial_success`` counts the spans that
                                       could not be stored, and says why
=====================================  ==============================================

Answers are in the request's encoding (protobuf or JSON); a failure's body is a
``google.rpc.Status``. Answers given before the whole body was read close the
connection.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import zlib
from concurrent.futures import Future
from typing import NoReturn

import anyio
import anyio.to_thread
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ._auth import BearerToken
from ._otlp import Decoded, MalformedRequest, export_response, parse_json, parse_protobuf
from ._otlp import response_body as encode_response
from ._otlp import status_body as encode_status
from ._service import IngestService, IngestUnavailable, Rejected

__all__ = ["JSON", "MIB", "PROTOBUF", "OtlpHttpReceiver"]

logger = logging.getLogger("decision_trace.server")

MIB = 1024 * 1024
PROTOBUF = "application/x-protobuf"
JSON = "application/json"

# google.rpc.Code values for the Status bodies.
_INVALID_ARGUMENT = 3
_DEADLINE_EXCEEDED = 4
_RESOURCE_EXHAUSTED = 8
_INTERNAL = 13
_UNAVAILABLE = 14
_UNAUTHENTICATED = 16

_ENCODINGS = ("gzip", "deflate", "x-gzip")
_IDENTITY = ("", "identity")


class _Refusal(Exception):
    """An answer other than 200, raised from deep in the reading of a request."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        close: bool = False,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.close = close
        self.retry_after = retry_after


def _refuse(
    status: int, code: int, message: str, *, close: bool = False, retry_after: int | None = None
) -> NoReturn:
    raise _Refusal(status, code, message, close=close, retry_after=retry_after)


class _ByteBudget:
    """Bytes of request bodies held at once, across all requests (raw and inflated)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, amount: int) -> bool:
        with self._lock:
            if self.used and self.used + amount > self.limit:
                return False
            self.used += amount
            return True

    def give(self, amount: int) -> None:
        with self._lock:
            self.used -= amount


class _Reservation:
    """One request's share of the budget; grows as its body is read."""

    def __init__(self, budget: _ByteBudget, retry_after: int) -> None:
        self._budget = budget
        self._retry_after = retry_after
        self.held = 0

    def hold(self, total: int) -> None:
        if total <= self.held:
            return
        if not self._budget.take(total - self.held):
            _refuse(
                503,
                _UNAVAILABLE,
                "too many request bodies in flight; retry later",
                close=True,
                retry_after=self._retry_after,
            )
        self.held = total

    def release(self) -> None:
        self._budget.give(self.held)
        self.held = 0


class _Inflater:
    """Decompresses a gzip or zlib (``deflate``) stream chunk by chunk, never producing
    more than ``limit`` bytes in all (the rest is a 413, not memory)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._size = 0
        self._inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)

    @property
    def size(self) -> int:
        return self._size

    def feed(self, data: bytes, out: list[bytes]) -> None:
        while data:
            try:
                piece = self._inflater.decompress(data, self._limit - self._size + 1)
            except zlib.error as exc:
                _refuse(400, _INVALID_ARGUMENT, f"the compressed body is broken: {exc}")
            self._size += len(piece)
            if self._size > self._limit:
                _refuse(
                    413,
                    _RESOURCE_EXHAUSTED,
                    f"the decompressed body is over the limit of {self._limit} bytes",
                    close=True,
                )
            out.append(piece)
            if self._inflater.eof:
                # Concatenated gzip members are one valid stream: start the next one.
                data = self._inflater.unused_data
                if data:
                    self._inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)
            else:
                data = self._inflater.unconsumed_tail

    def finish(self) -> None:
        if not self._inflater.eof:
            _refuse(400, _INVALID_ARGUMENT, "the compressed body ends before its stream does")


class OtlpHttpReceiver:
    """The ``POST /v1/traces`` endpoint: :meth:`handle` is the Starlette request handler.

    Args:
        service: Decodes and writes the spans.
        token_check: Whether a request carries the service's token.
        max_body_bytes: Largest body accepted, compressed and decompressed alike.
        max_inflight_bytes: Most body bytes held across all requests at once; past it,
            requests are answered 503 with ``Retry-After``.
        body_timeout: Seconds a client has to send the whole body (then 408).
    """

    def __init__(
        self,
        service: IngestService,
        token_check: BearerToken,
        *,
        max_body_bytes: int = 16 * MIB,
        max_inflight_bytes: int | None = None,
        body_timeout: float = 30.0,
    ) -> None:
        self._service = service
        self._token = token_check
        self._max_body = max_body_bytes
        self._budget = _ByteBudget(max_inflight_bytes or 4 * max_body_bytes)
        self._body_timeout = body_timeout

    async def handle(self, request: Request) -> Response:
        """Answer one export request (the route's endpoint)."""
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        as_json = media != PROTOBUF
        try:
            return await self._export(request, media, as_json)
        except _Refusal as refusal:
            return self._refusal(refusal, as_json)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is there to read it
        except Exception as exc:  # a bug: one line, and an answer
            logger.error("unexpected error answering an export: %s: %s", type(exc).__name__, exc)
            return self._refusal(
                _Refusal(500, _INTERNAL, "internal error; see the server's log", close=True),
                as_json,
            )

    async def _export(self, request: Request, media: str, as_json: bool) -> Response:
        if not self._token(request):
            _refuse(401, _UNAUTHENTICATED, "missing or wrong bearer token", close=True)
        if media not in (PROTOBUF, JSON):
            _refuse(
                415,
                _INVALID_ARGUMENT,
                f"unsupported content type {media or '(none)'!r}: send {PROTOBUF} or {JSON}",
                close=True,
            )
        encoding = request.headers.get("content-encoding", "").strip().lower()
        if encoding not in _ENCODINGS and encoding not in _IDENTITY:
            _refuse(
                415,
                _INVALID_ARGUMENT,
                f"unsupported content encoding {encoding!r}: send gzip, deflate or none",
                close=True,
            )
        declared = request.headers.get("content-length")
        length = int(declared) if declared and declared.isdigit() else None
        if length is not None and length > self._max_body:
            _refuse(
                413,
                _RESOURCE_EXHAUSTED,
                f"the body ({length} bytes) is over the limit of {self._max_body} bytes",
                close=True,
            )
        reservation = _Reservation(self._budget, self._service.retry_after)
        try:
            reservation.hold(length or 0)
            body = await self._read(request, encoding not in _IDENTITY, reservation)
            decoded = await anyio.to_thread.run_sync(_decode, self._service, body, as_json)
        finally:
            reservation.release()
        try:
            future = self._service.submit(decoded)
            rejected = await _wait(future, self._service)
        except IngestUnavailable as exc:
            code = _RESOURCE_EXHAUSTED if exc.overloaded else _UNAVAILABLE
            _refuse(503, code, str(exc), retry_after=exc.retry_after)
        return Response(
            encode_response(export_response(rejected), as_json),
            status_code=200,
            media_type=JSON if as_json else PROTOBUF,
        )

    async def _read(self, request: Request, compressed: bool, reservation: _Reservation) -> bytes:
        limit = self._max_body
        chunks: list[bytes] = []
        inflater = _Inflater(limit) if compressed else None
        received = 0
        try:
            with anyio.fail_after(self._body_timeout):
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > limit:
                        _refuse(
                            413,
                            _RESOURCE_EXHAUSTED,
                            f"the body is over the limit of {limit} bytes",
                            close=True,
                        )
                    if inflater is None:
                        reservation.hold(received)
                        chunks.append(chunk)
                    else:
                        inflater.feed(chunk, chunks)
                        reservation.hold(received + inflater.size)
        except TimeoutError:
            _refuse(
                408,
                _DEADLINE_EXCEEDED,
                f"the body did not arrive within {self._body_timeout:g} s",
                close=True,
            )
        if inflater is not None:
            inflater.finish()
        return b"".join(chunks)

    @staticmethod
    def _refusal(refusal: _Refusal, as_json: bool) -> Response:
        headers = {}
        if refusal.close:
            headers["connection"] = "close"
        if refusal.retry_after is not None:
            headers["retry-after"] = str(refusal.retry_after)
        if refusal.status == 401:
            headers["www-authenticate"] = 'Bearer realm="decision-trace"'
        return Response(
            encode_status(refusal.code, refusal.message, as_json),
            status_code=refusal.status,
            media_type=JSON if as_json else PROTOBUF,
            headers=headers,
        )


def _decode(service: IngestService, body: bytes, as_json: bool) -> Decoded:
    try:
        request = parse_json(body) if as_json else parse_protobuf(body)
    except MalformedRequest as exc:
        raise _Refusal(400, _INVALID_ARGUMENT, str(exc)) from None
    return service.decode(request)


async def _wait(future: Future[Rejected], service: IngestService) -> Rejected:
    """The write's result without holding a thread while waiting (on asyncio; a worker
    thread waits on other event loops)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return await anyio.to_thread.run_sync(service.wait, future)
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), service.write_timeout)
    except asyncio.TimeoutError:  # cancelling the wrapper cancelled a write not yet begun
        raise service.too_slow() from None
