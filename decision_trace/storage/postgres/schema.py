"""The PostgreSQL ledger's schema: tables, migrations and monthly partitions.

Layout (schema version 2; version 2 adds the chain)::

    decision_trace_schema  one row: the schema version (migrations take an advisory lock)
    events                 one row per event; range-partitioned by start_ns, one partition
                           a calendar month (UTC) from 2000 to 2099, and one partition each
                           for everything before 2000 and from 2100 on; primary key
                           (id, start_ns), so writing the same span twice stores it once.
                           ``salt`` (hex) and ``payload`` (the exact text of
                           :func:`decision_trace.integrity.payload_bytes` the commitment
                           hashes: ``jsonb`` does not keep the bytes written) are NULL once
                           an erasure or ``prune --keep-skeleton`` removed the payload
    event_objects          one row per object an event touched, partitioned like events
    event_tags             one row per tag, partitioned like events
    chain                  the tamper-evident chain (docs/proving.md): one entry per event
                           (``event_seq`` names its row) and per act, by ``position``
                           (commit order; not partitioned, never pruned)
    ledger_meta            the ledger's id and its pseudonym key

Every partition of the three tables covers the same range and has the same suffix
(``events_p2026_12``, ``event_objects_p2026_12``...), so retention drops all three.

Text columns use the "C" collation: ordering and ranges compare code points, as SQLite
does. Btree entries are limited to about 2.7 kB, so the indexes over free text a user
chooses (event type, actor id, object id, tag) index its first :data:`KEY_CHARS`
characters, and queries compare both the prefix (for the index) and the whole value.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from dataclasses import dataclass

from ...record import MAX_NS, MIN_NS

__all__ = ["KEY_CHARS", "MIGRATIONS", "SCHEMA_VERSION", "Partition", "partition_of"]

KEY_CHARS = 300
"""Characters of a user-chosen value (event type, actor id, object id, tag) that its
index holds: two of them, 4 bytes a character at most, fit one btree entry."""

SEARCH_CHARS = 65_536
"""Characters of each of description, reasoning and context that full-text search
indexes: three of them always fit PostgreSQL's 1 MB limit of one ``tsvector``."""

VERSION_TABLE = "decision_trace_schema"

_SEARCH = (
    f"to_tsvector('simple'::regconfig, left(description, {SEARCH_CHARS})) || "
    f"to_tsvector('simple'::regconfig, left(coalesce(reasoning, ''), {SEARCH_CHARS})) || "
    f"to_tsvector('simple'::regconfig, left(coalesce(decision_json ->> 'context', ''), "
    f"{SEARCH_CHARS}))"
)


def _key(column: str) -> str:
    return f"left({column}, {KEY_CHARS})"


_MIGRATION_1 = f"""
CREATE TABLE {VERSION_TABLE} (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   integer NOT NULL
);
CREATE SEQUENCE events_seq AS bigint;
CREATE TABLE events (
    seq           bigint NOT NULL DEFAULT nextval('events_seq'),
    id            text COLLATE "C" NOT NULL,
    trace_id      text COLLATE "C" NOT NULL,
    parent_id     text COLLATE "C",
    start_ns      bigint NOT NULL,
    duration_ns   bigint NOT NULL,
    event_type    text COLLATE "C" NOT NULL,
    description   text COLLATE "C" NOT NULL,
    actor_type    text COLLATE "C",
    actor_id      text COLLATE "C",
    actor_name    text COLLATE "C",
    actor_json    jsonb,
    reasoning     text COLLATE "C",
    decision_json jsonb,
    objects_json  jsonb,
    tags_json     jsonb,
    outcome       text COLLATE "C" NOT NULL,
    error         text COLLATE "C",
    metadata_json jsonb,
    service_name  text COLLATE "C",
    search        tsvector GENERATED ALWAYS AS ({_SEARCH}) STORED,
    PRIMARY KEY (id, start_ns)
) PARTITION BY RANGE (start_ns);
CREATE INDEX events_by_time ON events (start_ns, seq);
CREATE INDEX events_by_seq ON events (seq);
CREATE INDEX events_by_type ON events ({_key("event_type")}, start_ns);
CREATE INDEX events_by_actor ON events ({_key("actor_type")}, {_key("actor_id")}, start_ns);
CREATE INDEX events_by_trace ON events (trace_id);
CREATE INDEX events_search ON events USING gin (search);

CREATE TABLE event_objects (
    event_seq   bigint NOT NULL,
    position    integer NOT NULL,
    object_type text COLLATE "C" NOT NULL,
    external_id text COLLATE "C" NOT NULL,
    start_ns    bigint NOT NULL
) PARTITION BY RANGE (start_ns);
CREATE INDEX event_objects_by_event ON event_objects (event_seq, position);
CREATE INDEX event_objects_by_object
    ON event_objects ({_key("object_type")}, {_key("external_id")}, start_ns);
CREATE INDEX event_objects_by_id ON event_objects ({_key("external_id")}, start_ns);

CREATE TABLE event_tags (
    tag       text COLLATE "C" NOT NULL,
    event_seq bigint NOT NULL,
    start_ns  bigint NOT NULL
) PARTITION BY RANGE (start_ns);
CREATE INDEX event_tags_by_tag ON event_tags ({_key("tag")}, start_ns);
CREATE INDEX event_tags_by_event ON event_tags (event_seq);
"""

_MIGRATION_2 = """
ALTER TABLE events ADD COLUMN salt text, ADD COLUMN payload text;
CREATE TABLE chain (
    position   bigint PRIMARY KEY,
    kind       smallint NOT NULL,
    event_id   text COLLATE "C",
    event_seq  bigint,
    start_ns   bigint NOT NULL,
    skeleton   text NOT NULL,
    commitment text NOT NULL,
    hash       text NOT NULL,
    body       text
);
CREATE INDEX chain_acts ON chain (position) WHERE kind = 1;
CREATE INDEX chain_by_event ON chain (event_seq) WHERE event_seq IS NOT NULL;
CREATE TABLE ledger_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
"""
"""The chain. The ledger's id and pseudonym key, and the adoption of the events stored
before (chained in ``seq`` order, then an "adopt" act), are written by the ledger right
after this script, in the same transaction (they are made in Python)."""

MIGRATIONS: tuple[str, ...] = (_MIGRATION_1, _MIGRATION_2)
"""Schema migrations in order; migration ``n`` brings the version from n-1 to n."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this release writes."""

TABLES = ("events", "event_objects", "event_tags")
"""The partitioned tables; each partition of one has its twins in the other two."""

FIRST_MONTHLY_YEAR = 2000
"""Events before this year share one partition (backfills of old data are rare)."""
END_MONTHLY_YEAR = 2100
"""Events from this year on share one partition."""

_NS = 1_000_000_000


def _month_start_ns(year: int, month: int) -> int:
    return calendar.timegm((year, month, 1, 0, 0, 0)) * _NS


_FIRST_NS = _month_start_ns(FIRST_MONTHLY_YEAR, 1)
_END_NS = _month_start_ns(END_MONTHLY_YEAR, 1)


@dataclass(frozen=True)
class Partition:
    """One time range of the ledger, held by one partition of each table.

    Attributes:
        suffix: The partitions' name suffix (``p2026_12``, ``p_before_2000``...).
        low: The first nanosecond it holds, or None (from the earliest time).
        high: The first nanosecond after it, or None (to the latest time).
    """

    suffix: str
    low: int | None
    high: int | None

    def name(self, table: str) -> str:
        """The partition of ``table`` (one of :data:`TABLES`) for this range."""
        return f"{table}_{self.suffix}"

    def covered_by(self, cutoff_ns: int) -> bool:
        """Whether every event this range can hold started before ``cutoff_ns``."""
        return self.high is not None and self.high <= cutoff_ns

    def create_sql(self) -> list[str]:
        """The statements that create this range's partitions (if missing)."""
        low = "MINVALUE" if self.low is None else str(self.low)
        high = "MAXVALUE" if self.high is None else str(self.high)
        return [
            f"CREATE TABLE IF NOT EXISTS {self.name(table)} PARTITION OF {table} "
            f"FOR VALUES FROM ({low}) TO ({high})"
            for table in TABLES
        ]


_BEFORE = Partition(f"p_before_{FIRST_MONTHLY_YEAR}", None, _FIRST_NS)
_AFTER = Partition(f"p_from_{END_MONTHLY_YEAR}", _END_NS, None)


def _month(year: int, month: int) -> Partition:
    following = (year + 1, 1) if month == 12 else (year, month + 1)
    return Partition(
        f"p{year:04d}_{month:02d}", _month_start_ns(year, month), _month_start_ns(*following)
    )


_last: list[Partition] = []


def partition_of(start_ns: int) -> Partition:
    """The range that holds an event that started at ``start_ns``."""
    if _last:
        last = _last[0]  # most events of a batch fall in the month of the one before
        if last.low is not None and last.high is not None and last.low <= start_ns < last.high:
            return last
    found = _partition_of(start_ns)
    _last[:] = [found]
    return found


def _partition_of(start_ns: int) -> Partition:
    if start_ns < _FIRST_NS:
        return _BEFORE
    if start_ns >= _END_NS:
        return _AFTER
    seconds = start_ns // _NS
    days = seconds // 86_400
    # Civil date from days since 1970-01-01 (Howard Hinnant's algorithm), no datetime.
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    return _month(year, month)


def partition_named(suffix: str) -> Partition | None:
    """The range whose partitions carry ``suffix``, or None if it is not one of ours."""
    if suffix == _BEFORE.suffix:
        return _BEFORE
    if suffix == _AFTER.suffix:
        return _AFTER
    if len(suffix) == 8 and suffix[0] == "p" and suffix[5] == "_":
        year, month = suffix[1:5], suffix[6:8]
        if year.isdigit() and month.isdigit():
            y, m = int(year), int(month)
            if FIRST_MONTHLY_YEAR <= y < END_MONTHLY_YEAR and 1 <= m <= 12:
                return _month(y, m)
    return None


def partitions_ahead(now_ns: int, months: int = 2) -> list[Partition]:
    """The partitions from the month of ``now_ns`` on, ``months`` of them: made when a
    writer opens the ledger and again by its first write of each month, so the month
    after the current one always exists before anything is written to it."""
    found: list[Partition] = []
    ns = now_ns
    for _ in range(months):
        partition = partition_of(ns)
        found.append(partition)
        if partition.high is None:
            break
        ns = partition.high
    return found


def partitions_for(start_times: Iterable[int]) -> set[Partition]:
    """The partitions that events starting at ``start_times`` go to."""
    return {partition_of(ns) for ns in start_times}


assert partition_of(MIN_NS) is _BEFORE and partition_of(MAX_NS) is _AFTER
