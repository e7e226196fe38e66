"""The ingest service: decode OTLP spans and write them to one shared ledger, for the
HTTP and the gRPC receivers alike.

One writer thread owns the writes. Receivers hand it the records of a request and wait
for the answer; the thread takes whatever requests are waiting (up to a batch size) and
writes them in one ledger transaction, so many small concurrent exports cost one commit
(group commit) and the ledger sees one writer. How much may wait is bounded: past
``max_pending_spans`` a request is refused at once with :class:`IngestUnavailable`
(HTTP 503 with ``Retry-After``, gRPC ``RESOURCE_EXHAUSTED`` with ``RetryInfo``), which
the OpenTelemetry exporters retry. A request whose write has not finished within
``write_timeout`` is answered the same way; if its records are written after all, the
client's retry stores nothing twice (writes are idempotent on the event id).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ..errors import RejectedRecordsError, StoreError
from ..record import EventRecord
from ..storage import Ledger
from ._otlp import Decoded, decode_request

__all__ = ["IngestService", "IngestUnavailable"]

logger = logging.getLogger("decision_trace.server")

Rejected = list[tuple[str, str]]
"""``(span id, why)`` of each span of a request that was not stored."""

_REFUSED = "the ledger cannot store this span"


class IngestUnavailable(Exception):
    """The spans were not stored now, and a retry later may succeed.

    Attributes:
        retry_after: Seconds a client should wait before retrying.
        overloaded: True when too much is waiting to be written (the request was not
            even queued), False when the ledger failed or was too slow.
    """

    def __init__(self, message: str, *, retry_after: int, overloaded: bool) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.overloaded = overloaded


@dataclass
class _Job:
    records: Sequence[EventRecord]
    rejected: Rejected
    future: Future[Rejected]


class IngestService:
    """Decodes OTLP requests and writes their spans to ``ledger`` through one writer
    thread. Thread-safe; :meth:`close` drains what is queued (it does not close the
    ledger: whoever opened it does).

    Args:
        ledger: The ledger to write to.
        max_pending_spans: Most spans queued or being written at once; a request that
            would pass it is refused (unless nothing is queued).
        max_batch_spans: Most spans one ledger transaction takes from the queue (a
            single larger request is still written whole, in one transaction).
        write_timeout: Seconds a request waits for its write before it is answered
            "unavailable, retry".
        retry_after: Seconds clients are told to wait when refused.
    """

    def __init__(
        self,
        ledger: Ledger,
        *,
        max_pending_spans: int = 50_000,
        max_batch_spans: int = 5_000,
        write_timeout: float = 5.0,
        retry_after: int = 1,
    ) -> None:
        self._ledger = ledger
        self._max_pending = max(1, max_pending_spans)
        self._max_batch = max(1, max_batch_spans)
        self.write_timeout = write_timeout
        self.retry_after = retry_after
        self._jobs: deque[_Job] = deque()
        self._pending = 0
        self._closing = False
        self._failing = 0
        self._cond = threading.Condition()
        self._thread = threading.Thread(
            target=self._run, name="decision-trace-ingest-writer", daemon=True
        )
        self._thread.start()

    @property
    def ledger(self) -> Ledger:
        """The ledger spans are written to."""
        return self._ledger

    @property
    def pending_spans(self) -> int:
        """Spans queued or being written now."""
        return self._pending

    # --- the receivers' side ----------------------------------------------------------

    @staticmethod
    def decode(request: ExportTraceServiceRequest) -> Decoded:
        """The records of ``request`` (CPU work: run it off an event loop)."""
        return decode_request(request)

    def submit(self, decoded: Decoded) -> Future[Rejected]:
        """Queue ``decoded`` for writing; the future's result lists every span of it not
        stored (the decoder's rejections and the ledger's). Cancelling the future before
        the writer takes the request leaves it unwritten.

        Raises:
            IngestUnavailable: too much is waiting already, or the service is closing.
        """
        future: Future[Rejected] = Future()
        records = decoded.records
        if not records:
            future.set_result(list(decoded.rejected))
            return future
        count = len(records)
        with self._cond:
            if self._closing:
                raise IngestUnavailable(
                    "the ledger service is shutting down", retry_after=5, overloaded=False
                )
            if self._pending and self._pending + count > self._max_pending:
                raise IngestUnavailable(
                    f"{self._pending} spans are waiting to be written; retry later",
                    retry_after=self.retry_after,
                    overloaded=True,
                )
            self._pending += count
            self._jobs.append(_Job(records, list(decoded.rejected), future))
            self._cond.notify()
        return future

    def export(self, request: ExportTraceServiceRequest) -> tuple[int, Rejected]:
        """Decode, write and wait: ``(spans in the request, spans not stored)``. For
        callers on plain threads (the gRPC receiver).

        Raises:
            IngestUnavailable: nothing was stored now; retry later.
        """
        decoded = self.decode(request)
        future = self.submit(decoded)
        return decoded.spans, self.wait(future)

    def wait(self, future: Future[Rejected]) -> Rejected:
        """The result of :meth:`submit`'s future, at most :attr:`write_timeout` away.

        Raises:
            IngestUnavailable: the write failed or took too long.
        """
        try:
            return future.result(timeout=self.write_timeout)
        except FutureTimeout:
            future.cancel()
            raise self.too_slow() from None

    def too_slow(self) -> IngestUnavailable:
        """The error for a write that did not finish within :attr:`write_timeout`."""
        return IngestUnavailable(
            f"the ledger did not finish the write within {self.write_timeout:g} s; retry later",
            retry_after=self.retry_after,
            overloaded=False,
        )

    def close(self, timeout: float | None = 60.0) -> None:
        """Refuse new requests, write every queued one, stop the writer. Idempotent."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # --- the writer thread -------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closing:
                    self._cond.wait()
                if not self._jobs:
                    return
                batch: list[_Job] = []
                size = 0
                while self._jobs and (
                    not batch or size + len(self._jobs[0].records) <= self._max_batch
                ):
                    job = self._jobs.popleft()
                    batch.append(job)
                    size += len(job.records)
            try:
                self._write([job for job in batch if job.future.set_running_or_notify_cancel()])
            finally:
                with self._cond:
                    self._pending -= size

    def _write(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        records = [record for job in jobs for record in job.records]
        refused: frozenset[str] = frozenset()
        try:
            self._ledger.write(records)
        except RejectedRecordsError as exc:
            refused = frozenset(exc.rejected)
        except Exception as exc:
            # StoreError: nothing was written. Anything else (a driver error a backend did
            # not wrap) is taken the same way: the client retries, rather than losing the
            # spans to a 500.
            self._store_failed(exc)
            error = IngestUnavailable(
                "the ledger cannot be written now; retry later",
                retry_after=max(self.retry_after, 5),
                overloaded=False,
            )
            for job in jobs:
                job.future.set_exception(error)
            return
        self._store_recovered()
        for job in jobs:
            rejected = job.rejected
            if refused:
                rejected = rejected + [(r.id, _REFUSED) for r in job.records if r.id in refused]
            job.future.set_result(rejected)

    def _store_failed(self, exc: Exception) -> None:
        """One log line when writes start failing, none for each failure after it."""
        self._failing += 1
        if self._failing == 1:
            what = " ".join(str(exc).split())
            if not isinstance(exc, StoreError):
                what = f"{type(exc).__name__}: {what}"
            logger.error(
                "cannot write to the ledger (%s); answering 'unavailable, retry later' "
                "until it recovers",
                what,
            )

    def _store_recovered(self) -> None:
        if self._failing:
            logger.warning("writing to the ledger again, after %d failed write(s)", self._failing)
            self._failing = 0
