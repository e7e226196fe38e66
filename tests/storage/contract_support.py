"""What the storage contract tests share: the events every backend is given."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from decision_trace.record import EventRecord

BASE = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
"""When the first recorded event happened."""


@dataclass(frozen=True)
class Recorded:
    """Events recorded through the real client, decoded into the rows a ledger stores."""

    records: list[EventRecord]
    ids: dict[str, str]  # a name given in the test -> event id
