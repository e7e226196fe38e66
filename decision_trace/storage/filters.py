"""``EventFilters``: what a query asks for, as plain validated values (no SQL).

Every backend turns the same :class:`EventFilters` into its own query language, so the
client, the CLI and a server validate a user's filters once, the same way, whatever
ledger answers them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from ..errors import InvalidInputError
from ..models import ActorType, ObjectType, Outcome, clean_text
from ..record import epoch_ns

__all__ = ["EventFilters", "Order"]

Order = Literal["desc", "asc"]
"""``"desc"``: newest first; ``"asc"``: oldest first."""


def _as_list(value: Any, field: str) -> list[Any] | None:
    """None means no filter; a single string is a one-element list."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, Iterable):
        raise InvalidInputError(field, f"must be a list, got {type(value).__name__}")
    return list(value)


def _strings(value: Any, field: str) -> tuple[str, ...] | None:
    items = _as_list(value, field)
    if items is None:
        return None
    for item in items:
        if not isinstance(item, str):
            raise InvalidInputError(field, f"must hold strings, got {item!r}")
    return tuple(clean_text(item) for item in items)


@dataclass(frozen=True)
class EventFilters:
    """Validated filters of a query; every field None means "no filter on this".

    Build it with :meth:`build`, which takes what :meth:`DecisionTraceClient.query`
    takes. A tuple field matches any of its values.

    Attributes:
        start_ns: Events that started at or after this (nanoseconds since the epoch; it
            may lie outside what a ledger can store: backends clamp it).
        end_ns: Events that started before this (likewise).
        event_types: Event types.
        actor_types: Actor type values (``"ai_agent"``...).
        actor_ids: Actor ids.
        object_types: Object type values of an affected object.
        object_ids: External ids of an affected object (with ``object_types``: the same
            object must match both).
        tags: Events carrying any of these tags.
        outcome: ``"success"``, ``"failure"`` or ``"pending"``.
        correlation_id: The trace id (lowercase hex).
    """

    start_ns: int | None = None
    end_ns: int | None = None
    event_types: tuple[str, ...] | None = None
    actor_types: tuple[str, ...] | None = None
    actor_ids: tuple[str, ...] | None = None
    object_types: tuple[str, ...] | None = None
    object_ids: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None
    outcome: str | None = None
    correlation_id: str | None = None

    @classmethod
    def build(
        cls,
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
    ) -> EventFilters:
        """Validate ``query()``'s arguments (see :meth:`DecisionTraceClient.query`).

        Raises:
            InvalidInputError: a value of the wrong type or an unknown enum value,
                naming the argument.
        """
        actor_type_list = _as_list(
            [actor_types] if isinstance(actor_types, ActorType) else actor_types, "actor_types"
        )
        object_type_list = _as_list(
            [object_types] if isinstance(object_types, ObjectType) else object_types,
            "object_types",
        )
        if correlation_id is not None and not isinstance(correlation_id, str):
            raise InvalidInputError("correlation_id", "must be a string")
        return cls(
            start_ns=epoch_ns(start, "start") if start is not None else None,
            end_ns=epoch_ns(end, "end") if end is not None else None,
            event_types=_strings(event_types, "event_types"),
            actor_types=None
            if actor_type_list is None
            else tuple(ActorType.parse(a, "actor_types").value for a in actor_type_list),
            actor_ids=_strings(actor_ids, "actor_ids"),
            object_types=None
            if object_type_list is None
            else tuple(ObjectType.parse(o, "object_types").value for o in object_type_list),
            object_ids=_strings(object_ids, "object_ids"),
            tags=_strings(tags, "tags"),
            outcome=None if outcome is None else Outcome.parse(outcome, "outcome").value,
            correlation_id=None if correlation_id is None else clean_text(correlation_id.lower()),
        )
