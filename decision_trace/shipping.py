"""Shipping: the local ledger as the outbox of the team's ledger (docs/shipping.md).

A :class:`Shipper` sends every event of a local ledger that a destination has not
acknowledged, as OTLP/HTTP protobuf (``decision-trace serve``, an OpenTelemetry
Collector, any OTLP endpoint), in the ledger's commit order, and moves the destination's
mark (kept in the ledger itself) forward only after a 2xx answer. Spans the answer's
``partial_success`` refuses are recorded as rejected, with the reason, and never sent
again. 429, 502, 503, 504, timeouts and connection errors are retried with exponential
backoff and jitter, honouring ``Retry-After``. A crash (even ``kill -9``) re-sends at most
the batch in flight, which an idempotent destination stores once.

``decision-trace ship`` runs one from the command line; ``DecisionTraceClient(ship_to=...)``
runs one on a background thread (:class:`BackgroundShipper`)::

    from decision_trace.shipping import Shipper
    from decision_trace.storage import open_ledger

    ledger = open_ledger("traces.db")
    with Shipper(ledger, "http://ledger.internal:4318", token="s3cret") as shipper:
        report = shipper.ship()  # the backlog, then return
    print(report.shipped, "shipped,", len(report.rejected), "rejected")
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import itertools
import logging
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ._otlp_request import encode_request, parse_response
from .errors import DecisionTraceError, InvalidInputError, StoreError
from .models import clean_text
from .record import EventRecord
from .storage import Ledger
from .storage.outbox import SHIP_TO_ENV_VAR, SHIP_TOKEN_ENV_VAR, Outbox, Rejection

__all__ = [
    "SHIP_TOKEN_ENV_VAR",
    "SHIP_TO_ENV_VAR",
    "BackgroundShipper",
    "ShipLockedError",
    "ShipReport",
    "Shipper",
    "ShippingError",
    "destination_url",
]

_logger = logging.getLogger(__name__)


DEFAULT_BATCH = 512
"""Events per request (the ingest benchmark's client sends 512 spans a request)."""

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""Answers after which the same request is sent again, after a backoff."""
SPLIT_STATUSES = frozenset({400, 413})
"""Answers that refuse the request for what it holds: it is split in halves until the
spans refused are found (a single span so refused is recorded as rejected)."""

_VERSION = "0.1.0"

DEFAULT_CPU_SHARE = 0.1
"""In-process shipping's share of the interpreter's CPU while it catches up: ``record()``
in a tight loop is slowed by about this much (benchmarks/bench_shipping.py)."""


class ShippingError(DecisionTraceError):
    """Shipping cannot go on without someone's help: the destination refuses us (401,
    403), is not an OTLP endpoint (404, 405, 415), or the ledger cannot ship."""


class ShipLockedError(ShippingError):
    """Another shipper holds the lock for this ledger and destination (only one sends)."""


@dataclass(frozen=True)
class ShipReport:
    """What one :meth:`Shipper.ship` (or a background shipper's life) did.

    Attributes:
        destination: Where to.
        shipped: Events acknowledged by the destination (stored or refused).
        rejected: The events the destination (or the encoding) refused.
        position: The destination's mark at the end.
        remaining: Events still past the mark at the end (0: everything shipped).
        requests: Requests sent, retries included.
        retries: Requests that failed and were sent again.
        seconds: How long it took.
        last_error: The last error met (None when the last request succeeded).
        gave_up: Stopped by its deadline (``max_wait``, or a closing client) before
            the backlog was empty.
    """

    destination: str
    shipped: int
    rejected: tuple[Rejection, ...]
    position: int
    remaining: int
    requests: int
    retries: int
    seconds: float
    last_error: str | None
    gave_up: bool

    @property
    def ok(self) -> bool:
        """Everything was shipped and nothing was refused."""
        return self.remaining == 0 and not self.rejected and not self.gave_up

    def to_json(self) -> dict[str, Any]:
        """The report as JSON values (``decision-trace ship --json``)."""
        return {
            "destination": self.destination,
            "ok": self.ok,
            "shipped": self.shipped,
            "rejected": [
                {"position": r.position, "event_id": r.event_id, "message": r.message}
                for r in self.rejected
            ],
            "position": self.position,
            "remaining": self.remaining,
            "requests": self.requests,
            "retries": self.retries,
            "seconds": round(self.seconds, 3),
            "last_error": self.last_error,
            "gave_up": self.gave_up,
        }


def destination_url(to: str) -> str:
    """The OTLP/HTTP traces URL that ``to`` names, as the destination's key.

    ``http://host:4318`` becomes ``http://host:4318/v1/traces`` (a base URL gets the
    traces path, as OTLP exporters add it); a URL with a path is kept as it is. The
    scheme and host are lowercased.

    Raises:
        InvalidInputError: not an http(s) URL with a host, or it holds credentials (give
            the token with ``--token`` / ``ship_token``).
    """
    if not isinstance(to, str):
        raise InvalidInputError("ship_to", f"must be a URL string, got {type(to).__name__}")
    try:
        parts = urlsplit(to.strip())
        port = parts.port
    except ValueError as exc:
        raise InvalidInputError("ship_to", f"is not a valid URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InvalidInputError(
            "ship_to", f"must be an http:// or https:// URL of an OTLP/HTTP endpoint, got {to!r}"
        )
    if parts.username is not None or parts.password is not None:
        raise InvalidInputError(
            "ship_to", "must not hold credentials: give the token separately (--token)"
        )
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    path = parts.path if parts.path not in ("", "/") else "/v1/traces"
    return urlunsplit((parts.scheme.lower(), netloc, path, parts.query, ""))


# --- the lock: one shipper per ledger and destination ---------------------------------


class _ShipLock:
    """An exclusive ``flock`` on a file beside the ledger, one per destination: the
    kernel releases it when its holder dies, even by ``kill -9``."""

    def __init__(self, ledger_path: str, destination: str) -> None:
        digest = hashlib.sha256(destination.encode("utf-8")).hexdigest()[:16]
        self.path = Path(f"{ledger_path}.ship-{digest}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip()
            os.close(fd)
            raise ShipLockedError(
                f"another shipper (pid {holder or '?'}) is shipping this ledger to this "
                f"destination (lock {self.path}); only one may, so this one does not start"
            ) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode("ascii"))
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


# --- the transport --------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class _Transient(Exception):
    """A failure worth trying again: the destination is down, busy or slow."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Transport:
    """POSTs to one URL over one kept-alive connection (reopened after any error)."""

    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path = parts.path + (f"?{parts.query}" if parts.query else "")
        self._timeout = timeout
        self._headers = {
            "Content-Type": "application/x-protobuf",
            "User-Agent": f"decision-trace-shipper/{_VERSION}",
        }
        if token:
            if any(ch in token for ch in "\r\n\0"):
                raise InvalidInputError("ship_token", "must not hold line breaks or NUL")
            self._headers["Authorization"] = f"Bearer {token}"
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def post(self, body: bytes, timeout: float | None = None) -> _Answer:
        wait = self._timeout if timeout is None else max(0.05, min(self._timeout, timeout))
        with self._lock:
            conn = self._conn
            if conn is None:
                cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
                conn = cls(self._host, self._port, timeout=wait)
                self._conn = conn
        try:
            conn.timeout = wait
            if conn.sock is not None:
                conn.sock.settimeout(wait)
            conn.request("POST", self._path, body=body, headers=self._headers)
            response = conn.getresponse()
            data = response.read()
            headers = {k.lower(): v for k, v in response.getheaders()}
            if response.will_close:
                self.reset()
            return _Answer(response.status, headers, data)
        except (OSError, http.client.HTTPException) as exc:
            self.reset()
            raise _Transient(_describe(exc)) from None

    def reset(self) -> None:
        """Close the connection (from any thread: a blocked request fails at once)."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(Exception):
                conn.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "no answer in time (timed out)"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (a number of seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _status_message(answer: _Answer) -> str:
    """The reason an OTLP receiver gave (a ``google.rpc.Status``, JSON or text)."""
    text = ""
    if answer.body:
        content_type = answer.headers.get("content-type", "")
        try:
            if "protobuf" in content_type:
                from google.rpc import status_pb2

                status = status_pb2.Status()
                status.ParseFromString(answer.body)
                text = status.message
            else:
                text = answer.body[:500].decode("utf-8", "replace")
        except Exception:
            text = ""
    text = " ".join(clean_text(text).split())[:300]
    return f"HTTP {answer.status}" + (f": {text}" if text else "")


_SPAN_ID = re.compile(r"\b([0-9a-f]{16})\b")


# --- the shipper ----------------------------------------------------------------------


@dataclass
class _Progress:
    shipped: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    requests: int = 0
    retries: int = 0
    last_error: str | None = None
    down_since: float | None = None


StateListener = Callable[[str, str], None]
"""Called with ``("down", reason)`` when the destination stops answering and with
``("up", "after N s")`` when it answers again; ``("progress", "N")`` after each batch of
N events acknowledged."""


class Shipper:
    """Ships one local ledger to one OTLP/HTTP destination.

    Args:
        ledger: The local ledger (an :class:`~decision_trace.storage.outbox.Outbox`: the
            SQLite ledger).
        to: The destination: ``http(s)://host:port`` (``/v1/traces`` is added) or the
            full traces URL.
        token: Bearer token the destination asks for (``decision-trace serve --token``).
        batch_size: Events per request.
        timeout: Seconds a request may take before it counts as failed and is retried.
        backoff: First retry delay in seconds; it doubles up to ``max_backoff``, with
            jitter (a random half of each delay).
        max_backoff: Longest delay between two tries.
        on_state: Told when the destination goes down or comes back, and after each
            batch (see :data:`StateListener`).
        cpu_share: The largest share of one CPU (of the interpreter, in a process that
            also runs the application) that shipping may take while it catches up: after
            each batch it rests in proportion to the CPU time the batch took. 1.0 never
            rests (the command line); in-process shipping uses less, so that ``record()``
            on the application's threads is not slowed by more than that share (see
            docs/shipping.md). A closing client ships without resting.
        lock: Take the one-shipper lock (only one shipper sends a ledger to a
            destination); False only when the caller holds it already.

    Raises:
        ShippingError: the ledger cannot ship (not an SQLite ledger, or read-only).
        ShipLockedError: another shipper holds the lock.
        InvalidInputError: a bad destination, token or size.
    """

    def __init__(
        self,
        ledger: Ledger,
        to: str,
        *,
        token: str | None = None,
        batch_size: int = DEFAULT_BATCH,
        timeout: float = 10.0,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        on_state: StateListener | None = None,
        lock: bool = True,
        cpu_share: float = 1.0,
    ) -> None:
        if not isinstance(ledger, Outbox):
            raise ShippingError(
                f"cannot ship from {ledger.location}: only a local SQLite ledger is an outbox "
                "(a PostgreSQL ledger or a ledger service is where events are shipped to)"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError("batch_size", f"must be a positive integer, got {batch_size!r}")
        for name, value in (
            ("timeout", timeout),
            ("backoff", backoff),
            ("max_backoff", max_backoff),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InvalidInputError(name, f"must be a positive number, got {value!r}")
        self.destination = destination_url(to)
        self.ledger = ledger
        self._outbox: Outbox = ledger
        self.batch_size = batch_size
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self._on_state = on_state
        if (
            isinstance(cpu_share, bool)
            or not isinstance(cpu_share, (int, float))
            or not 0 < cpu_share <= 1
        ):
            raise InvalidInputError("cpu_share", f"must be in (0, 1], got {cpu_share!r}")
        self.cpu_share = float(cpu_share)
        self._transport = _Transport(self.destination, token, float(timeout))
        self._abort = threading.Event()  # stop(): return now
        self._wake = threading.Event()  # stop() or finish_by(): no more idle waits
        self._deadline: float | None = None
        self._lock: _ShipLock | None = None
        if lock:
            self._lock = _ShipLock(ledger.location, self.destination)
            self._lock.acquire()
        try:
            self.position = self._outbox.register_destination(self.destination)
        except StoreError as exc:
            self.close()
            raise ShippingError(f"cannot ship from {ledger.location}: {exc}") from exc

    # -- life ---------------------------------------------------------------------------

    def __enter__(self) -> Shipper:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the connection and the lock (the ledger stays open). Idempotent."""
        self._transport.reset()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def stop(self) -> None:
        """Make :meth:`ship` / :meth:`follow` return soon, from any thread: the batch in
        flight is abandoned (and re-sent by the next shipper)."""
        self._abort.set()
        self._wake.set()
        self._transport.reset()

    def finish_by(self, deadline: float) -> None:
        """Ask a running :meth:`follow` to ship the backlog and return, by
        ``deadline`` (a :func:`time.monotonic` time) at the latest."""
        self._deadline = deadline
        self._wake.set()

    # -- shipping -----------------------------------------------------------------------

    def backlog(self) -> int:
        """Events stored past the destination's mark."""
        for status in self._outbox.outbox_status():
            if status.destination == self.destination:
                return status.backlog
        return 0

    def ship(self, *, max_wait: float | None = None) -> ShipReport:
        """Ship the backlog (what is stored now, and what arrives meanwhile), then return.

        Args:
            max_wait: Give up after this many seconds without an acknowledgement (the
                destination down or refusing); None retries until :meth:`stop`.
        """
        return self._run(follow=False, max_wait=max_wait, poll=0.0)

    def follow(self, *, poll_interval: float = 0.25) -> ShipReport:
        """Keep shipping new events (each within about ``poll_interval`` plus one
        request of its commit) until :meth:`stop` or :meth:`finish_by`."""
        return self._run(follow=True, max_wait=None, poll=poll_interval)

    def _run(self, *, follow: bool, max_wait: float | None, poll: float) -> ShipReport:
        started = time.monotonic()
        progress = _Progress()
        gave_up = False
        last_ack = started
        while True:
            if self._abort.is_set():
                break
            if self._deadline is not None and time.monotonic() >= self._deadline:
                gave_up = True
                break
            batch = self._next_batch()
            if not batch:
                if not follow or self._wake.is_set():
                    break
                self._wake.wait(poll)
                continue
            limit = None
            if max_wait is not None:
                limit = last_ack + max_wait
            if self._deadline is not None:
                limit = self._deadline if limit is None else min(limit, self._deadline)
            cpu_before = time.thread_time()
            try:
                rejected = self._deliver(batch, progress, limit)
            except _GiveUp:
                gave_up = True
                break
            position = batch[-1][0]
            self._outbox.acknowledge(
                self.destination, position, shipped=len(batch), rejected=rejected
            )
            self.position = position
            progress.shipped += len(batch)
            progress.rejected.extend(rejected)
            last_ack = time.monotonic()
            self._tell("progress", str(len(batch)))
            if self.cpu_share < 1.0 and self._deadline is None:
                # Rest in proportion to the CPU the batch took (reading, encoding), so that
                # the application's threads keep the rest of the interpreter.
                used = time.thread_time() - cpu_before
                self._wake.wait(used * (1.0 / self.cpu_share - 1.0))
        remaining = self._remaining()
        return ShipReport(
            destination=self.destination,
            shipped=progress.shipped,
            rejected=tuple(progress.rejected),
            position=self.position,
            remaining=remaining,
            requests=progress.requests,
            retries=progress.retries,
            seconds=time.monotonic() - started,
            last_error=progress.last_error,
            gave_up=gave_up and remaining > 0,
        )

    def _remaining(self) -> int:
        try:
            return self.backlog()
        except StoreError:
            return -1

    def _next_batch(self) -> list[tuple[int, EventRecord]]:
        records = self.ledger.iter_records(after=self.position, batch_size=self.batch_size)
        try:
            return list(itertools.islice(records, self.batch_size))
        finally:
            records.close()

    def _tell(self, state: str, message: str) -> None:
        if self._on_state is not None:
            try:
                self._on_state(state, message)
            except Exception:  # a listener's failure is not the shipper's
                _logger.exception("decision-trace shipping: state listener failed")

    def _deliver(
        self,
        batch: list[tuple[int, EventRecord]],
        progress: _Progress,
        limit: float | None,
    ) -> list[Rejection]:
        """Send ``batch`` until the destination has taken or refused every event of it;
        return the refused ones."""
        encoded = encode_request([record for _, record in batch], scope_version=_VERSION)
        rejected = [
            Rejection(batch[index][0], batch[index][1].id, reason)
            for index, reason in encoded.unencodable
        ]
        sendable = [batch[index] for index in encoded.sent]
        if sendable:  # (the body holds only these: encode_request leaves the others out)
            rejected.extend(self._send(sendable, encoded.body, progress, limit))
        rejected.sort(key=lambda r: r.position)
        return rejected

    def _send(
        self,
        items: list[tuple[int, EventRecord]],
        body: bytes,
        progress: _Progress,
        limit: float | None,
    ) -> list[Rejection]:
        answer = self._post(body, progress, limit)
        if 200 <= answer.status < 300:
            partial = parse_response(answer.body, answer.headers.get("content-type", ""))
            if partial.rejected_spans <= 0:
                return []
            message = clean_text(partial.error_message) or "rejected by the destination"
            if partial.rejected_spans >= len(items):
                return [Rejection(pos, rec.id, message) for pos, rec in items]
            named = set(_SPAN_ID.findall(partial.error_message))
            hits = [(pos, rec) for pos, rec in items if rec.id in named]
            if len(hits) == partial.rejected_spans:
                return [Rejection(pos, rec.id, message) for pos, rec in hits]
            return self._split(items, progress, limit)  # which ones? ask in halves
        if answer.status in SPLIT_STATUSES:
            if len(items) == 1:
                return [Rejection(items[0][0], items[0][1].id, _status_message(answer))]
            return self._split(items, progress, limit)
        raise ShippingError(
            f"{self.destination} refused the request ({_status_message(answer)}); "
            + (
                "check the token (--token, DECISION_TRACE_SHIP_TOKEN)"
                if answer.status in (401, 403)
                else "is it an OTLP/HTTP traces endpoint?"
            )
        )

    def _split(
        self, items: list[tuple[int, EventRecord]], progress: _Progress, limit: float | None
    ) -> list[Rejection]:
        """Send each half of ``items`` again, to find the spans refused (the destination
        stores the others once, however often they come)."""
        half = len(items) // 2
        rejected: list[Rejection] = []
        for part in (items[:half], items[half:]):
            body = encode_request([r for _, r in part], scope_version=_VERSION).body
            rejected.extend(self._send(part, body, progress, limit))
        return rejected

    def _post(self, body: bytes, progress: _Progress, limit: float | None) -> _Answer:
        """POST ``body`` until an answer that is not worth retrying, backing off between
        tries; raise :class:`_GiveUp` past ``limit`` or on :meth:`stop`."""
        attempt = 0
        while True:
            if self._abort.is_set():
                raise _GiveUp
            remaining = None if limit is None else limit - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise _GiveUp
            progress.requests += 1
            try:
                answer = self._transport.post(body, remaining)
                if answer.status not in RETRYABLE_STATUSES:
                    if progress.down_since is not None:
                        down = time.monotonic() - progress.down_since
                        progress.down_since = None
                        _logger.info(
                            "decision-trace shipping: %s answers again (after %.1f s)",
                            self.destination,
                            down,
                        )
                        self._tell("up", f"after {down:.1f} s")
                    if 200 <= answer.status < 300:
                        progress.last_error = None
                    else:
                        progress.last_error = _status_message(answer)
                    return answer
                raise _Transient(
                    _status_message(answer), _retry_after(answer.headers.get("retry-after"))
                )
            except _Transient as failure:
                progress.retries += 1
                reason = str(failure)
                progress.last_error = reason
                if progress.down_since is None:
                    progress.down_since = time.monotonic()
                    _logger.warning(
                        "decision-trace shipping: %s: %s; retrying with backoff",
                        self.destination,
                        reason,
                    )
                    self._tell("down", reason)
                    with contextlib.suppress(StoreError):
                        self._outbox.note_ship_error(self.destination, reason)
                delay = min(self.max_backoff, self.backoff * 2**attempt)
                delay = delay / 2 + random.uniform(0, delay / 2)
                if failure.retry_after is not None:
                    delay = max(delay, min(failure.retry_after, 300.0))
                attempt += 1
                if limit is not None:
                    delay = min(delay, max(0.0, limit - time.monotonic()))
                if self._abort.wait(delay):
                    raise _GiveUp from None


class _GiveUp(Exception):
    """Stopped, or past the deadline, before the destination answered."""


# --- in-process shipping ----------------------------------------------------------------


class BackgroundShipper:
    """A :class:`Shipper` on a daemon thread that follows the ledger (what
    ``DecisionTraceClient(ship_to=...)`` runs).

    It reads committed events from the ledger, never from the span pipeline, so it
    adds nothing to ``record()`` but a share of the CPU. Errors never reach the
    application: they are logged, kept for ``stats``, and retried. If another process
    holds the lock for this destination, this one waits and takes over when it is
    released.

    Args:
        ledger: The client's ledger.
        to: The destination URL.
        token: Its bearer token.
        batch_size: Events per request.
        poll_interval: Seconds between looks for new events when idle.
        timeout: Seconds a request may take.
        cpu_share: The share of the interpreter's CPU shipping may take while it catches
            up (see :class:`Shipper`); :data:`DEFAULT_CPU_SHARE` by default.
    """

    def __init__(
        self,
        ledger: Ledger,
        to: str,
        *,
        token: str | None = None,
        batch_size: int = DEFAULT_BATCH,
        poll_interval: float = 0.25,
        timeout: float = 10.0,
        cpu_share: float = DEFAULT_CPU_SHARE,
    ) -> None:
        if not isinstance(ledger, Outbox):
            raise ShippingError(
                f"cannot ship from {ledger.location}: only a local SQLite ledger is an outbox"
            )
        self.destination = destination_url(to)
        self._ledger = ledger
        self._outbox: Outbox = ledger
        self._token = token
        self._batch_size = batch_size
        self._poll = poll_interval
        self._timeout = timeout
        self._cpu_share = cpu_share
        self._closing = threading.Event()
        self._shipper: Shipper | None = None
        self._guard = threading.Lock()
        self._close_deadline = 0.0
        self.reports: list[ShipReport] = []
        """The report of the shipper this one ran, once it has stopped."""
        self._thread = threading.Thread(
            target=self._main, name="decision-trace-shipper", daemon=True
        )
        self._thread.start()

    def _main(self) -> None:
        while not self._closing.is_set():
            try:
                shipper = Shipper(
                    self._ledger,
                    self.destination,
                    token=self._token,
                    batch_size=self._batch_size,
                    timeout=self._timeout,
                    cpu_share=self._cpu_share,
                )
            except ShipLockedError as exc:
                _logger.info("decision-trace shipping: %s; waiting for it", exc)
                self._closing.wait(5.0)
                continue
            except Exception:
                _logger.exception("decision-trace shipping: cannot start; retrying in 30 s")
                self._closing.wait(30.0)
                continue
            with self._guard:
                self._shipper = shipper
            try:
                if self._closing.is_set():  # close() came while the shipper started
                    deadline = self._close_deadline
                    shipper.finish_by(deadline)
                self.reports.append(shipper.follow(poll_interval=self._poll))
                return
            except Exception as exc:
                _logger.exception("decision-trace shipping stopped (%s); restarting in 30 s", exc)
                with contextlib.suppress(StoreError):
                    self._outbox.note_ship_error(self.destination, f"{type(exc).__name__}: {exc}")
                self._closing.wait(30.0)
            finally:
                with self._guard:
                    self._shipper = None
                shipper.close()

    def close(self, timeout: float = 5.0) -> None:
        """Ship what can be shipped within ``timeout`` seconds, then stop; what is left
        is shipped by the next start. Returns within ``timeout`` seconds plus at most half
        a second."""
        deadline = time.monotonic() + max(0.0, timeout)
        self._close_deadline = deadline
        self._closing.set()
        with self._guard:
            shipper = self._shipper
        if shipper is not None:
            shipper.finish_by(deadline)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            # A request still in flight at the deadline is abandoned (its socket shut
            # down); its batch ships at the next start.
            with self._guard:
                shipper = self._shipper
            if shipper is not None:
                shipper.stop()
            self._thread.join(0.5)
