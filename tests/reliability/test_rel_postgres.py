"""A team-wide ledger on PostgreSQL: many processes writing and opening one ledger, a
server restart while a client records, and connections the server drops.

Real processes, a real server (the one ``tests/pg_support.py`` finds; a schema of this
test's own, ``pg_url``). The promises are in docs/guarantees.md ("PostgreSQL").
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pg_support
import psycopg
import pytest
from reliability_support import (
    CHILD_TIMEOUT_S,
    check_intact,
    started_python,
    stored_ids,
    table_counts,
    write_script,
)

from decision_trace import DecisionTraceClient
from decision_trace.storage import EventFilters, open_ledger
from decision_trace.storage.postgres.schema import SCHEMA_VERSION

# --- 8 processes x 5,000 events --------------------------------------------------------

WRITERS = 8
EVENTS_PER_WRITER = 5_000
WRITERS_DEADLINE_S = 300.0
"""Writers start, record, flush and exit within this (else the test fails, never hangs)."""

# Records ``count`` events in batch mode, writing each id record() returned to its own
# file (stdout would fill its pipe), then reports what flush() and stats() said.
WRITER = """
    import json, os, sys, time
    from decision_trace import DecisionTraceClient

    url, worker, count, go, ids_file = sys.argv[1:6]
    count = int(count)
    client = DecisionTraceClient(db_path=url, durability="batch")
    while not os.path.exists(go):  # start with every other writer, at the same moment
        time.sleep(0.005)
    with open(ids_file, "w") as out:
        for i in range(count):
            event_id = (
                client.trace("stock.adjusted", f"worker {worker} event {i}")
                .by_compute(f"worker-{worker}", "Stock sync")
                .affecting_inventory(f"SKU-{worker}-{i}", quantity_before=i, quantity_after=i + 1)
                .because("nightly recount", context={"worker": worker, "i": i})
                .with_tags(f"w{worker}")
                .record()
            )
            out.write(event_id + "\\n")
    flushed = client.flush(timeout_s=240)
    stats = client.stats()
    client.close()
    print(json.dumps({"flushed": flushed, "failed": stats.failed, "written": stats.written}))
"""


def test_eight_processes_times_5000_events_are_exactly_40000(tmp_path: Path, pg_url: str) -> None:
    """8 processes, each a batch-mode client on the same URL, record 5,000 events each at
    once: exactly 40,000 are stored, every acknowledged id once, none twice; a reader
    meanwhile only ever sees whole events (as many object links and tags as events)."""
    script = write_script(tmp_path, "writer.py", WRITER)
    go = tmp_path / "go"
    reader = DecisionTraceClient(db_path=pg_url)  # creates the schema before the writers
    procs = []
    try:
        for worker in range(WRITERS):
            args = (pg_url, str(worker), str(EVENTS_PER_WRITER), str(go))
            ctx = started_python(script, *args, str(tmp_path / f"ids-{worker}.txt"))
            procs.append((ctx, ctx.__enter__()))
        go.touch()
        started = time.monotonic()
        deadline = started + WRITERS_DEADLINE_S
        last = 0
        while any(p.poll() is None for _, p in procs) and time.monotonic() < deadline:
            events, objects, tags = table_counts(pg_url)
            assert events == objects == tags, "a reader saw half an event"
            assert events >= last
            last = events
            for event in reader.query(limit=20):
                assert event.actor is not None and event.actor.id.startswith("worker-")
            time.sleep(0.2)  # leave the CPU to the writers
        for _, proc in procs:
            out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 10.0))
            assert proc.returncode == 0, err
            report = json.loads(out.strip().splitlines()[-1])
            assert report == {"flushed": True, "failed": 0, "written": EVENTS_PER_WRITER}, err
        print(f"8 x 5,000 events written in {time.monotonic() - started:.1f} s")
    finally:
        for ctx, _ in procs:
            ctx.__exit__(None, None, None)
        reader.close()
    acknowledged: list[str] = []
    for worker in range(WRITERS):
        acknowledged += (tmp_path / f"ids-{worker}.txt").read_text().split()
    assert len(acknowledged) == len(set(acknowledged)) == WRITERS * EVENTS_PER_WRITER
    assert table_counts(pg_url) == (40_000, 40_000, 40_000)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*), count(DISTINCT id) FROM events").fetchone()
        assert row == (40_000, 40_000), "an event stored twice"
    assert stored_ids(pg_url) == set(acknowledged)  # every acknowledged id, and intact
    ledger = open_ledger(pg_url, read_only=True)
    try:
        assert ledger.count(EventFilters()) == 40_000
        for worker in (0, WRITERS - 1):
            events = ledger.query(EventFilters.build(tags=[f"w{worker}"]), limit=None)
            assert sorted(e.decision.context["i"] for e in events) == list(  # type: ignore[union-attr]
                range(EVENTS_PER_WRITER)
            )
    finally:
        ledger.close()


# --- a server restart while recording --------------------------------------------------


def test_server_restart_while_recording_loses_nothing_acknowledged(pg_url: str) -> None:
    """The server restarts (fast shutdown: every connection cut) while a batch-mode
    client records 1,000 events a second. The client retries; flush() says False while
    the events cannot be stored and True once they are; every event record() returned
    is in the ledger at the end, none twice."""
    client = DecisionTraceClient(db_path=pg_url, durability="batch")
    acknowledged: list[str] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def record() -> None:
        try:
            i = 0
            while not stop.is_set():
                acknowledged.append(
                    client.trace("order.refunded", f"refund {i}")
                    .by_user(f"agent-{i % 5}", "Sam")
                    .affecting_order(f"ord-{i}", {"status": "refunded"})
                    .because("parcel crushed", context={"i": i})
                    .with_tags("refund")
                    .record()
                )
                i += 1
                time.sleep(0.001)
        except BaseException as exc:
            errors.append(exc)

    restart_errors: list[BaseException] = []
    restart_s: list[float] = []

    def restart() -> None:
        try:
            began = time.monotonic()
            pg_support.restart_server()
            restart_s.append(time.monotonic() - began)
        except BaseException as exc:  # a skip (no way to restart this server) too
            restart_errors.append(exc)

    recorder = threading.Thread(target=record)
    recorder.start()
    try:
        while len(acknowledged) < 200 and recorder.is_alive():
            time.sleep(0.01)
        assert client.flush(timeout_s=60), "stored before the restart"
        before_restart = len(acknowledged)

        # While the server restarts: flush() with a short deadline, again and again. Each
        # True promises that what had been acknowledged when it was called is stored.
        restarter = threading.Thread(target=restart)
        restarter.start()
        promised: list[int] = []  # acknowledged count at each flush() that said True
        said_false = 0
        while restarter.is_alive():
            count = len(acknowledged)
            if client.flush(timeout_s=0.25):
                promised.append(count)
            else:
                said_false += 1
        restarter.join()
        if restart_errors:
            raise restart_errors[0]
        # After it, until one flush() says everything is stored.
        settled = time.monotonic() + 30
        while time.monotonic() < settled:
            count = len(acknowledged)
            if client.flush(timeout_s=0.25):
                promised.append(count)
                break
            said_false += 1
        time.sleep(0.5)  # more events on the new connections
    finally:
        stop.set()
        recorder.join(timeout=CHILD_TIMEOUT_S)
    assert not errors, errors
    assert client.flush(timeout_s=60) is True
    stats = client.stats()
    client.close()
    stored = stored_ids(pg_url)
    print(
        f"restart took {restart_s[0]:.1f} s (waiting for other tests included); "
        f"{len(acknowledged)} acknowledged, {before_restart} before it; "
        f"flush() said False {said_false} times, then True"
    )
    assert said_false > 0, "flush() said True while the server was down"
    # The acknowledged ids only grow, so the last True promised the most.
    assert promised, "flush() never said True"
    assert set(acknowledged[: max(promised)]) <= stored, "flush() said True, but not stored"
    assert len(acknowledged) == len(set(acknowledged)) > before_restart
    assert set(acknowledged) == stored, f"{len(set(acknowledged) - stored)} acknowledged lost"
    assert (stats.recorded, stats.written, stats.failed) == (len(acknowledged),) * 2 + (0,)
    assert table_counts(pg_url) == (len(acknowledged),) * 3  # none twice


# --- dropped reader connections --------------------------------------------------------


def _this_process_ports() -> set[int]:
    """The local TCP ports of this process's sockets (Linux /proc), so that only our own
    connections are terminated on a server other tests share."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _terminate_idle_ledger_connections(url: str) -> list[int]:
    """Terminate this process's idle connections made by the ledger (application_name
    ``decision-trace``); return their server pids once they are gone."""
    ports = sorted(_this_process_ports())
    with psycopg.connect(url, autocommit=True) as admin:
        pids = [
            int(pid)
            for (pid,) in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'decision-trace' "
                "AND state = 'idle' AND client_port = ANY(%s) AND pid <> pg_backend_pid()",
                (ports,),
            )
        ]
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            alive = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
            ).fetchone()
            if alive == (0,):
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"terminated backends {pids} still there after 30 s")
    return pids


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="finds our sockets in /proc")
def test_dropped_reader_connections_are_replaced_not_surfaced(pg_url: str) -> None:
    """The server drops every idle connection of the client (an idle timeout, a failover,
    an administrator): the next queries, eight threads at once, answer as before, never
    an error; the next writes reopen the writer's connection and lose nothing."""
    client = DecisionTraceClient(db_path=pg_url)
    try:
        ids = [
            client.trace("order.refunded", f"refund {i}")
            .by_system("shop")
            .affecting_order(f"ord-{i}")
            .because("parcel crushed")
            .record()
            for i in range(50)
        ]
        assert client.flush()
        barrier = threading.Barrier(8)
        failures: list[BaseException] = []

        def queries(check: Callable[[], None]) -> None:
            try:
                barrier.wait(timeout=60)
                for _ in range(5):
                    check()
            except BaseException as exc:
                failures.append(exc)

        def answers_as_before() -> None:
            assert len(client.query(limit=None)) == len(ids)
            assert client.get_event(ids[7]) is not None
            assert [e.id for e in client.get_object_history("ord-3")] == [ids[3]]
            assert len(client.search("parcel crushed", limit=None)) == len(ids)

        def in_threads() -> None:
            threads = [
                threading.Thread(target=queries, args=(answers_as_before,)) for _ in range(8)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=CHILD_TIMEOUT_S)
            assert not failures, failures

        in_threads()  # the pool grows to its size, and its connections go idle
        for round_ in range(2):  # the replacements are dropped in turn
            killed = _terminate_idle_ledger_connections(pg_url)
            # The first time the writer's connection is among them (idle since the flush).
            assert len(killed) >= (2 if round_ == 0 else 1), killed
            barrier.reset()
            in_threads()
        more = [client.trace("order.shipped").by_system("shop").record() for _ in range(10)]
        assert client.flush()
        assert client.stats().failed == 0
    finally:
        client.close()
    assert stored_ids(pg_url) == set(ids) | set(more)


# --- a new ledger opened by many processes at once -------------------------------------

OPENERS = 8

# Imports first, then waits for the others, then opens the ledger (creating the schema)
# and records one event.
OPENER = """
    import os, sys, time
    from decision_trace import DecisionTraceClient

    url, worker, ready, go = sys.argv[1:5]
    open(ready, "w").close()
    while not os.path.exists(go):
        time.sleep(0.002)
    with DecisionTraceClient(db_path=url, durability="sync") as client:
        print(client.trace("ledger.opened", f"opener {worker}").by_system("deploy").record())
"""


def test_many_processes_opening_a_new_ledger_at_once_all_succeed(
    tmp_path: Path, pg_url: str
) -> None:
    """8 processes open the same brand-new ledger at the same moment (each creating the
    schema unless another got there first, under an advisory lock): every one succeeds and
    records; one schema, at the current version, with its partitions, is the result."""
    script = write_script(tmp_path, "opener.py", OPENER)
    go = tmp_path / "go"
    procs = []
    try:
        for worker in range(OPENERS):
            ready = tmp_path / f"ready-{worker}"
            ctx = started_python(script, pg_url, str(worker), str(ready), str(go))
            procs.append((ctx, ctx.__enter__()))
        deadline = time.monotonic() + CHILD_TIMEOUT_S
        while not all((tmp_path / f"ready-{w}").exists() for w in range(OPENERS)):
            assert time.monotonic() < deadline, "the openers did not start"
            assert all(p.poll() is None for _, p in procs), "an opener died before the start"
            time.sleep(0.01)
        go.touch()
        printed = []
        for _, proc in procs:
            out, err = proc.communicate(timeout=CHILD_TIMEOUT_S)
            assert proc.returncode == 0, err
            assert "Traceback" not in err, err
            printed += out.split()
    finally:
        for ctx, _ in procs:
            ctx.__exit__(None, None, None)
    assert len(printed) == OPENERS
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM decision_trace_schema").fetchall() == [
            (SCHEMA_VERSION,)
        ]
    check_intact(pg_url)  # every partition in all three tables, with its bounds
    assert stored_ids(pg_url) == set(printed)
    ledger = open_ledger(pg_url)
    try:
        report = ledger.verify()  # one chain, in commit order, across the processes
        assert report.ok, report.problems
        assert report.events == OPENERS
    finally:
        ledger.close()
