"""``SQLiteLedger``: the embedded, zero-setup backend (one SQLite file).

The schema, migrations and writes are in :mod:`decision_trace.store`, the read SQL in
:mod:`decision_trace.query`; this class is the :class:`~decision_trace.storage.Ledger`
face of the two.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Sequence
from pathlib import Path

from .. import query as q
from ..integrity import ChainState, Checkpoint, ErasureReport, VerifyReport, verify_entries
from ..models import ObjectType, TraceEvent
from ..record import EventRecord
from ..store import Durability, PruneReport, Store, check_integrity, compact
from .filters import EventFilters, Order
from .outbox import DestinationStatus, Rejection

__all__ = ["SQLiteLedger"]


class SQLiteLedger:
    """A :class:`~decision_trace.storage.Ledger` in one SQLite file, and an
    :class:`~decision_trace.storage.outbox.Outbox` (it can ship).

    Args:
        path: The file; created (0600, folders 0700) unless ``create`` is false.
        durability: ``"sync"`` or ``"batch"``; see :class:`~decision_trace.store.Store`.
        create: If false, a missing file is a :class:`StoreError`.
        read_only: Never create, migrate or write the file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "batch",
        create: bool = True,
        read_only: bool = False,
    ) -> None:
        self.store = Store(path, durability=durability, create=create, read_only=read_only)

    @classmethod
    def of_store(cls, store: Store) -> SQLiteLedger:
        """The ledger face of a store that is already open (closing it closes the store)."""
        ledger = cls.__new__(cls)
        ledger.store = store
        return ledger

    @property
    def path(self) -> Path:
        """The SQLite file."""
        return self.store.path

    @property
    def location(self) -> str:
        return str(self.store.path)

    def write(self, records: Sequence[EventRecord]) -> int:
        return self.store.write(records)

    def query(
        self,
        filters: EventFilters,
        *,
        limit: int | None = 100,
        offset: int = 0,
        order: Order = "desc",
    ) -> list[TraceEvent]:
        return q.query_events(
            self.store.read_connection(),
            q.QueryFilters.of(filters),
            limit=limit,
            offset=offset,
            order=order,
        )

    def iter_events(
        self, filters: EventFilters, *, order: Order = "asc"
    ) -> Generator[TraceEvent, None, None]:
        return q.iter_events(self.store.read_connection(), q.QueryFilters.of(filters), order=order)

    def iter_records(
        self, *, after: int = 0, batch_size: int = 500
    ) -> Generator[tuple[int, EventRecord], None, None]:
        return q.iter_records(self.store.read_connection(), after=after, batch_size=batch_size)

    def count(self, filters: EventFilters) -> int:
        return q.count_events(self.store.read_connection(), q.QueryFilters.of(filters))

    def search(self, text: str, *, limit: int | None = 50) -> list[TraceEvent]:
        return q.search_events(self.store.read_connection(), text, limit=limit)

    def iter_search(self, text: str) -> Generator[TraceEvent, None, None]:
        return q.iter_search(self.store.read_connection(), text)

    def get_event(self, event_id: str) -> TraceEvent | None:
        return q.get_event(self.store.read_connection(), event_id)

    def event_ids_with_prefix(self, prefix: str, *, limit: int | None = 10) -> list[str]:
        return q.event_ids_with_prefix(self.store.read_connection(), prefix, limit=limit)

    def object_types_of(self, external_id: str) -> list[ObjectType]:
        return q.object_types_of(self.store.read_connection(), external_id)

    def trace_id_of(self, event_id: str) -> str | None:
        return q.trace_id_of(self.store.read_connection(), event_id)

    def get_chain(self, event_id: str) -> q.ChainNode:
        return q.get_chain(self.store.read_connection(), event_id)

    def object_history(
        self,
        external_id: str,
        object_type: ObjectType | str | None = None,
        *,
        limit: int | None = None,
    ) -> list[TraceEvent]:
        return q.object_history(self.store.read_connection(), external_id, object_type, limit=limit)

    def iter_object_history(
        self, external_id: str, object_type: ObjectType | str | None = None
    ) -> Generator[TraceEvent, None, None]:
        return q.iter_object_history(self.store.read_connection(), external_id, object_type)

    def count_object_history(
        self, external_id: str, object_type: ObjectType | str | None = None
    ) -> int:
        return q.count_object_history(self.store.read_connection(), external_id, object_type)

    def summary(self, *, days: int | None = None) -> q.LedgerSummary:
        return q.summarize(self.store.read_connection(), days=days)

    def prune(
        self,
        older_than_ns: int,
        *,
        dry_run: bool = False,
        force: bool = False,
        keep_skeleton: bool = False,
    ) -> PruneReport:
        return self.store.prune(
            older_than_ns, dry_run=dry_run, force=force, keep_skeleton=keep_skeleton
        )

    # -- the chain ------------------------------------------------------------------------

    def chain_state(self) -> ChainState:
        return q.chain_state(self.store.read_connection())

    def verify(
        self,
        *,
        checkpoints: Sequence[Checkpoint] = (),
        max_problems: int = 100,
        progress: Callable[[int], object] | None = None,
    ) -> VerifyReport:
        conn = self.store.read_connection()
        chain = q.iter_chain(conn)
        try:
            return verify_entries(
                chain,
                q.chain_acts(conn),
                checkpoints=checkpoints,
                max_problems=max_problems,
                progress=progress,
            )
        finally:
            chain.close()

    def erase(
        self,
        subject_type: str,
        subject_id: str,
        *,
        reason: str,
        requested_by: str,
        dry_run: bool = False,
    ) -> ErasureReport:
        return self.store.erase(
            subject_type, subject_id, reason=reason, requested_by=requested_by, dry_run=dry_run
        )

    def size_bytes(self) -> tuple[int, int]:
        wal = Path(f"{self.store.path}-wal")
        return self.store.path.stat().st_size, wal.stat().st_size if wal.exists() else 0

    def confirm_writes(self) -> bool:
        return self.store.check_file()

    def check(self) -> list[str]:
        return check_integrity(self.store)

    def compact(self) -> bool:
        return compact(self.store)

    def close(self) -> None:
        self.store.close()

    # -- Outbox --------------------------------------------------------------------------

    def register_destination(self, destination: str) -> int:
        return self.store.register_destination(destination)

    def acknowledge(
        self, destination: str, position: int, *, shipped: int, rejected: Sequence[Rejection] = ()
    ) -> None:
        self.store.acknowledge(
            destination,
            position,
            shipped=shipped,
            rejected=[(r.position, r.event_id, r.message) for r in rejected],
        )

    def note_ship_error(self, destination: str, message: str) -> None:
        self.store.note_ship_error(destination, message)

    def outbox_status(self) -> list[DestinationStatus]:
        return q.outbox_status(self.store.read_connection())

    def rejections(self, destination: str, *, limit: int | None = 100) -> list[Rejection]:
        return q.rejections(self.store.read_connection(), destination, limit=limit)

    def forget_destination(self, destination: str) -> bool:
        return self.store.forget_destination(destination)
