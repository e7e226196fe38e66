"""``ExportProcessor``: batches sampled decision spans to one exporter (OTLP or extra),
counting what it delivered, and never holding up a flush or a shutdown past its deadline.

It replaces the SDK's ``BatchSpanProcessor`` in front of our exporters because that one
tells no truth about delivery (``force_flush()`` returns True when the export failed) and
its ``shutdown()`` joins a worker that may be stuck in a socket read for as long as the
collector likes. Here:

- ``force_flush(timeout)`` returns within ``timeout``, True only when every span handed to
  it before the call was exported successfully and none failed or was dropped since the
  previous flush reported (a failure is reported once, as the ledger does).
- ``close_within(deadline)`` gives the queue until ``deadline``, then counts what is left
  as dropped, logs that count once, and shuts the exporter down on a helper thread it does
  not wait for beyond the deadline.
- ``stats()`` counts spans exported, failed (the exporter said FAILURE or raised) and
  dropped (queue full, or still undelivered when a shutdown deadline passed).

The queue, batch size and delay honour the SDK's ``OTEL_BSP_*`` variables.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

__all__ = ["ExportProcessor", "ExporterStats", "run_bounded"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExporterStats:
    """Counters of one exporter (OTLP or one passed in ``exporters=``) in this process.

    Attributes:
        name: The exporter's class name, with its endpoint when it has one.
        exported: Spans the exporter accepted (it returned SUCCESS).
        failed: Spans in batches the exporter refused, failed or raised on.
        dropped: Spans never handed to it: its queue was full, or they were still
            undelivered when a shutdown deadline passed.
        queued: Spans waiting for it (or in an export that has not returned).
    """

    name: str
    exported: int
    failed: int
    dropped: int
    queued: int


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        value = int(raw) if raw else default
    except ValueError:
        _logger.warning("decision-trace: ignoring %s=%r (not an integer)", name, raw)
        return default
    return value if value > 0 else default


def exporter_name(exporter: SpanExporter) -> str:
    """``OTLPSpanExporter(http://host:4318/v1/traces)``, or the bare class name."""
    endpoint = getattr(exporter, "_endpoint", None)
    name = type(exporter).__name__
    return f"{name}({endpoint})" if isinstance(endpoint, str) and endpoint else name


def run_bounded(target: Callable[[], object], timeout_s: float, name: str) -> bool:
    """Run ``target`` on a daemon thread and wait for it at most ``timeout_s``; True when it
    returned in time. What it raises is logged, never raised."""

    def run() -> None:
        try:
            target()
        except Exception:
            _logger.exception("decision-trace: %s failed", name)

    thread = threading.Thread(target=run, name=f"decision-trace-{name}", daemon=True)
    try:
        thread.start()
    except RuntimeError:  # no new threads at interpreter shutdown: run it here instead
        run()
        return True
    thread.join(max(0.0, timeout_s))
    return not thread.is_alive()


class ExportProcessor(SpanProcessor):
    """Export sampled spans to ``exporter`` in batches on a daemon thread; see the module
    docstring.

    Args:
        exporter: Where the spans go.
        shutdown_timeout_s: What ``shutdown()`` (the SDK's call, without a deadline) gives
            the queue before it counts the rest as dropped.
    """

    def __init__(self, exporter: SpanExporter, *, shutdown_timeout_s: float = 30.0) -> None:
        self._exporter = exporter
        self.name = exporter_name(exporter)
        self.shutdown_timeout_s = shutdown_timeout_s
        self._max_queue_size = _env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        self._max_batch_size = min(
            _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512), self._max_queue_size
        )
        self._schedule_delay_s = _env_int("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        self._init_state()
        if hasattr(os, "register_at_fork"):
            ref = weakref.WeakMethod(self._init_state)
            os.register_at_fork(after_in_child=lambda: (m := ref()) and m())

    def _init_state(self) -> None:
        # Also the fork hook: the parent exports what it queued; the child starts empty.
        # Re-entrant: the SIGTERM hook may run while the main thread is inside on_end().
        self._cond = threading.Condition(threading.RLock())
        self._queue: deque[ReadableSpan] = deque()
        self._accepted = 0  # spans put in the queue
        self._exported = 0
        self._failed = 0
        self._dropped_full = 0  # never queued: the queue was full or closed
        self._abandoned = 0  # queued, then given up at a shutdown deadline
        self._bad_reported = 0  # failed + dropped that some force_flush() returned False for
        self._in_flight = 0
        self._flush_requested = False
        self._shutdown = False
        self._full_logged = False
        self._thread: threading.Thread | None = None

    # -- SpanProcessor ------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None or not context.trace_flags.sampled:
            return  # collectors follow the application's sampling (the ledger keeps all)
        with self._cond:
            if self._shutdown or len(self._queue) >= self._max_queue_size:
                self._dropped_full += 1
                if not self._full_logged and not self._shutdown:
                    self._full_logged = True
                    _logger.warning(
                        "decision-trace: the export queue of %s is full (%d spans); spans "
                        "are dropped from it, not from the ledger (counted in "
                        "client.stats().exporters)",
                        self.name,
                        self._max_queue_size,
                    )
                return
            self._queue.append(span)
            self._accepted += 1
            if self._thread is None or len(self._queue) >= self._max_batch_size:
                self._ensure_worker()
                self._cond.notify_all()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Wait until every span queued so far is exported; False on timeout, or when any
        span failed or was dropped since the previous flush reported it."""
        deadline = time.monotonic() + timeout_millis / 1000
        with self._cond:
            target = self._accepted
            if self._handled() < target:
                self._ensure_worker()
                self._flush_requested = True
                self._cond.notify_all()
            while self._handled() < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            bad = self._failed + self._dropped_full + self._abandoned
            ok = bad == self._bad_reported
            self._bad_reported = bad
            return ok

    def request_flush(self) -> None:
        """Ask the worker to export what is queued now, without waiting."""
        with self._cond:
            if self._queue:
                self._ensure_worker()
                self._flush_requested = True
                self._cond.notify_all()

    def close_within(self, deadline: float) -> int:
        """Export what is queued until ``deadline`` (a ``time.monotonic()`` time), then stop:
        what is left is counted as dropped and logged. The exporter is shut down on a helper
        thread waited for only until the deadline. Returns how many spans were not delivered
        (dropped now, or in an export that had not returned). Idempotent."""
        with self._cond:
            if self._shutdown:
                return 0
            target = self._accepted
            if self._queue:
                with contextlib.suppress(RuntimeError):  # no new thread at finalization
                    self._ensure_worker()
                self._flush_requested = True
                self._cond.notify_all()
            while self._handled() < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._shutdown = True
            left = len(self._queue)
            self._queue.clear()
            self._abandoned += left
            in_flight = self._in_flight
            self._cond.notify_all()
        if left or in_flight:
            _logger.warning(
                "decision-trace: %d span(s) were not delivered to %s when it was shut down "
                "(%d dropped from its queue, %d in an export that had not returned); the "
                "ledger has them",
                left + in_flight,
                self.name,
                left,
                in_flight,
            )
        run_bounded(self._exporter.shutdown, deadline - time.monotonic(), f"{self.name} shutdown")
        return left + in_flight

    def shutdown(self) -> None:
        """The SDK's shutdown: :meth:`close_within` ``shutdown_timeout_s`` from now."""
        self.close_within(time.monotonic() + self.shutdown_timeout_s)

    def stats(self) -> ExporterStats:
        """Current counters; see :class:`ExporterStats`."""
        with self._cond:
            return ExporterStats(
                name=self.name,
                exported=self._exported,
                failed=self._failed,
                dropped=self._dropped_full + self._abandoned,
                queued=len(self._queue) + self._in_flight,
            )

    # -- the worker thread --------------------------------------------------------------

    def _handled(self) -> int:
        return self._exported + self._failed + self._abandoned

    def _ensure_worker(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name="decision-trace-export", daemon=True
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
                self._in_flight = count
            try:
                ok = self._exporter.export(batch) is SpanExportResult.SUCCESS
            except Exception:
                _logger.exception("decision-trace: exporter %s raised", self.name)
                ok = False
            with self._cond:
                self._in_flight = 0
                if ok:
                    self._exported += count
                else:
                    self._failed += count
                self._cond.notify_all()
