"""What only the PostgreSQL backend has: its schema, partitions, migrations under many
openers, connections, and the extra it needs. What both backends share is in
``test_ledger_contract.py``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from dataclasses import replace

import psycopg
import pytest
from contract_support import BASE

from decision_trace import DecisionTraceClient
from decision_trace.errors import SchemaVersionError, StoreError
from decision_trace.record import EventRecord, ns_from_datetime
from decision_trace.storage import EventFilters, open_ledger
from decision_trace.storage.postgres import PostgresLedger
from decision_trace.storage.postgres.schema import (
    SCHEMA_VERSION,
    partition_of,
    partitions_ahead,
)


@pytest.fixture
def schema_url(pg_url: str) -> str:
    """A URL whose search_path is a new, empty schema (dropped afterwards)."""
    return pg_url


def _admin(url: str) -> psycopg.Connection:  # type: ignore[type-arg]
    return psycopg.connect(url, autocommit=True)


def _record(event_id: str, start_ns: int) -> EventRecord:
    return EventRecord(
        id=event_id,
        trace_id="1" * 32,
        parent_id=None,
        start_ns=start_ns,
        duration_ns=1_000,
        event_type="order.refunded",
        description="Refund issued",
        actor_type="user",
        actor_id="agent-7",
        actor_name=None,
        actor_json=None,
        reasoning="parcel crushed",
        decision_json=None,
        object_types=("order",),
        object_ids=("ord-1",),
        objects_json=None,
        tags=("support",),
        outcome="success",
        error=None,
        metadata_json=None,
        service_name="test",
    )


def test_a_url_opens_the_postgres_backend_and_hides_the_password(schema_url: str) -> None:
    url = schema_url.replace("postgres@", "postgres:s3cret@")
    ledger = open_ledger(url)
    try:
        assert isinstance(ledger, PostgresLedger)
        assert "s3cret" not in ledger.location
        assert "s3cret" not in repr(ledger)
    finally:
        ledger.close()
    other = open_ledger(schema_url.replace("postgresql://", "postgres://"))
    other.close()


def test_the_schema_is_partitioned_by_month_and_made_ahead(schema_url: str) -> None:
    ledger = open_ledger(schema_url)
    try:
        with _admin(schema_url) as conn:
            names = {
                row[0]
                for row in conn.execute(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'events'::regclass"
                )
            }
            import time

            ahead = {f"events_{p.suffix}" for p in partitions_ahead(time.time_ns())}
            assert ahead <= names and len(ahead) == 2
            kinds = dict(
                conn.execute(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND table_name = 'events'"
                ).fetchall()
            )
            assert kinds["decision_json"] == "jsonb" and kinds["search"] == "tsvector"
            key = conn.execute(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = 'events'::regclass AND contype = 'p'"
            ).fetchone()
            assert key is not None and key[0] == "PRIMARY KEY (id, start_ns)"
        # An event from a month without a partition (a backfill) gets one.
        old = ns_from_datetime(BASE.replace(year=2011), "t")
        assert ledger.write([_record("a" * 16, old)]) == 1
        with _admin(schema_url) as conn:
            made = conn.execute("SELECT to_regclass(%s)", (f"events_{partition_of(old).suffix}",))
            assert made.fetchone() == (f"events_{partition_of(old).suffix}",)
    finally:
        ledger.close()


def test_prune_drops_whole_partitions_and_deletes_only_at_the_edge(schema_url: str) -> None:
    ledger = open_ledger(schema_url)
    try:
        jan = ns_from_datetime(BASE.replace(year=2020, month=1, day=10), "t")
        feb = ns_from_datetime(BASE.replace(year=2020, month=2, day=10), "t")
        feb_late = ns_from_datetime(BASE.replace(year=2020, month=2, day=25), "t")
        ledger.write([_record("a" * 16, jan), _record("b" * 16, feb), _record("c" * 16, feb_late)])
        cutoff = ns_from_datetime(BASE.replace(year=2020, month=2, day=20), "t")
        dry = ledger.prune(cutoff, dry_run=True)
        assert (dry.events, dry.objects, dry.tags) == (2, 2, 2)
        assert ledger.prune(cutoff) == dry
        assert [e.id for e in ledger.query(EventFilters())] == ["c" * 16]
        with _admin(schema_url) as conn:
            for table in ("events", "event_objects", "event_tags"):
                assert conn.execute(
                    "SELECT to_regclass(%s)", (f"{table}_p2020_01",)
                ).fetchone() == (None,)
                assert conn.execute(f"SELECT count(*) FROM {table}_p2020_02").fetchone() == (1,)
        assert ledger.check() == []
        # Another writer that still believes January's partition exists writes there.
        other = open_ledger(schema_url)
        try:
            other._partitions.add(partition_of(jan).suffix)  # type: ignore[attr-defined]
            assert other.write([_record("d" * 16, jan)]) == 1
        finally:
            other.close()
    finally:
        ledger.close()


def test_a_newer_schema_is_a_clear_error(schema_url: str) -> None:
    open_ledger(schema_url).close()
    with _admin(schema_url) as conn:
        conn.execute("UPDATE decision_trace_schema SET version = 99")
    with pytest.raises(SchemaVersionError, match=r"schema version 99.*upgrade decision-trace"):
        open_ledger(schema_url)
    with pytest.raises(SchemaVersionError):
        open_ledger(schema_url, read_only=True)


def test_a_foreign_events_table_is_left_untouched(schema_url: str) -> None:
    with _admin(schema_url) as conn:
        conn.execute("CREATE TABLE events (x int)")
    with pytest.raises(StoreError, match="not a decision-trace ledger; it was left untouched"):
        open_ledger(schema_url)
    with _admin(schema_url) as conn:
        assert conn.execute("SELECT to_regclass('decision_trace_schema')").fetchone() == (None,)


def test_missing_ledger_with_create_false_and_read_only(schema_url: str) -> None:
    with pytest.raises(StoreError, match="no decision-trace ledger"):
        open_ledger(schema_url, create=False)
    with pytest.raises(StoreError, match="no decision-trace ledger"):
        open_ledger(schema_url, read_only=True)
    open_ledger(schema_url).close()
    reader = open_ledger(schema_url, read_only=True)
    try:
        with pytest.raises(StoreError, match="read-only"):
            reader.write([_record("a" * 16, 1)])
        assert reader.count(EventFilters()) == 0
    finally:
        reader.close()


def test_an_unreachable_server_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="cannot connect"):
        open_ledger("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")


def test_many_processes_opening_a_new_ledger_at_once_make_one_schema(schema_url: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def open_it() -> None:
        try:
            barrier.wait()
            open_ledger(schema_url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with _admin(schema_url) as conn:
        assert conn.execute("SELECT version FROM decision_trace_schema").fetchall() == [
            (SCHEMA_VERSION,)
        ]


def test_a_dropped_reader_connection_is_replaced(schema_url: str) -> None:
    ledger = open_ledger(schema_url)
    try:
        ledger.write([_record("a" * 16, ns_from_datetime(BASE, "t"))])
        assert ledger.count(EventFilters()) == 1
        with _admin(schema_url) as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'decision-trace' AND pid <> pg_backend_pid() "
                "AND query NOT ILIKE '%%pg_terminate_backend%%' AND datname = current_database() "
                "AND state = 'idle'"
            ).fetchone()
            assert killed is not None and killed[0] >= 1
        assert ledger.count(EventFilters()) == 1
        assert [e.id for e in ledger.query(EventFilters())] == ["a" * 16]
        # The writer's connection, dropped too, is reopened by the next write.
        assert ledger.write([_record("b" * 16, ns_from_datetime(BASE, "t"))]) == 1
    finally:
        ledger.close()


def test_a_client_records_and_queries_through_a_url(schema_url: str) -> None:
    client = DecisionTraceClient(db_path=schema_url)
    try:
        event_id = (
            client.trace("order.refunded", "Refund issued")
            .by_user("agent-7")
            .affecting_order("ord-1")
            .because("Parcel arrived crushed")
            .record()
        )
        client.flush()
        assert [e.id for e in client.get_object_history("ord-1")] == [event_id]
        assert [e.id for e in client.search("crushed")] == [event_id]
        assert client.db_path == schema_url
    finally:
        client.close()


def test_without_the_extra_a_url_says_which_extra_to_install() -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from decision_trace.storage import open_ledger\n"
        "from decision_trace.errors import StoreError\n"
        "try:\n"
        "    open_ledger('postgresql://localhost/db')\n"
        "except StoreError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'decision-trace-otel[postgres]'" in out.stdout


def test_duplicate_span_with_the_same_id_and_start_is_one_row(schema_url: str) -> None:
    ledger = open_ledger(schema_url)
    try:
        record = _record("a" * 16, ns_from_datetime(BASE, "t"))
        assert ledger.write([record]) == 1
        assert ledger.write([replace(record, description="resent")]) == 0
        with _admin(schema_url) as conn:
            assert conn.execute("SELECT count(*) FROM events").fetchone() == (1,)
            assert conn.execute("SELECT count(*) FROM event_objects").fetchone() == (1,)
            assert conn.execute("SELECT count(*) FROM event_tags").fetchone() == (1,)
    finally:
        ledger.close()


def test_writers_racing_on_the_same_spans_store_each_once(schema_url: str) -> None:
    # Each writer first leaves out what is stored, then COPYs the rest; a span another
    # writer stored in between makes the COPY fail, and the batch goes in again with
    # ON CONFLICT DO NOTHING. Four writers, the same 2,000 spans in different orders.
    import random

    start = ns_from_datetime(BASE, "t")
    records = [_record(format(i + 1, "016x"), start + i) for i in range(2_000)]
    ledgers = [open_ledger(schema_url) for _ in range(4)]
    written: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(ledgers))

    def write_all(ledger: object, seed: int) -> None:
        mine = records[:]
        random.Random(seed).shuffle(mine)
        total = 0
        try:
            barrier.wait()
            for i in range(0, len(mine), 100):
                total += ledger.write(mine[i : i + 100])  # type: ignore[attr-defined]
        except BaseException as exc:
            errors.append(exc)
        written.append(total)

    threads = [
        threading.Thread(target=write_all, args=(ledger, seed))
        for seed, ledger in enumerate(ledgers)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert sum(written) == 2_000
        with _admin(schema_url) as conn:
            assert conn.execute("SELECT count(*), count(DISTINCT id) FROM events").fetchone() == (
                2_000,
                2_000,
            )
            assert conn.execute("SELECT count(*) FROM event_objects").fetchone() == (2_000,)
            assert conn.execute("SELECT count(*) FROM event_tags").fetchone() == (2_000,)
    finally:
        for ledger in ledgers:
            ledger.close()


def test_the_first_write_of_a_month_makes_the_next_month_ahead(schema_url: str) -> None:
    import time

    ledger = open_ledger(schema_url)
    try:
        this_month, next_month = partitions_ahead(time.time_ns())
        with _admin(schema_url) as conn:
            for table in ("events", "event_objects", "event_tags"):
                conn.execute(f"DROP TABLE {next_month.name(table)}")
        # As if the writer had been open since last month: its next write looks ahead.
        ledger._ahead_until = 0  # type: ignore[attr-defined]
        ledger._partitions.discard(next_month.suffix)  # type: ignore[attr-defined]
        assert ledger.write([_record("a" * 16, time.time_ns())]) == 1
        with _admin(schema_url) as conn:
            for table in ("events", "event_objects", "event_tags"):
                found = conn.execute("SELECT to_regclass(%s)", (next_month.name(table),))
                assert found.fetchone() == (next_month.name(table),)
        assert this_month.suffix != next_month.suffix
    finally:
        ledger.close()


def test_nul_and_lone_surrogates_in_json_are_stored_as_u_fffd(schema_url: str) -> None:
    """jsonb refuses U+0000 and a lone surrogate, both of which Python's JSON escapes and
    keeps: they are stored as U+FFFD (keys too), a surrogate pair stays one character,
    an escaped backslash before "u" is text, and numbers keep their value."""
    context = {
        "lone": "a\ud800b \udc00",
        "pair": "\U0001f600 \ud83d\ude00",
        "nul": "x\x00y",
        "\udfffkey": 1,
        "text": "\\ud800 \\u0000",
        "numbers": [2.5, -0.125, 10**30],
    }
    decision = json.dumps({"context": context})
    assert "\\ud800" in decision and "\\u0000" in decision
    ledger = open_ledger(schema_url)
    try:
        record = replace(_record("a" * 16, ns_from_datetime(BASE, "t")), decision_json=decision)
        assert ledger.write([record]) == 1
        event = ledger.get_event("a" * 16)
        assert event is not None and event.decision is not None
        assert event.decision.context == {
            "lone": "a\ufffdb \ufffd",
            "pair": "\U0001f600 \U0001f600",
            "nul": "x\ufffdy",
            "\ufffdkey": 1,
            "text": "\\ud800 \\u0000",
            "numbers": [2.5, -0.125, 10**30],
        }
    finally:
        ledger.close()


def test_search_with_thousands_of_words_requires_every_one(schema_url: str) -> None:
    """A query of more words than one tsquery takes (the server's stack ran out at 50,000
    one-letter words) is split into queries that must all match: still every word."""
    words = [f"w{i}" for i in range(2_500)]
    ledger = open_ledger(schema_url)
    try:
        record = replace(
            _record("a" * 16, ns_from_datetime(BASE, "t")), description=" ".join(words)
        )
        ledger.write([record, _record("b" * 16, ns_from_datetime(BASE, "t"))])
        assert [e.id for e in ledger.search(" ".join(words))] == ["a" * 16]
        assert [e.id for e in ledger.iter_search(" ".join(reversed(words)))] == ["a" * 16]
        assert ledger.search(" ".join([*words, "absent"])) == []
        assert ledger.search(" ".join(["absent", *words])) == []
        assert ledger.search(("x " * 50_000)[:100_000]) == []
    finally:
        ledger.close()


def test_a_ledger_from_before_the_chain_adopts_its_events(schema_url: str) -> None:
    ledger = open_ledger(schema_url)
    records = [_record(f"{n:016x}", ns_from_datetime(BASE, "t") + n) for n in range(1, 4)]
    records[1] = replace(records[1], decision_json='{"b": 1e+16, "a": [1.50, "x"]}')
    ledger.write(records)
    ledger.close()
    with _admin(schema_url) as conn:  # back to schema version 1, as an older release left it
        conn.execute("DROP TABLE chain, ledger_meta")
        conn.execute("ALTER TABLE events DROP COLUMN salt, DROP COLUMN payload")
        conn.execute("UPDATE decision_trace_schema SET version = 1")
    ledger = open_ledger(schema_url)
    try:
        report = ledger.verify()
        assert report.ok, report.problems
        assert (report.entries, report.events) == (4, 3)
        assert [(act.kind, act.body["events"]) for act in report.acts] == [("adopt", 3)]
        ledger.write([_record("e" * 16, ns_from_datetime(BASE, "t") + 9)])
        assert ledger.verify().ok
        assert ledger.chain_state().entries == 5
    finally:
        ledger.close()
