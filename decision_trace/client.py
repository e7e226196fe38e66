"""``DecisionTraceClient``: wires the OpenTelemetry pipeline and answers queries.

One client owns a private ``TracerProvider`` (so decision spans are recorded whatever
the application's sampler or span limits), a :class:`LedgerSpanProcessor` writing to the
SQLite store, and, when configured, an OTLP exporter to a collector.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING

from opentelemetry import trace as otel_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import Span, SpanContext, TraceFlags, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import _lifecycle, record
from . import attributes as keys
from . import models as _models
from ._export import ExportProcessor, run_bounded
from ._lifecycle import DEFAULT_SHUTDOWN_TIMEOUT_S, SHUTDOWN_TIMEOUT_ENV
from ._lifecycle import shutdown_timeout as _shutdown_timeout
from ._otel import (
    NO_LIMITS,
    LedgerSampler,
    OsRandomIdGenerator,
    enable_provider,
    otlp_exporter,
)
from .builder import TraceBuilder
from .errors import EventNotFoundError, InvalidInputError, StoreError
from .exporters import SQLiteSpanExporter
from .models import ActorType, ChainNode, ObjectType, Outcome, TraceEvent
from .processor import LedgerSpanProcessor, LedgerStats
from .redaction import Redaction
from .storage import Durability, EventFilters, Ledger, Order, default_target, open_ledger
from .storage.http import HTTPLedger
from .storage.outbox import SHIP_TO_ENV_VAR, SHIP_TOKEN_ENV_VAR, DestinationStatus, Outbox

if TYPE_CHECKING:
    from .checkpoint import BackgroundCheckpointer
    from .integrity import Checkpoint, ErasureReport, VerifyReport
    from .shipping import BackgroundShipper

__all__ = ["DEFAULT_SHUTDOWN_TIMEOUT_S", "SHUTDOWN_TIMEOUT_ENV", "DecisionTraceClient"]

_logger = logging.getLogger(__name__)

INSTRUMENTATION_NAME = "decision_trace"

DEFAULT_DURABILITY: Durability = "batch"
"""Why batch: ``record()`` then never waits for the disk (about 0.1 ms in the
caller's thread; see benchmarks/RESULTS.md), so it can sit on a checkout path; the
background writer commits within 0.2 s, every exit path (normal exit, ``sys.exit``, an
uncaught exception, SIGTERM, SIGHUP) flushes within the shutdown deadline, and the queue
applies back-pressure instead of dropping. Choose ``"sync"`` when an event must be on
disk before ``record()`` returns, e.g. to survive ``kill -9`` or ``os._exit()``."""

_EVENT_ID = re.compile(r"^[0-9a-fA-F]{16}$")
_RECENT_EVENTS = 10_000


def _shipping_target(to: str | None, token: str | None) -> tuple[str, str | None] | None:
    """``(destination URL, token)`` of in-process shipping from the arguments or the
    environment, the URL checked and made the destination's key (``destination_url``);
    None when the client does not ship."""
    to = to if to is not None else (os.environ.get(SHIP_TO_ENV_VAR) or None)
    if to is None:
        return None
    if token is None:
        token = os.environ.get(SHIP_TOKEN_ENV_VAR) or None
    elif not isinstance(token, str):
        raise InvalidInputError("ship_token", f"must be a string, got {type(token).__name__}")
    from .shipping import destination_url  # lazily: see _start_shipping

    return destination_url(to), token  # a bad URL raises InvalidInputError naming ship_to


def _millis_until(deadline: float) -> int:
    return max(0, int((deadline - time.monotonic()) * 1000))


@dataclass(frozen=True)
class _ClientRecorder:
    """The :class:`~decision_trace.builder.Recorder` a client gives its builders."""

    tracer: Tracer
    redaction: Redaction | None
    remember: Callable[[Span], str]
    parent_context: Callable[[str], SpanContext]


class DecisionTraceClient:
    """Record business decisions as OpenTelemetry spans and query them back.

    Example::

        client = DecisionTraceClient(db_path="traces.db")
        event_id = client.trace("order.refunded", "Refund issued") \\
            .by_user("agent-7", "Sam", role="support") \\
            .affecting_order("ord-1", {"status": "refunded"}) \\
            .because("Item arrived broken") \\
            .record()
        client.get_event(event_id).decision.reasoning   # 'Item arrived broken'

    Args:
        db_path: The SQLite file. Default ``$DECISION_TRACE_DB``, else
            ``$XDG_DATA_HOME/decision-trace/traces.db``, else
            ``~/.local/share/decision-trace/traces.db``. Folders are created.
        durability: ``"batch"`` (default; see ``DEFAULT_DURABILITY``) or ``"sync"``
            (``record()`` returns after the event is committed).
        service_name: ``service.name`` of the spans; default ``$OTEL_SERVICE_NAME``.
        otlp_endpoint: Send decision spans to this OTLP collector too. Without it, OTLP
            export is on only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
            ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set. Protocol, headers, TLS and
            timeout come from the standard ``OTEL_EXPORTER_OTLP_*`` variables. Only
            sampled decisions are exported (see :class:`~decision_trace._otel.LedgerSampler`); with
            ``OTEL_SDK_DISABLED=true`` OTLP export is off, the ledger is not.
        exporters: More span exporters to send decision spans to (batched).
        max_queue_size: Batch mode: events held in memory before ``record()`` waits.
        redact: Hash (keyed) or drop personal fields (e-mail by default) before they
            enter a span, so neither the ledger nor OTLP sees them; see
            :class:`~decision_trace.redaction.Redaction`.
        shutdown_timeout_s: The deadline of ``close()`` and of the exit, SIGTERM and
            SIGHUP hooks for this client, whatever a collector does: the ledger is written
            first, exporters get what is left, and whatever is not delivered by then is
            counted in ``stats()`` and logged. Default ``$DECISION_TRACE_SHUTDOWN_TIMEOUT``,
            else 10 s.
        ship_to: Ship every event of the (local SQLite) ledger to this OTLP/HTTP
            endpoint, such as the team's ``decision-trace serve``, from a background
            thread that reads the ledger (docs/shipping.md): at least once, in commit
            order, resumed after any outage or restart. Default
            ``$DECISION_TRACE_SHIP_TO``; unset means no shipping. ``close()`` ships what
            it can within its deadline and leaves the rest for the next start.
        ship_token: Bearer token of ``ship_to``; default ``$DECISION_TRACE_SHIP_TOKEN``.
        checkpoint_key: Write signed checkpoints of the ledger's chain with this private
            key (``decision-trace keygen``; needs the ``[audit]`` extra), from a
            background thread, and a last one at ``close()`` (docs/proving.md).
        checkpoint_dir: Where checkpoints go; default ``<ledger file>.checkpoints``
            beside an SQLite ledger (required for a ledger named by URL). Copy them
            somewhere the ledger's writers cannot change.
        checkpoint_every: Write one once this many more events were written (default
            10,000 when ``checkpoint_interval_s`` is not given either).
        checkpoint_interval_s: Write one when this many seconds passed with events
            written (default 3600 when ``checkpoint_every`` is not given either).

    A client opened on the ``http(s)://`` URL of a ledger service (``decision-trace
    serve``) is read-only: its query methods read the service, and ``trace()`` and
    ``span()`` raise :class:`~decision_trace.errors.StoreError`, because events reach a
    service over OTLP or by shipping, never through its read API. To record and send to
    the service, open the client on a local ledger and pass the service as
    ``otlp_endpoint=``.

    A client is held (and flushed at exit) until ``close()``, even when the application
    keeps no reference to it.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str] | None = None,
        *,
        durability: Durability = DEFAULT_DURABILITY,
        service_name: str | None = None,
        otlp_endpoint: str | None = None,
        exporters: Iterable[SpanExporter] = (),
        max_queue_size: int = 20_000,
        redact: Redaction | None = None,
        shutdown_timeout_s: float | None = None,
        ship_to: str | None = None,
        ship_token: str | None = None,
        checkpoint_key: str | os.PathLike[str] | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        checkpoint_every: int | None = None,
        checkpoint_interval_s: float | None = None,
    ) -> None:
        if durability not in ("sync", "batch"):
            raise InvalidInputError("durability", f"must be 'sync' or 'batch', got {durability!r}")
        if service_name is not None and not isinstance(service_name, str):
            raise InvalidInputError(
                "service_name", f"must be a string, got {type(service_name).__name__}"
            )
        if redact is not None and not isinstance(redact, Redaction):
            raise InvalidInputError("redact", f"must be a Redaction, got {type(redact).__name__}")
        self._redaction = redact
        self.shutdown_timeout_s = _shutdown_timeout(shutdown_timeout_s)
        self.durability: Durability = durability
        target = db_path if db_path is not None else default_target()
        ship = _shipping_target(ship_to, ship_token)
        self._storage: Ledger = open_ledger(target, durability=durability)
        if ship is not None and not isinstance(self._storage, Outbox):
            location = self._storage.location
            self._storage.close()
            raise InvalidInputError(
                "ship_to",
                f"only a local SQLite ledger ships; this client's ledger is {location} "
                "(send to the service with otlp_endpoint= instead, or record into a local "
                "file and ship that)",
            )
        self._read_only = isinstance(self._storage, HTTPLedger)
        self._exporter = SQLiteSpanExporter(ledger=self._storage)
        self._ledger = LedgerSpanProcessor(
            self._exporter, durability=durability, max_queue_size=max_queue_size
        )
        self._ledger.shutdown_timeout_s = self.shutdown_timeout_s
        # service.name (service_name= or OTEL_SERVICE_NAME) is plain text like any other:
        # a lone surrogate, which no row or OTLP request can hold, becomes U+FFFD.
        resource = Resource.create({keys.SERVICE_NAME: service_name} if service_name else {})
        name = resource.attributes.get(keys.SERVICE_NAME)
        if isinstance(name, str) and name != _models.clean_text(name):
            resource = resource.merge(Resource({keys.SERVICE_NAME: _models.clean_text(name)}))
        sampler = LedgerSampler()
        self._provider = TracerProvider(
            sampler=sampler,
            resource=resource,
            span_limits=NO_LIMITS,
            shutdown_on_exit=False,
            id_generator=OsRandomIdGenerator(),
        )
        sampler._own_provider = weakref.ref(self._provider)
        # OTEL_SDK_DISABLED=true turns telemetry off, not the audit trail: the SDK would
        # hand out a no-op tracer and silently lose every decision, so our provider stays
        # on for the ledger, and only OTLP export is switched off.
        sdk_disabled = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
        enable_provider(self._provider)
        self._provider.add_span_processor(self._ledger)
        extra = list(exporters)
        otlp = None if sdk_disabled else otlp_exporter(otlp_endpoint)
        if otlp is not None:
            extra.append(otlp)
        self._exports = [
            ExportProcessor(exporter, shutdown_timeout_s=self.shutdown_timeout_s)
            for exporter in extra
        ]
        for export in self._exports:
            self._provider.add_span_processor(export)
        self._tracer = self._provider.get_tracer(INSTRUMENTATION_NAME)
        self._recorder = _ClientRecorder(
            self._tracer, self._redaction, self._remember, self._parent_context
        )
        self._recent: OrderedDict[str, SpanContext] = OrderedDict()
        self._recent_lock = threading.Lock()
        self._closed = False
        self._shipper = self._start_shipping(ship)
        self._checkpointer: BackgroundCheckpointer | None = None
        if checkpoint_key is not None:
            try:
                self._checkpointer = self._start_checkpoints(
                    checkpoint_key, checkpoint_dir, checkpoint_every, checkpoint_interval_s
                )
            except BaseException:
                self.close()
                raise
        _lifecycle.register(self)

    def _start_checkpoints(
        self,
        key: str | os.PathLike[str],
        folder: str | os.PathLike[str] | None,
        every: int | None,
        interval_s: float | None,
    ) -> BackgroundCheckpointer:
        from pathlib import Path

        from .checkpoint import BackgroundCheckpointer, load_private_key
        from .storage import is_url

        if every is not None and (isinstance(every, bool) or not isinstance(every, int)):
            raise InvalidInputError("checkpoint_every", f"must be an int, got {every!r}")
        if every is not None and every < 1:
            raise InvalidInputError("checkpoint_every", f"must be at least 1, got {every}")
        if interval_s is not None and not interval_s > 0:
            raise InvalidInputError(
                "checkpoint_interval_s", f"must be a positive number, got {interval_s!r}"
            )
        if every is None and interval_s is None:
            every, interval_s = 10_000, 3600.0
        if folder is None:
            if is_url(self._storage.location):
                raise InvalidInputError(
                    "checkpoint_dir", "is required when the ledger is named by URL"
                )
            folder = f"{self._storage.location}.checkpoints"
        return BackgroundCheckpointer(
            self._storage,
            load_private_key(key),
            Path(folder).expanduser(),
            lambda: self._ledger.stats().written,
            every=every,
            interval_s=interval_s,
        )

    def _start_shipping(self, ship: tuple[str, str | None] | None) -> BackgroundShipper | None:
        if ship is None:
            return None
        from .shipping import BackgroundShipper

        if isinstance(self._storage, Outbox):
            # Known to the ledger from the start: stats list it, and prune keeps what it
            # lacks, before the thread's first look.
            self._storage.register_destination(ship[0])
        return BackgroundShipper(self._storage, ship[0], token=ship[1])

    @property
    def db_path(self) -> str:
        """Where the ledger is: the SQLite file's path, or the URL it was opened on."""
        return self._storage.location

    def _check_writable(self) -> None:
        if self._read_only:
            raise StoreError(
                f"this client reads the ledger service {self._storage.location} and cannot "
                "record: open the client on a local ledger (db_path=a file or postgresql:// "
                f"URL) and send events to the service with otlp_endpoint="
                f"'{self._storage.location}', or ship them (decision-trace ship)"
            )

    @property
    def tracer_provider(self) -> TracerProvider:
        """decision-trace's own provider (for adding span processors)."""
        return self._provider

    # -- recording ---------------------------------------------------------------------

    def trace(self, event_type: str, description: str = "") -> TraceBuilder:
        """Start building an event; ``record()`` records it and returns its id.

        Args:
            event_type: What happened, ``noun.verb`` style (``"order.cancelled"``).
            description: A sentence for humans.

        Raises:
            StoreError: the client was opened on a ledger service's ``http(s)://`` URL,
                which is read-only.
        """
        self._check_writable()
        return TraceBuilder(self._recorder, event_type, description)

    def span(self, event_type: str, description: str = "") -> TraceBuilder:
        """A context manager recording an event that lasts as long as the block.

        Events recorded inside the block become its children. An exception marks the
        event failed, is recorded on the span, and propagates::

            with client.span("report.generation", "Monthly report") as trace:
                trace.by_compute("report-service", "Report Generator")

        Raises:
            StoreError: the client is read-only (see :meth:`trace`).
        """
        self._check_writable()
        return TraceBuilder(self._recorder, event_type, description, as_span=True)

    def _remember(self, span: Span) -> str:
        context = span.get_span_context()
        event_id = record.span_id_hex(context.span_id)
        with self._recent_lock:
            self._recent[event_id] = context
            if len(self._recent) > _RECENT_EVENTS:
                self._recent.popitem(last=False)
        return event_id

    def _parent_context(self, parent: str) -> SpanContext:
        if not isinstance(parent, str):
            raise InvalidInputError(
                "parent", f"must be an event id or traceparent, got {type(parent).__name__}"
            )
        if _EVENT_ID.match(parent):
            event_id = parent.lower()
            with self._recent_lock:
                known = self._recent.get(event_id)
            if known is not None:
                return SpanContext(
                    known.trace_id,
                    known.span_id,
                    is_remote=False,
                    trace_flags=known.trace_flags,
                    trace_state=known.trace_state,
                )
            trace_id = self._storage.trace_id_of(event_id)
            if trace_id is None:
                self._read_your_writes()
                trace_id = self._storage.trace_id_of(event_id)
            if trace_id is None:
                raise EventNotFoundError(parent)
            return SpanContext(
                int(trace_id, 16),
                int(event_id, 16),
                is_remote=False,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
        carrier = {"traceparent": parent.strip()}
        span_context = otel_trace.get_current_span(
            TraceContextTextMapPropagator().extract(carrier)
        ).get_span_context()
        if not span_context.is_valid:
            raise InvalidInputError(
                "parent",
                f"must be an event id (16 hex characters) or a W3C traceparent, got {parent!r}",
            )
        return span_context

    def current_traceparent(self) -> str | None:
        """The W3C ``traceparent`` of the current span, to hand to a downstream service.

        Inside ``with client.span(...)`` it names that span; otherwise the application's
        current span, or None when there is none.
        """
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        return carrier.get("traceparent")

    # -- reading -----------------------------------------------------------------------

    def _read_your_writes(self) -> None:
        if self.durability == "batch" and not self._closed:
            self._ledger.wait_until_written()

    def query(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        event_types: Iterable[str] | str | None = None,
        actor_types: Iterable[ActorType | str] | ActorType | str | None = None,
        actor_ids: Iterable[str] | str | None = None,
        object_types: Iterable[ObjectType | str] | ObjectType | str | None = None,
        object_ids: Iterable[str] | str | None = None,
        tags: Iterable[str] | str | None = None,
        outcome: Outcome | str | None = None,
        correlation_id: str | None = None,
        limit: int | None = 100,
        offset: int = 0,
        order: Order = "desc",
    ) -> list[TraceEvent]:
        """Events matching every filter given, newest first by default.

        Each list filter matches any of its values; a single string counts as a list of
        one. ``object_types`` and ``object_ids`` together match an event that touched an
        object of one of those types with one of those ids.

        Args:
            start: Events at or after this time. A naive datetime is taken as UTC.
            end: Events before this time. A naive datetime is taken as UTC.
            event_types: Event types, e.g. ``["order.created"]``.
            actor_types: Actor types (``ActorType`` or values like ``"ai_agent"``).
            actor_ids: Actor ids.
            object_types: Types of affected objects.
            object_ids: External ids of affected objects.
            tags: Events carrying any of these tags.
            outcome: ``"success"``, ``"failure"`` or ``"pending"``.
            correlation_id: The trace id.
            limit: At most this many events (default 100); None for all.
            offset: Skip this many first.
            order: ``"desc"`` (newest first) or ``"asc"``.
        """
        filters = EventFilters.build(
            start=start,
            end=end,
            event_types=event_types,
            actor_types=actor_types,
            actor_ids=actor_ids,
            object_types=object_types,
            object_ids=object_ids,
            tags=tags,
            outcome=outcome,
            correlation_id=correlation_id,
        )
        self._read_your_writes()
        return self._storage.query(filters, limit=limit, offset=offset, order=order)

    def search(self, text: str, limit: int | None = 50) -> list[TraceEvent]:
        """Full-text search over descriptions, reasoning and context, newest first.

        Every word must match (prefixes do not). Any text is safe: quotes, ``AND``,
        ``*`` or ``-`` are searched for as words, never parsed as syntax.
        """
        self._read_your_writes()
        return self._storage.search(text, limit=limit)

    def get_event(self, event_id: str) -> TraceEvent | None:
        """The event with this id, or None."""
        self._read_your_writes()
        return self._storage.get_event(event_id)

    def get_chain(self, event_id: str) -> ChainNode:
        """The chain an event belongs to: its topmost stored ancestor and every
        descendant, as a tree of :class:`~decision_trace.models.ChainNode`.

        Raises:
            EventNotFoundError: the event is not in the store.
        """
        self._read_your_writes()
        return self._storage.get_chain(event_id)

    def get_object_history(
        self,
        external_id: str,
        object_type: ObjectType | str | None = None,
        *,
        limit: int | None = None,
    ) -> list[TraceEvent]:
        """Every event that touched an object, oldest first."""
        self._read_your_writes()
        return self._storage.object_history(external_id, object_type, limit=limit)

    def shipping_status(self) -> list[DestinationStatus]:
        """Per shipping destination this ledger knows: how far it has acknowledged, the
        backlog, the age of the oldest event waiting, refusals and the last error (what
        ``decision-trace stats`` shows). Empty for a ledger that does not ship."""
        if isinstance(self._storage, Outbox):
            return self._storage.outbox_status()
        return []

    def verify(self, checkpoints: Iterable[Checkpoint] = ()) -> VerifyReport:
        """Write what was recorded, then recompute the ledger's tamper-evident chain
        (``decision-trace verify``; docs/proving.md).

        Args:
            checkpoints: Checkpoints the ledger must still reach, already read and
                authenticated (:func:`decision_trace.checkpoint.read_checkpoint_file`).
        """
        self.flush()
        return self._storage.verify(checkpoints=tuple(checkpoints))

    def erase(
        self,
        subject: str,
        *,
        reason: str,
        requested_by: str,
        dry_run: bool = False,
        compact: bool = True,
    ) -> ErasureReport:
        """Erase a subject's personal data from the ledger, keeping the audit skeleton
        (``decision-trace erase``; docs/proving.md). Events recorded before the call are
        written first, so they are erased too.

        Args:
            subject: ``"user:ID"`` (the events a user acted in) or an object type and id
                (``"customer:c-42"``: the events that touched it).
            reason: Why (kept in the ledger's chain).
            requested_by: Who asked (kept likewise).
            dry_run: Only find the events.
            compact: Afterwards compact the ledger, so the bytes leave the storage.

        Raises:
            InvalidInputError: a malformed subject, or no reason or requester.
        """
        from .integrity import parse_subject

        subject_type, subject_id = parse_subject(subject)
        self.flush()
        report = self._storage.erase(
            subject_type, subject_id, reason=reason, requested_by=requested_by, dry_run=dry_run
        )
        if compact and report.events and not dry_run:
            self._storage.compact()
        return report

    def stats(self) -> LedgerStats:
        """Counters of recorded, written, failed and queued events in this process, and
        per exporter (``exporters``) of spans exported, failed and dropped."""
        ledger = self._ledger.stats()
        return dataclasses.replace(
            ledger, exporters=tuple(export.stats() for export in self._exports)
        )

    # -- lifecycle ---------------------------------------------------------------------

    def _other_processors(self) -> list[SpanProcessor]:
        """Span processors the application added to :attr:`tracer_provider`."""
        multi = getattr(self._provider, "_active_span_processor", None)
        ours: set[int] = {id(self._ledger), *(id(export) for export in self._exports)}
        return [p for p in getattr(multi, "_span_processors", ()) if id(p) not in ours]

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Write everything recorded so far to the ledger, then deliver it to every
        exporter, all within ``timeout_s``.

        Returns:
            True only if every event reached the ledger and every exporter (OTLP and
            ``exporters=``) accepted every span; False on a timeout, a failed write, or a
            span an exporter failed, refused or dropped since the previous flush (each
            failure is reported once). ``stats()`` says which.
        """
        deadline = time.monotonic() + max(0.0, timeout_s)
        self._install_signal_hooks()
        ok = self._ledger.force_flush(_millis_until(deadline))
        for export in self._exports:
            export.request_flush()
        for export in self._exports:
            ok = export.force_flush(_millis_until(deadline)) and ok
        for processor in self._other_processors():
            ok = bool(processor.force_flush(_millis_until(deadline))) and ok
        return ok

    def close(self, timeout_s: float | None = None) -> None:
        """Flush and release everything, within ``timeout_s`` (default
        ``shutdown_timeout_s``): the ledger first, then the exporters. What does not make
        it in time is logged with its count and counted in ``stats()``. Idempotent; also
        runs at interpreter exit, SIGTERM and SIGHUP."""
        if self._closed:
            return
        self._install_signal_hooks()
        timeout = self.shutdown_timeout_s if timeout_s is None else _shutdown_timeout(timeout_s)
        deadline = time.monotonic() + timeout
        try:
            self._close_ledger(deadline)
            self._close_checkpointer(deadline)
            self._close_shipper(deadline)
            self._close_exporters(deadline)
        finally:
            self._release(deadline)
            _lifecycle.unregister(self)

    def _install_signal_hooks(self) -> None:
        _lifecycle.install_signal_hooks()

    def _close_ledger(self, deadline: float) -> None:
        self._ledger.close_within(deadline)

    def _close_checkpointer(self, deadline: float) -> None:
        checkpointer = getattr(self, "_checkpointer", None)
        if checkpointer is not None:
            checkpointer.close(max(0.0, deadline - time.monotonic()))

    def _close_shipper(self, deadline: float) -> None:
        if self._shipper is None:
            return
        # What the ledger committed ships now, within the deadline (half of what is left
        # when OTLP exporters are still to be flushed); the rest ships at the next start.
        left = max(0.0, deadline - time.monotonic() - 0.1)
        self._shipper.close(left / 2 if self._exports else left)

    def _close_exporters(self, deadline: float) -> None:
        for export in self._exports:
            export.request_flush()
        for export in self._exports:
            export.close_within(deadline)
        others = self._other_processors()
        if others:
            # The application's processors get what is left; a hung one is not waited for.
            run_bounded(self._provider.shutdown, deadline - time.monotonic(), "provider shutdown")

    def _release(self, deadline: float) -> None:
        if self._closed:
            return
        self._closed = True
        if self._ledger.stats().queued:
            # The writer is still in a write (holding the store): close once it is done,
            # without waiting past the deadline.
            run_bounded(self._storage.close, deadline - time.monotonic(), "store close")
        else:
            self._storage.close()

    def _after_fork_in_child(self) -> None:
        # A lock another thread held at fork() would stay held forever in the child.
        self._recent_lock = threading.Lock()

    def __enter__(self) -> DecisionTraceClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


_lifecycle.install_process_hooks()
