"""Shared helpers for the PostgreSQL benchmarks: the server, throwaway schemas, and the
hand-written ``COPY`` that is the physical limit of a write.

Not a benchmark itself (``make bench`` runs ``benchmarks/bench_*.py`` only).

The server is ``$DECISION_TRACE_BENCH_PG`` (default
``postgresql://postgres@127.0.0.1:5432/test``). Every benchmark works in schemas of its
own, named ``dt_bench_...``, made with ``CREATE SCHEMA`` and dropped at the end; it
never touches any other schema. The one exception is the cached 1,000,000-event ledger
of ``bench_pg_queries.py`` (see :func:`million_schema`). Without a server, a PostgreSQL
benchmark prints ``skipped`` and exits 0, so ``make bench`` still runs the others.

The test suite restarts the shared server in some tests, after taking a lock file
exclusively (``tests/pg_support.py``); each unit of measurement here (one repeat of one
side, one query's repeats, one chunk of the ledger build) holds that lock shared, as a
test does, so a restart waits for it instead of cutting its connections.
"""

from __future__ import annotations

import fcntl
import gc
import hashlib
import json
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from _common import (
    CHAIN_EVERY,
    MILLION_START,
    MILLION_STEP,
    QUICK,
    chunks,
    make_events,
    record_event,
    size,
    timed,
)

from decision_trace import DecisionTraceClient
from decision_trace.record import EventRecord
from decision_trace.storage import open_ledger

try:
    import psycopg
except ImportError:  # pragma: no cover - the [postgres] extra is not installed
    psycopg = None  # type: ignore[assignment]

SERVER = os.environ.get("DECISION_TRACE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


def server_or_skip(title: str) -> str:
    """The server's version line; exit 0 with a ``skipped`` line instead when there is no
    PostgreSQL server (or no psycopg)."""
    if psycopg is None:
        print(f"== {title}\n   skipped: psycopg is not installed (pip install '.[postgres]')")
        sys.exit(0)
    try:
        with psycopg.connect(SERVER, connect_timeout=5) as conn:
            version = conn.execute("SHOW server_version").fetchone()
    except psycopg.Error as exc:
        print(f"== {title}\n   skipped: no PostgreSQL server at {SERVER}: {exc}".rstrip())
        sys.exit(0)
    return f"PostgreSQL {version[0] if version else '?'} at {SERVER}, psycopg {psycopg.__version__}"


@contextmanager
def server_in_use(timeout: float = 300.0) -> Iterator[None]:
    """Hold the test suite's restart lock of the server shared (see ``tests/pg_support``:
    the same two files, ``<tmp>/decision-trace-pglock-<host>_<port>`` and ``.gate``;
    ``$DECISION_TRACE_PG_LOCK_DIR`` names ``<tmp>`` when ``TMPDIR`` differs)."""
    parts = urlsplit(SERVER)
    name = re.sub(r"[^A-Za-z0-9.]+", "_", f"{parts.hostname or 'socket'}-{parts.port or 5432}")
    folder = os.environ.get("DECISION_TRACE_PG_LOCK_DIR") or tempfile.gettempdir()
    path = Path(folder) / f"decision-trace-pglock-{name}"
    try:
        main = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
        gate = os.open(f"{path}.gate", os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError:
        yield  # no writable folder: no coordination
        return
    try:
        _flock(gate, fcntl.LOCK_EX, timeout)
        try:
            _flock(main, fcntl.LOCK_SH, timeout)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(main, fcntl.LOCK_UN)
    finally:
        os.close(main)
        os.close(gate)


def _flock(fd: int, operation: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"waited {timeout:.0f} s for a server restart") from None
            time.sleep(0.05)


def schema_url(schema: str) -> str:
    """The server URL with ``schema`` first on the search path."""
    joiner = "&" if "?" in SERVER else "?"
    return f"{SERVER}{joiner}options=-csearch_path%3D{schema}"


def admin() -> Any:
    """An autocommit connection to the server (no schema of ours on its path)."""
    return psycopg.connect(SERVER, autocommit=True)


@contextmanager
def scratch_schema(tag: str) -> Iterator[str]:
    """A new empty schema ``dt_bench_<tag>_<random>``, dropped afterwards; its URL."""
    schema = f"dt_bench_{tag}_{uuid.uuid4().hex[:8]}"
    with server_in_use():
        with admin() as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        try:
            yield schema_url(schema)
        finally:
            with admin() as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def ledger_schema(url: str) -> None:
    """Create decision-trace's schema (tables, indexes, the partitions of the coming
    months) at ``url``, as the backend does on first open."""
    open_ledger(url).close()


# --- the hand-written COPY --------------------------------------------------------------

EVENT_COPY_COLUMNS = (
    "seq",
    "id",
    "trace_id",
    "parent_id",
    "start_ns",
    "duration_ns",
    "event_type",
    "description",
    "actor_type",
    "actor_id",
    "actor_name",
    "actor_json",
    "reasoning",
    "decision_json",
    "objects_json",
    "tags_json",
    "outcome",
    "error",
    "metadata_json",
    "service_name",
)
COPY_EVENTS = f"COPY events ({', '.join(EVENT_COPY_COLUMNS)}) FROM STDIN"
COPY_OBJECTS = (
    "COPY event_objects (event_seq, position, object_type, external_id, start_ns) FROM STDIN"
)
COPY_TAGS = "COPY event_tags (tag, event_seq, start_ns) FROM STDIN"

CopyRows = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]]]
"""The event, object and tag rows of one transaction."""


def copy_transactions(records: Sequence[EventRecord], per_transaction: int) -> list[CopyRows]:
    """The rows the backend's schema holds for ``records`` (seq numbered from 1, as the
    table's sequence would), ``per_transaction`` events a transaction; built outside any
    timing, as a program holding its rows already would have them."""
    transactions: list[CopyRows] = []
    seq = 1
    for part in chunks(records, per_transaction):
        events, objects, tags = [], [], []
        for r in part:
            events.append(
                (
                    seq,
                    r.id,
                    r.trace_id,
                    r.parent_id,
                    r.start_ns,
                    r.duration_ns,
                    r.event_type,
                    r.description,
                    r.actor_type,
                    r.actor_id,
                    r.actor_name,
                    r.actor_json,
                    r.reasoning,
                    r.decision_json,
                    r.objects_json,
                    json.dumps(list(r.tags), separators=(",", ":")) if r.tags else None,
                    r.outcome,
                    r.error,
                    r.metadata_json,
                    r.service_name,
                )
            )
            for position, (object_type, external_id) in enumerate(
                zip(r.object_types, r.object_ids, strict=True)
            ):
                objects.append((seq, position, object_type, external_id, r.start_ns))
            tags.extend((tag, seq, r.start_ns) for tag in r.tags)
            seq += 1
        transactions.append((events, objects, tags))
    return transactions


EVENT_COPY_TYPES = tuple(
    "bigint"
    if c in ("seq", "start_ns", "duration_ns")
    else "jsonb"
    if c.endswith("_json")
    else "text"
    for c in EVENT_COPY_COLUMNS
)
OBJECT_COPY_TYPES = ("bigint", "integer", "text", "text", "bigint")
TAG_COPY_TYPES = ("text", "bigint", "bigint")


class _JsonText(str):
    """Only a key to register :class:`_JsonbTextBinaryDumper` under."""


def _binary_jsonb_from_text(conn: Any) -> None:
    """Make binary ``COPY`` send ``str`` values of jsonb columns as the JSON text they hold
    (psycopg's own jsonb dumper would encode the ``str`` as a JSON string)."""
    from psycopg.adapt import Dumper

    class _JsonbTextBinaryDumper(Dumper):
        format = psycopg.pq.Format.BINARY
        oid = psycopg.postgres.types["jsonb"].oid

        def dump(self, obj: Any) -> bytes:
            return b"\x01" + obj.encode()

    conn.adapters.register_dumper(_JsonText, _JsonbTextBinaryDumper)


def copy_batch(conn: Any, rows: CopyRows, *, binary: bool = False) -> None:
    """One transaction: ``COPY ... FROM STDIN`` of the events, their objects and tags (in
    text format, or binary with the column types given)."""
    events, objects, tags = rows
    with conn.transaction(), conn.cursor() as cur:
        for statement, part, types in (
            (COPY_EVENTS, events, EVENT_COPY_TYPES),
            (COPY_OBJECTS, objects, OBJECT_COPY_TYPES),
            (COPY_TAGS, tags, TAG_COPY_TYPES),
        ):
            with cur.copy(statement + " (FORMAT BINARY)" if binary else statement) as copy:
                if binary:
                    copy.set_types(types)
                for row in part:
                    copy.write_row(row)


def time_copy(url: str, transactions: Sequence[CopyRows], *, binary: bool = False) -> float:
    """Seconds a hand-written psycopg ``COPY`` takes to commit ``transactions`` into a
    fresh ledger schema at ``url`` (made by the backend, partitions included)."""
    ledger_schema(url)
    with psycopg.connect(url) as conn:
        if binary:
            _binary_jsonb_from_text(conn)

        def go() -> None:
            for rows in transactions:
                copy_batch(conn, rows, binary=binary)

        gc.collect()
        return timed(go)


def row_counts(url: str) -> tuple[int, int, int]:
    """How many events, object links and tags the ledger at ``url`` holds."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM event_objects), "
            "(SELECT count(*) FROM event_tags)"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


# --- sizes --------------------------------------------------------------------------------


def table_bytes(url: str) -> dict[str, dict[str, int]]:
    """Bytes of each table's partitions: ``{table: {"heap": .., "toast": .., "indexes": ..}}``
    (heap includes the free-space and visibility maps)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT p.relname, sum(pg_table_size(i.inhrelid)), "
            "sum(pg_table_size(i.inhrelid) - pg_relation_size(i.inhrelid, 'main') "
            "- pg_relation_size(i.inhrelid, 'fsm') - pg_relation_size(i.inhrelid, 'vm')), "
            "sum(pg_indexes_size(i.inhrelid)) "
            "FROM pg_inherits AS i JOIN pg_class AS p ON p.oid = i.inhparent "
            "WHERE p.relname IN ('events', 'event_objects', 'event_tags') "
            "AND p.relnamespace = current_schema()::regnamespace GROUP BY p.relname"
        ).fetchall()
    return {
        str(name): {"heap": int(t) - int(toast), "toast": int(toast), "indexes": int(ix)}
        for name, t, toast, ix in rows
    }


def index_bytes(url: str) -> dict[str, int]:
    """Bytes of each partitioned index of the ledger, summed over its partitions."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT p.relname, sum(pg_relation_size(i.inhrelid)) FROM pg_inherits AS i "
            "JOIN pg_class AS p ON p.oid = i.inhparent WHERE p.relkind = 'I' "
            "AND p.relnamespace = current_schema()::regnamespace GROUP BY p.relname "
            "ORDER BY 2 DESC"
        ).fetchall()
    return {str(name): int(n) for name, n in rows}


def print_bytes(url: str, count: int) -> float:
    """Print bytes per event, table by table and index by index; return the total."""
    tables = table_bytes(url)
    total = sum(sum(parts.values()) for parts in tables.values())
    print(f"   bytes per event: {total / count:,.1f} ({total / 2**20:,.1f} MiB for {count:,})")
    for name in ("events", "event_objects", "event_tags"):
        parts = tables.get(name, {})
        print(
            f"     {name}: heap {parts.get('heap', 0) / count:,.1f}, "
            f"toast {parts.get('toast', 0) / count:,.1f}, "
            f"indexes {parts.get('indexes', 0) / count:,.1f}"
        )
    print(
        "     indexes: "
        + ", ".join(f"{name} {n / count:,.1f}" for name, n in index_bytes(url).items())
    )
    return total / count


# --- the 1,000,000-event ledger ------------------------------------------------------------

BUILDER_VERSION = 1
"""Bump when the million ledger's content changes (events, timestamps, chains)."""


def million_schema(*, rebuild: bool = False) -> tuple[str, int]:
    """The URL of a ledger of 1,000,000 events (20,000 with ``--quick``) and its count.

    The same events as ``_common.million_file`` (``make_events(count, seed=1)``, ``at()``
    timestamps 2.5 s apart from 2026-01-01, every 50th event a workflow of 4), recorded
    through the public API into PostgreSQL, then ``VACUUM ANALYZE``.

    With ``--quick`` it is built in a throwaway schema every run (drop it with
    :func:`drop_million`). Otherwise it is cached in a schema whose name carries the count,
    the schema version and a hash of the migrations' SQL and of :data:`BUILDER_VERSION`
    (``dt_bench_million_1000000_v1_<hash>``), so a ledger built by another version of
    the schema is never used; it is marked complete (a comment on the schema) only once
    built, and rebuilt when that mark is missing or with ``--rebuild``. Drop it by hand
    with ``DROP SCHEMA <name> CASCADE``.
    """
    from decision_trace.storage.postgres.schema import MIGRATIONS, SCHEMA_VERSION

    count = size(1_000_000, 20_000)
    digest = hashlib.sha256(
        ("\n".join(MIGRATIONS) + f"\nbuilder {BUILDER_VERSION}").encode()
    ).hexdigest()[:10]
    if QUICK:
        schema = f"dt_bench_million_quick_{uuid.uuid4().hex[:8]}"
    else:
        schema = f"dt_bench_million_{count}_v{SCHEMA_VERSION}_{digest}"
    mark = f"decision-trace benchmark ledger, complete: {count} events"
    with server_in_use(), admin() as conn:
        found = conn.execute(
            "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = %s",
            (schema,),
        ).fetchone()
        others = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'dt\\_bench\\_million\\_%%' "
            "AND nspname <> %s AND nspname NOT LIKE 'dt\\_bench\\_million\\_quick\\_%%'",
            (schema,),
        ).fetchall()
        for (other,) in [] if QUICK else others:
            print(f"   note: the cached ledger {other} (another version) is not used")
        if found is not None and found[0] == mark and not rebuild:
            return schema_url(schema), count
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
    url = schema_url(schema)
    print(f"   building the {count:,}-event ledger in schema {schema} (once)...", flush=True)
    start = time.perf_counter()
    events = make_events(count, seed=1, orders=count // 5)
    with DecisionTraceClient(db_path=url, service_name="bench") as client:
        parent: str | None = None
        for part in chunks(events, 50_000):
            with server_in_use():
                for e in part:
                    at = MILLION_START + MILLION_STEP * e.index
                    slot = e.index % CHAIN_EVERY
                    if slot == 0:
                        parent = record_event(client, e, at=at)
                    elif slot <= 3:
                        record_event(client, e, at=at, parent=parent)
                    else:
                        record_event(client, e, at=at)
                if not client.flush():
                    raise RuntimeError("the ledger build did not flush")
    with server_in_use():
        with psycopg.connect(url, autocommit=True) as conn:
            for table in ("events", "event_objects", "event_tags"):
                conn.execute(f"VACUUM ANALYZE {table}")
        if row_counts(url)[0] != count:
            raise RuntimeError(f"the ledger build stored {row_counts(url)[0]} events")
        with admin() as conn:
            conn.execute(f"COMMENT ON SCHEMA {schema} IS '{mark}'")
    print(f"   built in {time.perf_counter() - start:.0f} s", flush=True)
    return url, count


def drop_million(url: str) -> None:
    """Drop the million ledger's schema if it was a throwaway one (``--quick``)."""
    schema = url.rsplit("%3D", 1)[1]
    if schema.startswith("dt_bench_million_quick_"):
        with server_in_use(), admin() as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
