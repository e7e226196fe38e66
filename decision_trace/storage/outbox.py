"""The outbox side of a ledger: how far each shipping destination has acknowledged.

A ledger that ships (``decision-trace ship``, ``DecisionTraceClient(ship_to=...)``)
keeps, in itself and per destination, the position of the last event the destination
acknowledged, how many it refused and why, and the last error met. Positions are the
ledger's own row numbers in commit order (:meth:`~decision_trace.storage.Ledger.iter_records`),
so an event written late with an old timestamp is still shipped.

Only the SQLite ledger is an outbox (:class:`Outbox`); the PostgreSQL ledger is a
destination (its row numbers are drawn from a sequence, which is not commit order under
concurrent writers, so they cannot serve as a high-water mark).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["SHIP_TOKEN_ENV_VAR", "SHIP_TO_ENV_VAR", "DestinationStatus", "Outbox", "Rejection"]

SHIP_TO_ENV_VAR = "DECISION_TRACE_SHIP_TO"
"""Environment variable naming where a client ships its ledger (``ship_to``)."""
SHIP_TOKEN_ENV_VAR = "DECISION_TRACE_SHIP_TOKEN"
"""Environment variable holding the bearer token of that destination (``ship_token``)."""


@dataclass(frozen=True)
class Rejection:
    """One event a destination refused: it is never sent again.

    Attributes:
        position: The event's position in the local ledger.
        event_id: The event's id.
        message: Why, as the destination said it.
    """

    position: int
    event_id: str
    message: str


@dataclass(frozen=True)
class DestinationStatus:
    """How far one destination has come (``decision-trace stats``).

    Attributes:
        destination: The destination's OTLP/HTTP URL.
        position: The last position acknowledged (0: none yet).
        shipped: Events acknowledged over the ledger's life (stored or refused).
        rejected: Events the destination refused.
        backlog: Events stored past ``position``, not yet acknowledged.
        oldest_unshipped_ns: Start time of the first event not yet acknowledged (in
            commit order), or None when the backlog is empty.
        last_error: The last error met shipping there, cleared by the next success.
        last_error_ns: When it was met.
        updated_ns: When the destination last acknowledged (or was registered).
    """

    destination: str
    position: int
    shipped: int
    rejected: int
    backlog: int
    oldest_unshipped_ns: int | None
    last_error: str | None
    last_error_ns: int | None
    updated_ns: int


@runtime_checkable
class Outbox(Protocol):
    """A ledger that can ship: it remembers, per destination, what was acknowledged."""

    def register_destination(self, destination: str) -> int:
        """Make ``destination`` known (``prune`` then keeps what it lacks); return its
        acknowledged position (0 for a new one)."""
        ...

    def acknowledge(
        self, destination: str, position: int, *, shipped: int, rejected: Sequence[Rejection] = ()
    ) -> None:
        """Move ``destination``'s mark forward to ``position`` (never back), count
        ``shipped`` events, keep ``rejected`` with their reasons, clear the last error:
        one transaction."""
        ...

    def note_ship_error(self, destination: str, message: str) -> None:
        """Keep the last error met shipping to ``destination`` (for ``stats``)."""
        ...

    def outbox_status(self) -> list[DestinationStatus]:
        """Every known destination's status, by destination."""
        ...

    def rejections(self, destination: str, *, limit: int | None = 100) -> list[Rejection]:
        """The events ``destination`` refused, in position order."""
        ...

    def forget_destination(self, destination: str) -> bool:
        """Stop keeping events for ``destination`` (it was retired); False if unknown."""
        ...
