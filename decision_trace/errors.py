"""Errors raised by decision-trace.

Every error derives from one base class, so ``except DecisionTraceError`` catches them all::

    DecisionTraceError
    ├── InvalidInputError      bad input at the call that made it (also a ValueError)
    ├── EventNotFoundError     an event id that the store does not hold (also a KeyError)
    ├── StoreError             the store cannot be opened, read or written
    │   ├── SchemaVersionError the file was written by a newer decision-trace
    │   ├── RejectedRecordsError  some records of a write cannot be stored (the rest were)
    │   └── UnshippedEventsError  prune would delete events a destination has not
    │                             acknowledged (shipping, docs/shipping.md)
    └── CheckpointError        a checkpoint or key file cannot be read, written or
                               verified (decision_trace.checkpoint)

The export thread never raises into the application: failures there are logged and
counted (see ``DecisionTraceClient.stats``), and ``flush()`` reports them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

__all__ = [
    "CheckpointError",
    "DecisionTraceError",
    "EventNotFoundError",
    "InvalidInputError",
    "RejectedRecordsError",
    "SchemaVersionError",
    "StoreError",
    "UnshippedEventsError",
]


class DecisionTraceError(Exception):
    """Base class of every error decision-trace raises."""


class InvalidInputError(DecisionTraceError, ValueError):
    """Raised when a value given to the builder, a model or a query is invalid.

    The message names the field, for example ``confidence: must be between 0 and 1, got 1.5``.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class EventNotFoundError(DecisionTraceError, KeyError):
    """Raised when an event id (for ``child_of()`` or ``get_chain()``) is not known."""

    def __init__(self, event_id: str) -> None:
        self.event_id = event_id
        super().__init__(event_id)

    def __str__(self) -> str:
        return f"no event with id {self.event_id!r} in this process or in the store"


class StoreError(DecisionTraceError):
    """Raised when the SQLite store cannot be opened, read or written."""


class SchemaVersionError(StoreError):
    """Raised when the database was written by a newer version of decision-trace."""


class RejectedRecordsError(StoreError):
    """Raised by a ledger's ``write`` when some records of the batch cannot be stored
    because of what they hold (the others were written): retrying them cannot help.

    Attributes:
        written: How many records of the batch were written.
        rejected: The ids of the records that were not.
    """

    def __init__(
        self, location: str | os.PathLike[str], written: int, rejected: Sequence[tuple[str, str]]
    ) -> None:
        self.written = written
        self.rejected = tuple(event_id for event_id, _ in rejected)
        super().__init__(
            f"cannot store {len(rejected)} event(s) in {os.fspath(location)} (first: "
            f"{rejected[0][0]}: {rejected[0][1]}); {written} other(s) written"
        )


class UnshippedEventsError(StoreError):
    """Raised by ``prune`` when it would delete events that a shipping destination has
    not acknowledged yet (the local ledger is the outbox of the team ledger; see
    docs/shipping.md). Nothing was deleted; ``prune(..., force=True)`` deletes them.

    Attributes:
        unshipped: How many of the events to delete each destination still lacks, by
            destination.
    """

    def __init__(self, location: str | os.PathLike[str], unshipped: dict[str, int]) -> None:
        self.unshipped = dict(unshipped)
        listed = ", ".join(
            f"{count} not yet acknowledged by {dest}" for dest, count in unshipped.items()
        )
        super().__init__(
            f"refusing to prune {os.fspath(location)}: of the events to delete, {listed}; "
            "ship them first (decision-trace ship), or prune with --force (force=True) to "
            "delete them anyway"
        )


class CheckpointError(DecisionTraceError):
    """A checkpoint or key file cannot be read, written or verified."""
