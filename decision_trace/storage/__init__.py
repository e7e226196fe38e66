"""The storage seam: the :class:`Ledger` protocol and :func:`open_ledger`.

Everything that reads or writes events (the client, the span processor, the exporter,
the CLI) talks to a :class:`Ledger`, never to a database connection. A backend is a
class that satisfies the protocol and passes the contract suite in ``tests/storage/``.

Backends: SQLite (:class:`~decision_trace.storage.sqlite.SQLiteLedger`), chosen by a
file path, PostgreSQL (:class:`~decision_trace.storage.postgres.PostgresLedger`),
chosen by a ``postgresql://`` URL, and the read-only view of a ledger service
(:class:`~decision_trace.storage.http.HTTPLedger`), chosen by an ``http(s)://`` URL.
``open_ledger`` picks the backend from the one string a user gives (``--db``,
``DECISION_TRACE_DB``, ``DecisionTraceClient(db_path=...)``)::

    from decision_trace.storage import EventFilters, open_ledger

    ledger = open_ledger("traces.db")
    try:
        for event in ledger.query(EventFilters.build(event_types="order.refunded"), limit=5):
            print(event.id, event.decision.reasoning)
    finally:
        ledger.close()
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..errors import StoreError
from ..store import DB_ENV_VAR, Durability, default_db_path
from .filters import EventFilters, Order

if TYPE_CHECKING:
    from ..integrity import ChainState, Checkpoint, ErasureReport, VerifyReport
    from ..models import ObjectType, TraceEvent
    from ..query import ChainNode, LedgerSummary
    from ..record import EventRecord
    from ..store import PruneReport

__all__ = [
    "Durability",
    "EventFilters",
    "Ledger",
    "Order",
    "default_db_path",
    "default_target",
    "is_url",
    "open_ledger",
]


@runtime_checkable
class Ledger(Protocol):
    """One audit ledger, whatever stores it.

    Writes are idempotent on the event id: writing a record whose id is stored already
    stores nothing and is not an error. Reads return the models the write side takes.
    Iterators (``iter_*``) read in bounded batches; close them (``contextlib.closing``)
    when you stop early.
    """

    @property
    def location(self) -> str:
        """Where the ledger is (a path or a URL without credentials), for messages."""
        ...

    def write(self, records: Sequence[EventRecord]) -> int:
        """Store ``records`` in one transaction; return how many were new.

        Raises:
            RejectedRecordsError: some records cannot be stored because of what they
                hold; all the others were written.
            StoreError: nothing was written.
        """
        ...

    def query(
        self,
        filters: EventFilters,
        *,
        limit: int | None = 100,
        offset: int = 0,
        order: Order = "desc",
    ) -> list[TraceEvent]:
        """Events matching ``filters``, newest first by default."""
        ...

    def iter_events(
        self, filters: EventFilters, *, order: Order = "asc"
    ) -> Generator[TraceEvent, None, None]:
        """Every event matching ``filters``, streamed."""
        ...

    def iter_records(
        self, *, after: int = 0, batch_size: int = 500
    ) -> Generator[tuple[int, EventRecord], None, None]:
        """``(position, record)`` of every stored event past position ``after``, in the
        order the ledger stored them, each record as written (its JSON text as the ledger
        holds it): what ``decision-trace copy`` streams from one ledger to another.

        Positions are the ledger's own row numbers: increasing, not dense, and only
        comparable within one ledger.
        """
        ...

    def count(self, filters: EventFilters) -> int:
        """How many events match ``filters``."""
        ...

    def search(self, text: str, *, limit: int | None = 50) -> list[TraceEvent]:
        """Events whose description, reasoning or context contain every word of ``text``,
        most recently stored first. Any text is safe."""
        ...

    def iter_search(self, text: str) -> Generator[TraceEvent, None, None]:
        """:meth:`search` without a limit, streamed."""
        ...

    def get_event(self, event_id: str) -> TraceEvent | None:
        """The event with this id, or None."""
        ...

    def event_ids_with_prefix(self, prefix: str, *, limit: int | None = 10) -> list[str]:
        """The stored event ids that start with ``prefix`` (hex, any case), in id order,
        at most ``limit`` of them (what ``decision-trace show 3f2a`` resolves).

        Raises:
            InvalidInputError: ``prefix`` is not hex text.
        """
        ...

    def object_types_of(self, external_id: str) -> list[ObjectType]:
        """The types of the objects with this external id that some stored event
        touched, in the order of :class:`ObjectType` (what ``decision-trace why ord-1``
        resolves without a type)."""
        ...

    def trace_id_of(self, event_id: str) -> str | None:
        """The trace id of a stored event, or None."""
        ...

    def get_chain(self, event_id: str) -> ChainNode:
        """The tree containing ``event_id``: its topmost stored ancestor and all
        descendants.

        Raises:
            EventNotFoundError: no stored event has that id.
        """
        ...

    def object_history(
        self,
        external_id: str,
        object_type: ObjectType | str | None = None,
        *,
        limit: int | None = None,
    ) -> list[TraceEvent]:
        """Every event that touched the object, oldest first."""
        ...

    def iter_object_history(
        self, external_id: str, object_type: ObjectType | str | None = None
    ) -> Generator[TraceEvent, None, None]:
        """:meth:`object_history` without a limit, streamed."""
        ...

    def count_object_history(
        self, external_id: str, object_type: ObjectType | str | None = None
    ) -> int:
        """How many events touched the object."""
        ...

    def summary(self, *, days: int | None = None) -> LedgerSummary:
        """Counts by type, actor type, outcome and day (``decision-trace stats``)."""
        ...

    def prune(
        self,
        older_than_ns: int,
        *,
        dry_run: bool = False,
        force: bool = False,
        keep_skeleton: bool = False,
    ) -> PruneReport:
        """Delete events that started before ``older_than_ns`` (or only count them), and
        record the prune in the chain. With ``keep_skeleton``, remove only their
        payloads (as an erasure does), keeping what the chain proves of them.

        Raises:
            UnshippedEventsError: some of them a shipping destination has not
                acknowledged (only a ledger that ships), and ``force`` is false.
        """
        ...

    def chain_state(self) -> ChainState:
        """Where the tamper-evident chain stands: what a checkpoint signs
        (docs/proving.md)."""
        ...

    def verify(
        self,
        *,
        checkpoints: Sequence[Checkpoint] = (),
        max_problems: int = 100,
        progress: Callable[[int], object] | None = None,
    ) -> VerifyReport:
        """Recompute the chain over every stored event and act, and check it reaches
        each of ``checkpoints`` (whose signatures the caller has checked); ``progress``
        is called with the entries checked so far, now and then."""
        ...

    def erase(
        self,
        subject_type: str,
        subject_id: str,
        *,
        reason: str,
        requested_by: str,
        dry_run: bool = False,
    ) -> ErasureReport:
        """Remove the personal payload of every event involving a subject (``"user"``
        and a user actor's id, or an object type and id), keep their skeletons, and
        record the erasure in the chain. The bytes leave the storage at its next
        :meth:`compact`.

        Raises:
            InvalidInputError: an unknown subject type, or no reason or requester.
        """
        ...

    def size_bytes(self) -> tuple[int, int]:
        """``(data, log)``: bytes the ledger takes, and bytes of its write-ahead log not yet
        folded into the data (0 where the backend has none to report)."""
        ...

    def confirm_writes(self) -> bool:
        """False, once, if events this object wrote may no longer be in the ledger (an
        SQLite file deleted or replaced while open); True otherwise."""
        ...

    def check(self) -> list[str]:
        """The storage's own integrity checks; an empty list means sound."""
        ...

    def compact(self) -> bool:
        """Give back the space (and the bytes) of deleted events; False if it could not
        finish now (it is then finished later)."""
        ...

    def close(self) -> None:
        """Release every connection. Idempotent."""
        ...


_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

POSTGRES_SCHEMES = ("postgresql", "postgres")
"""URL schemes that name a PostgreSQL ledger."""

HTTP_SCHEMES = ("http", "https")
"""URL schemes that name a ledger service (``decision-trace serve``), read through its read
API (:class:`~decision_trace.storage.http.HTTPLedger`)."""


def is_url(target: str | os.PathLike[str]) -> bool:
    """Whether ``target`` names a ledger by URL (``scheme://...``) rather than by file path.

    A URL is given to its backend as it is: never expanded (``~``), resolved or checked
    for existence as a file would be.
    """
    return _URL.match(os.fspath(target)) is not None


def default_target() -> str:
    """The ledger used when none is given: ``$DECISION_TRACE_DB`` as it is when it holds a
    URL, else the default file path (:func:`default_db_path`) as a string.

    ``default_db_path`` alone would turn ``postgresql://host/db`` into the path
    ``postgresql:/host/db``; everything that opens "the default ledger" (the client, the
    exporter, the command line) goes through this function instead.
    """
    explicit = os.environ.get(DB_ENV_VAR)
    if explicit and is_url(explicit):
        return explicit
    return str(default_db_path())


def open_ledger(
    target: str | os.PathLike[str] | None = None,
    *,
    durability: Durability = "batch",
    create: bool = True,
    read_only: bool = False,
) -> Ledger:
    """Open the ledger that ``target`` names.

    Args:
        target: A file path (SQLite), a ``postgresql://`` / ``postgres://`` URL
            (PostgreSQL; needs the ``[postgres]`` extra), or the ``http://`` /
            ``https://`` URL of a ``decision-trace serve`` (read-only: its read API,
            with the token from ``$DECISION_TRACE_TOKEN``; the other arguments do not
            apply). None means the default ledger (:func:`default_target`:
            ``$DECISION_TRACE_DB``, else the default path).
        durability: For backends that write: ``"sync"`` or ``"batch"`` (see
            :class:`~decision_trace.store.Store`).
        create: If false, a missing ledger is an error instead of being created.
        read_only: Only read: never create, migrate or write (an evidence copy, a
            read-only mount); writing raises :class:`StoreError`.

    Raises:
        StoreError: the target cannot be opened, or names a kind of ledger this
            release does not have.
        SchemaVersionError: the ledger was written by a newer decision-trace.
    """
    from .sqlite import SQLiteLedger

    text = default_target() if target is None else os.fspath(target)
    match = _URL.match(text)
    if match is not None:
        scheme = match.group(1).lower()
        if scheme in HTTP_SCHEMES:
            from .http import HTTPLedger

            return HTTPLedger(text)
        if scheme not in POSTGRES_SCHEMES:
            raise StoreError(
                f"cannot open a {match.group(1)}:// ledger: give a file path (SQLite), a "
                "postgresql:// URL (PostgreSQL) or the http(s):// URL of a ledger service "
                "(decision-trace serve, read-only)"
            )
        try:
            from .postgres import PostgresLedger
        except ImportError as exc:
            raise StoreError(
                f"a {scheme}:// ledger needs the PostgreSQL extra: pip install "
                f"'decision-trace-otel[postgres]' ({exc})"
            ) from None
        return PostgresLedger(text, durability=durability, create=create, read_only=read_only)
    return SQLiteLedger(text, durability=durability, create=create, read_only=read_only)
