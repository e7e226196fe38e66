"""``SQLiteSpanExporter``: writes finished spans into the decision-trace ledger."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from decision_trace import _lifecycle
from decision_trace._decode import record_from_span
from decision_trace.errors import StoreError
from decision_trace.record import EventRecord
from decision_trace.storage import Durability, Ledger, open_ledger
from decision_trace.storage.sqlite import SQLiteLedger
from decision_trace.store import Store

__all__ = ["SQLiteSpanExporter"]

_logger = logging.getLogger(__name__)


class SQLiteSpanExporter(SpanExporter):
    """Export spans to a decision-trace SQLite ledger.

    Spans recorded by decision-trace are stored with their actor, decision and objects;
    any other span is stored as an event named after the span (its attributes kept as
    metadata), so the request that led to a decision appears in ``get_chain``.

    Constructible with no arguments, as OpenTelemetry auto-configuration does through
    the ``opentelemetry_traces_exporter`` entry point ``decision_trace``::

        OTEL_TRACES_EXPORTER=otlp,decision_trace opentelemetry-instrument python app.py

    Constructing one installs decision-trace's process hooks (see
    ``decision_trace._lifecycle``), as a client does: at SIGTERM, SIGHUP (where the
    application has no handler of its own) and exit, the application's global SDK tracer
    provider is force-flushed within ``$DECISION_TRACE_SHUTDOWN_TIMEOUT`` (10 s), so the
    spans its ``BatchSpanProcessor`` still holds reach the ledger before the process ends.

    Args:
        db_path: The database file; default ``$DECISION_TRACE_DB``, else
            ``$XDG_DATA_HOME/decision-trace/traces.db``, else
            ``~/.local/share/decision-trace/traces.db``.
            A path is an SQLite file; the string goes through
            :func:`~decision_trace.storage.open_ledger`, as everywhere else.
        durability: ``"sync"`` or ``"batch"``; see :class:`~decision_trace.store.Store`.
        store: An open SQLite store to write to instead of opening ``db_path``.
        ledger: An open ledger to write to instead of opening ``db_path``.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str] | None = None,
        *,
        durability: Durability = "batch",
        store: Store | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self._owns_ledger = store is None and ledger is None
        if ledger is not None:
            self._ledger = ledger
        elif store is not None:
            self._ledger = SQLiteLedger.of_store(store)
        else:
            self._ledger = open_ledger(db_path, durability=durability)
        self._is_shutdown = False
        _lifecycle.install_process_hooks()

    @property
    def ledger(self) -> Ledger:
        """The ledger this exporter writes to."""
        return self._ledger

    @property
    def store(self) -> Store:
        """The SQLite store this exporter writes to.

        Raises:
            StoreError: the ledger is not an SQLite file.
        """
        if not isinstance(self._ledger, SQLiteLedger):
            raise StoreError(f"{self._ledger.location} is not an SQLite ledger")
        return self._ledger.store

    @property
    def location(self) -> str:
        """Where the ledger is, for messages."""
        return self._ledger.location

    def check_file(self) -> bool:
        """False once if events written so far may no longer be in the ledger (its file
        was deleted or replaced while open); see :meth:`Ledger.confirm_writes`."""
        return self._ledger.confirm_writes()

    def write(self, spans: Sequence[ReadableSpan]) -> int:
        """Commit ``spans``; return how many were new. Unlike :meth:`export`, raises.

        Raises:
            StoreError: nothing was written (the store is closed, full, or locked for
                longer than the busy timeout).
        """
        if self._is_shutdown:
            raise StoreError("the exporter is shut down")
        records = []
        for span in spans:
            record = self.decode(span)
            if record is not None:
                records.append(record)
        return self._ledger.write(records)

    def decode(self, span: ReadableSpan) -> EventRecord | None:
        """The row of ``span``, or None (logged) if it cannot be decoded: a malformed
        foreign span must not block the spans around it."""
        try:
            return record_from_span(span)
        except Exception:
            _logger.exception("decision-trace: cannot decode span %r; skipped", span.name)
            return None

    def write_records(self, records: Sequence[EventRecord]) -> int:
        """Commit already decoded spans (see :meth:`decode`); return how many were new.

        Raises:
            StoreError: as :meth:`write`.
        """
        if self._is_shutdown:
            raise StoreError("the exporter is shut down")
        return self._ledger.write(records)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write ``spans``; never raises (failures are logged and return ``FAILURE``)."""
        if self._is_shutdown:
            return SpanExportResult.FAILURE
        try:
            self.write(spans)
        except Exception:
            _logger.exception("decision-trace: could not store %d span(s)", len(spans))
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Stop exporting and close the ledger if this exporter opened it. Idempotent."""
        if self._is_shutdown:
            return
        self._is_shutdown = True
        if self._owns_ledger:
            self._ledger.close()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Every export commits before returning, so there is nothing to flush."""
        return True
