"""``LedgerSpanProcessor``: hands every finished decision span to the SQLite exporter.

Unlike the SDK's ``BatchSpanProcessor``, it never drops a span because a queue is full,
and it ignores the sampled flag (the ledger keeps every decision; sampling only governs
what goes to collectors). A span that cannot be decoded is logged and counted in
``stats().failed``.

- ``durability="sync"``: ``on_end`` commits the span before returning, in the caller's
  thread. A failed commit raises :class:`~decision_trace.errors.StoreError` to the caller.
- ``durability="batch"``: ``on_end`` decodes the span into its row, appends that to a
  bounded in-memory queue and returns; a background thread commits up to
  ``max_batch_size`` rows a transaction. When the queue is full, or its oldest row has
  waited longer than ``max_lag_s`` (:data:`MAX_LAG_S`), ``on_end`` waits for the writer
  (back-pressure) instead of dropping or falling further behind. A batch that still
  cannot be written after retries is counted in ``stats().failed``, logged, and makes
  ``force_flush()`` return False; a span that cannot be stored on its own account is
  counted alone and the rest of its batch is written.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.util
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from ._export import ExporterStats
from .errors import InvalidInputError, RejectedRecordsError
from .record import EventRecord
from .store import Durability

__all__ = ["ExporterStats", "LedgerSpanProcessor", "LedgerStats", "RecordSink"]

_logger = logging.getLogger(__name__)

RETRY_DELAYS_S = (0.05, 0.2, 0.5, 1.0, 2.0, 4.0)
"""Waits between attempts to write a batch before its spans are counted as failed."""

MAX_LAG_S = 1.0
"""Batch mode: once the oldest span not yet committed is older than this, or more spans
are queued than the writer (at the pace it last wrote) commits in half of it, ``on_end``
waits until the writer has caught up. It bounds what ``kill -9`` can take from an
application busy enough to starve the writer thread of the GIL, or faster than its disk.
Not applied while the writer waits to retry a failed write (the queue bound still is)."""


@dataclass(frozen=True)
class LedgerStats:
    """Counters of a ledger processor since it was created (in this process).

    Attributes:
        recorded: Spans handed to the processor.
        written: Spans committed to the store (including ones already stored).
        failed: Spans that could not be written after retries, or were still queued when
            a shutdown deadline passed (lost to the ledger; each loss is logged).
        queued: Spans waiting for the background writer.
        exporters: One :class:`ExporterStats` per exporter the client sends spans to
            (OTLP, ``exporters=``): what it delivered, failed and dropped, so a collector
            that missed events is visible while the ledger kept them.
    """

    recorded: int
    written: int
    failed: int
    queued: int
    exporters: tuple[ExporterStats, ...] = ()


class RecordSink(Protocol):
    """Where a :class:`LedgerSpanProcessor` sends its spans: something that turns a span
    into its row and writes rows to a ledger (the SQLite exporter is one)."""

    @property
    def location(self) -> str:
        """Where the rows go, for messages."""
        ...

    def decode(self, span: ReadableSpan) -> EventRecord | None:
        """The row of ``span``, or None (logged) if it cannot be decoded."""
        ...

    def write_records(self, records: Sequence[EventRecord]) -> int:
        """Commit rows; return how many were new.

        Raises:
            RejectedRecordsError: some rows cannot be stored (the others were written).
            StoreError: nothing was written.
        """
        ...

    def check_file(self) -> bool:
        """False once if what was written may not be where the ledger is now (say, its
        file was deleted or replaced while open)."""
        ...


class LedgerSpanProcessor(SpanProcessor):
    """Write every span that ends to the SQLite ledger; see the module docstring.

    Args:
        exporter: The exporter that commits spans.
        durability: ``"sync"`` or ``"batch"``.
        max_queue_size: Spans held in memory before ``on_end`` waits (batch only).
        max_batch_size: Spans committed per transaction (batch only).
        schedule_delay_s: How long the writer waits to fill a batch (batch only).
        max_lag_s: How old the oldest uncommitted span may get before ``on_end`` waits
            for the writer (batch only; see :data:`MAX_LAG_S`).
    """

    def __init__(
        self,
        exporter: RecordSink,
        *,
        durability: Durability = "batch",
        max_queue_size: int = 20_000,
        max_batch_size: int = 512,
        schedule_delay_s: float = 0.2,
        max_lag_s: float = MAX_LAG_S,
    ) -> None:
        if durability not in ("sync", "batch"):
            raise InvalidInputError("durability", f"must be 'sync' or 'batch', got {durability!r}")
        if max_queue_size < 1 or max_batch_size < 1:
            raise InvalidInputError("max_queue_size", "queue and batch sizes must be >= 1")
        self._exporter = exporter
        self.durability = durability
        self._max_queue_size = max_queue_size
        self._max_batch_size = max_batch_size
        self._schedule_delay_s = schedule_delay_s
        self._max_lag_s = max_lag_s
        self._init_state()
        if hasattr(os, "register_at_fork"):
            ref = weakref.WeakMethod(self._after_fork_in_child)
            os.register_at_fork(after_in_child=lambda: (m := ref()) and m())
        # multiprocessing ends its fork children with os._exit(), skipping atexit; it
        # runs its own finalizers first, so flush there too.
        multiprocessing.util.register_after_fork(self, _flush_at_multiprocessing_exit)

    def _init_state(self) -> None:
        # Re-entrant: the SIGTERM hook flushes from a signal handler, which may run in the
        # main thread while it is inside on_end() holding this lock.
        self._cond = threading.Condition(threading.RLock())
        self._queue: deque[EventRecord] = deque()
        self._queued_at: deque[float] = deque()  # time.monotonic() of each queued row
        self._in_flight_since = 0.0  # when the oldest row of the batch being written queued
        self._retrying = False  # the writer is waiting to retry a failed write
        # Spans the writer commits in max_lag_s / 2 at the pace of its last batch; until a
        # batch has been timed, a few batches (a producer could otherwise queue thousands
        # of events before the oldest is max_lag_s old, and they would all wait for it).
        self._backlog_cap = min(self._max_queue_size, 4 * self._max_batch_size)
        self._recorded = 0
        self._written = 0
        self._failed = 0
        self._failed_reported = 0  # failures some force_flush() already returned False for
        self._in_flight = 0
        self._flush_requested = False
        self._shutdown = False
        self._thread: threading.Thread | None = None
        self._failure_logged = False
        self._sync_lock = threading.Lock()

    def _after_fork_in_child(self) -> None:
        # The parent still owns (and will write) whatever was queued before fork();
        # the child starts empty with fresh locks and starts its own writer on demand.
        shutdown = self._shutdown
        self._init_state()
        self._shutdown = shutdown

    # -- SpanProcessor ------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        # Decoded here, in the thread that ended the span, while it is still in the CPU's
        # cache: the writer thread would hold the GIL (taking it from the application's
        # threads) for longer doing the same on a cold span, and a queue of rows holds
        # less memory than a queue of spans.
        record = self._exporter.decode(span)
        if record is None:
            with self._cond:
                self._recorded += 1
                self._failed += 1
            return
        if self.durability == "sync":
            with self._sync_lock:
                self._recorded += 1
                try:
                    self._exporter.write_records([record])
                except Exception:
                    # Raised to the caller; counted, so stats() and flush() add up.
                    with self._cond:
                        self._failed += 1
                    raise
                self._written += 1
            return
        with self._cond:
            if self._shutdown:
                # Closed client: write directly rather than lose the span.
                self._recorded += 1
                self._exporter.write_records([record])
                self._written += 1
                return
            if self._thread is None:
                self._ensure_writer()
            now = time.monotonic()
            queued = len(self._queue)
            if queued >= self._max_batch_size:
                # Checked only here (not on every call: is_alive() costs as much as the
                # rest of on_end): a writer that died would otherwise leave a full queue.
                self._ensure_writer()
                while len(self._queue) >= self._max_queue_size and not self._shutdown:
                    self._cond.notify_all()
                    self._cond.wait(0.1)
                    self._ensure_writer()
                if len(self._queue) >= self._backlog_cap and not self._retrying:
                    self._catch_up()
                now = time.monotonic()
            if self._in_flight:
                oldest = self._in_flight_since
            else:
                oldest = self._queued_at[0] if self._queued_at else now
            if now - oldest > self._max_lag_s and not self._retrying:
                self._catch_up()
                now = time.monotonic()
            self._queue.append(record)
            self._queued_at.append(now)
            self._recorded += 1
            if queued + 1 >= self._max_batch_size:
                self._cond.notify_all()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Wait until every span recorded so far is written; False on timeout, or if any
        span failed since the previous flush reported (even before this call), or if the
        ledger was deleted or replaced while open (see ``Store.check_file``)."""
        with self._cond:
            if self.durability == "batch" and not self.wait_until_written(timeout_millis):
                return False
            ok = self._failed == self._failed_reported
            self._failed_reported = self._failed
        return self._exporter.check_file() and ok

    def wait_until_written(self, timeout_millis: int = 30_000) -> bool:
        """Wait until every span recorded so far has been handled (written or counted as
        failed); False on timeout. Unlike :meth:`force_flush`, reports no failure (reads
        call this first, and must not swallow what the next flush reports)."""
        if self.durability == "sync":
            return True
        # Nothing pending (the usual case before a read): no lock needed. The counters
        # only grow, so once the handled ones cover what had been recorded, every span
        # recorded before this call is written or failed.
        recorded = self._recorded
        if self._written + self._failed >= recorded:
            return True
        deadline = time.monotonic() + timeout_millis / 1000
        with self._cond:
            target = self._recorded
            if self._written + self._failed < target:
                self._ensure_writer()
                self._flush_requested = True
                self._cond.notify_all()
            while self._written + self._failed < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    shutdown_timeout_s: float = 30.0
    """What :meth:`shutdown` and a ``multiprocessing`` child's exit give the queue."""

    def shutdown(self) -> None:
        """The SDK's shutdown: :meth:`close_within` ``shutdown_timeout_s`` from now."""
        self.close_within(time.monotonic() + self.shutdown_timeout_s)

    def close_within(self, deadline: float) -> int:
        """Write what is queued until ``deadline`` (a ``time.monotonic()`` time), then stop
        the writer. Events still queued then are dropped, counted in ``stats().failed``
        (so the next ``force_flush()`` returns False) and logged with their number, as are
        those in a write that had not finished. Returns that number. Idempotent; events
        ending afterwards are written directly."""
        with self._cond:
            first = not self._shutdown
            # From now on on_end() writes directly, so a thread still recording cannot
            # keep the queue growing behind the wait below.
            self._shutdown = True
            if self._queue:
                with contextlib.suppress(RuntimeError):  # no new thread at finalization:
                    self._ensure_writer()  # then what is left is counted and logged below
            self._cond.notify_all()
            while self.durability == "batch" and self._written + self._failed < self._recorded:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            left = len(self._queue)
            self._queue.clear()
            self._failed += left
            in_flight = self._in_flight
            self._cond.notify_all()
            thread = self._thread
        if first and (left or in_flight):
            _logger.error(
                "decision-trace: %d event(s) were not written to %s before the shutdown "
                "deadline: %d dropped from the queue (lost to the ledger, counted in "
                "client.stats().failed) and %d in a write that had not finished",
                left + in_flight,
                self._exporter.location,
                left,
                in_flight,
            )
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
        return left + in_flight if first else 0

    def stats(self) -> LedgerStats:
        """Current counters; see :class:`LedgerStats`."""
        with self._cond:
            return LedgerStats(
                recorded=self._recorded,
                written=self._written,
                failed=self._failed,
                queued=len(self._queue) + self._in_flight,
            )

    # -- the writer thread --------------------------------------------------------------

    def _catch_up(self) -> None:
        """Wait (holding ``_cond``) until the oldest uncommitted span is younger than half
        of ``max_lag_s`` and the queue is under the backlog the writer commits in that
        time: a waiting application leaves the writer the GIL it needs."""
        self._ensure_writer()
        while not self._shutdown and not self._retrying:
            if self._in_flight:
                oldest = self._in_flight_since
            elif self._queued_at:
                oldest = self._queued_at[0]
            else:
                return
            if (
                time.monotonic() - oldest <= self._max_lag_s / 2
                and len(self._queue) < self._backlog_cap
            ):
                return
            self._cond.notify_all()
            self._cond.wait(0.1)
            self._ensure_writer()

    def _ensure_writer(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name="decision-trace-writer", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                if len(self._queue) < self._max_batch_size and not (
                    self._flush_requested or self._shutdown
                ):
                    self._cond.wait(self._schedule_delay_s)
                if not self._queue:
                    self._flush_requested = False
                    if self._shutdown:
                        return
                    continue
                count = min(len(self._queue), self._max_batch_size)
                batch = [self._queue.popleft() for _ in range(count)]
                self._in_flight_since = self._queued_at[0]
                for _ in range(count):
                    self._queued_at.popleft()
                self._in_flight = count
                self._cond.notify_all()  # room in the queue for waiting producers
            started = time.monotonic()
            failed = self._write_with_retries(batch)
            elapsed = time.monotonic() - started
            with self._cond:
                if not failed and elapsed > 0:
                    pace = int(count / elapsed * self._max_lag_s / 2)
                    self._backlog_cap = max(self._max_batch_size, pace)
                self._in_flight = 0
                self._written += count - failed
                self._failed += failed
                self._cond.notify_all()

    def _write_with_retries(self, batch: list[EventRecord]) -> int:
        """Write ``batch``; return how many of its spans could not be written."""
        try:
            for attempt, delay in enumerate((0.0, *RETRY_DELAYS_S)):
                if delay:
                    self._retrying = True
                    time.sleep(delay)
                try:
                    self._exporter.write_records(batch)
                except RejectedRecordsError as exc:
                    # Their content, not the disk: the store wrote every other record of the
                    # batch (it isolates any record that fails on its own); retrying cannot
                    # help them.
                    self._log_failure(len(exc.rejected), exc)
                    return len(exc.rejected)
                except Exception as exc:
                    if attempt == len(RETRY_DELAYS_S):
                        self._log_failure(len(batch), exc)
                        return len(batch)
                    continue
                return 0
            return len(batch)
        finally:
            self._retrying = False

    def _log_failure(self, count: int, exc: Exception) -> None:
        if not self._failure_logged:
            self._failure_logged = True
            _logger.error(
                "decision-trace: %d event(s) could not be written to %s and are "
                "lost to the ledger: %s (further failures are counted in "
                "client.stats(), not logged)",
                count,
                self._exporter.location,
                exc,
            )


def _flush_at_multiprocessing_exit(processor: LedgerSpanProcessor) -> None:
    multiprocessing.util.Finalize(
        None, _flush_at_exit, args=(weakref.ref(processor),), exitpriority=10
    )


def _flush_at_exit(ref: weakref.ReferenceType[LedgerSpanProcessor]) -> None:
    processor = ref()
    if processor is not None and not processor._shutdown:
        processor.force_flush(int(processor.shutdown_timeout_s * 1000))
