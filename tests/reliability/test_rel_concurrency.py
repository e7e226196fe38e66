"""Concurrency: many processes and threads writing one ledger at once lose nothing.

Every test runs on both backends (``ledger_target``), except the 8 x 5,000 one: its
PostgreSQL counterpart, which also checks every event id, is in ``test_rel_postgres.py``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from reliability_support import (
    CHILD_TIMEOUT_S,
    started_python,
    stored_ids,
    table_counts,
    write_script,
)

from decision_trace import DecisionTraceClient

pytestmark = pytest.mark.usefixtures("ledger_target")

# A writer's flush() waits for its whole backlog. With 8 writer processes on a loaded 2-core
# machine the default 30 s was not enough (3,700 of 5,000 written when it gave up), so the
# writers get a deadline sized for that machine, and the parent waits a little longer.
WRITER_FLUSH_TIMEOUT_S = 300.0
WRITERS_DEADLINE_S = WRITER_FLUSH_TIMEOUT_S + 120.0
"""Writers start, record, flush and exit within this (else the test fails, it never hangs)."""

WRITER = """
    import json, os, sys, time
    from decision_trace import DecisionTraceClient

    db, durability, worker, count, go, flush_timeout = sys.argv[1:7]
    count = int(count)
    client = DecisionTraceClient(db_path=db, durability=durability)
    while not os.path.exists(go):  # start with every other writer, at the same moment
        time.sleep(0.005)
    for i in range(count):
        client.trace("stock.adjusted", f"worker {worker} event {i}") \\
            .by_compute(f"worker-{worker}", "Stock sync") \\
            .affecting_inventory(f"SKU-{worker}-{i}", quantity_before=i, quantity_after=i + 1) \\
            .because("nightly recount", context={"worker": worker, "i": i}) \\
            .with_tags(f"w{worker}") \\
            .record()
    started = time.monotonic()
    flushed = client.flush(timeout_s=float(flush_timeout))
    flush_s = round(time.monotonic() - started, 1)
    stats = client.stats()
    client.close()
    print(json.dumps({"flushed": flushed, "failed": stats.failed, "written": stats.written}))
    print(json.dumps({"flush_s": flush_s}), file=sys.stderr)
"""


_snapshot = table_counts
"""Counts of events, object links and tags, read in one transaction."""


def _run_writers(
    tmp_path: Path,
    reader: DecisionTraceClient,
    *,
    durability: str,
    workers: int,
    count: int,
) -> None:
    db = reader.db_path
    script = write_script(tmp_path, "writer.py", WRITER)
    go = tmp_path / "go"
    procs = []
    try:
        for worker in range(workers):
            args = (db, durability, str(worker), str(count), str(go))
            ctx = started_python(script, *args, str(WRITER_FLUSH_TIMEOUT_S))
            procs.append((ctx, ctx.__enter__()))
        go.touch()
        # Read while they write: every snapshot is a consistent, growing prefix.
        last = (0, 0, 0)
        reads = 0
        deadline = time.monotonic() + WRITERS_DEADLINE_S
        while any(p.poll() is None for _, p in procs) and time.monotonic() < deadline:
            events, objects, tags = _snapshot(db)
            assert events == objects == tags, "a reader saw half an event"
            assert events >= last[0]
            last = (events, objects, tags)
            for event in reader.query(limit=20):
                assert event.actor is not None and event.actor.id.startswith("worker-")
                assert len(event.objects) == 1 and event.objects[0].state_after is not None
                assert event.tags == (f"w{event.decision.context['worker']}",)  # type: ignore[union-attr]
            assert isinstance(reader.search("nightly recount"), list)
            reads += 1
            # Leave the CPU to the writers between reads (on 2 cores a reader that never
            # pauses slows them enough to matter); still dozens of reads per second.
            time.sleep(0.02)
        assert reads > 0
        for _, proc in procs:
            out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 10.0))
            assert proc.returncode == 0, err
            assert "locked" not in err.lower(), err
            report = json.loads(out.strip().splitlines()[-1])
            assert report == {"flushed": True, "failed": 0, "written": count}, err
    finally:
        for ctx, _ in procs:
            ctx.__exit__(None, None, None)


@pytest.mark.sqlite_only  # on PostgreSQL: test_rel_postgres.py::test_eight_processes_...
def test_eight_processes_times_5000_events_are_exactly_40000(
    tmp_path: Path, make_client: Callable[..., DecisionTraceClient]
) -> None:
    """8 processes x 5,000 events (batch) into one file: exactly 40,000, none twice, no
    "database is locked" reaching a caller, readers consistent throughout."""
    reader = make_client()
    _run_writers(tmp_path, reader, durability="batch", workers=8, count=5000)
    assert _snapshot(reader.db_path) == (40_000, 40_000, 40_000)
    for worker in range(8):
        events = reader.query(tags=[f"w{worker}"], limit=None)
        assert sorted(e.decision.context["i"] for e in events) == list(range(5000))  # type: ignore[union-attr]


def test_sync_writers_in_parallel_processes_lose_nothing(
    tmp_path: Path, make_client: Callable[..., DecisionTraceClient]
) -> None:
    """The same with durability="sync": every commit contends for the write lock."""
    reader = make_client()
    _run_writers(tmp_path, reader, durability="sync", workers=4, count=400)
    assert _snapshot(reader.db_path) == (1600, 1600, 1600)


@pytest.mark.parametrize(("durability", "count"), [("batch", 5000), ("sync", 300)])
def test_eight_threads_through_one_client(
    make_client: Callable[..., DecisionTraceClient], durability: str, count: int
) -> None:
    """8 threads recording through one client: every event stored once, no error."""
    client = make_client(durability=durability)
    errors: list[BaseException] = []
    ids: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def work(worker: int) -> None:
        try:
            start.wait()
            for i in range(count):
                ids[worker].append(
                    client.trace("price.changed", f"thread {worker} event {i}")
                    .by_ai_agent(f"agent-{worker}", "Pricer")
                    .affecting_product(f"P-{worker}-{i}", {"price": i})
                    .because("demand", context={"worker": worker, "i": i})
                    .with_tags(f"w{worker}")
                    .record()
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=CHILD_TIMEOUT_S)
    assert not errors
    assert client.flush()
    assert client.stats().failed == 0
    all_ids = {event_id for worker_ids in ids for event_id in worker_ids}
    assert len(all_ids) == 8 * count
    assert stored_ids(client.db_path) == all_ids
    assert len(client.query(tags=["w3"], limit=None)) == count
    assert _snapshot(client.db_path) == (8 * count,) * 3


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/self/fd")
def test_readers_in_short_lived_threads_do_not_leak_connections(
    make_client: Callable[..., DecisionTraceClient],
) -> None:
    """A thread-per-request server: every request thread queries once, then ends. The
    ledger must not keep a connection (and its file descriptors) per dead thread."""
    client = make_client()
    event_id = client.trace("a.b", "x").by_system("s").record()
    found: list[bool] = []

    def request() -> None:
        found.append(client.get_event(event_id) is not None)

    def open_fds() -> int:
        return len(list(Path("/proc/self/fd").iterdir()))

    request()
    before = open_fds()
    for _ in range(600):
        thread = threading.Thread(target=request)
        thread.start()
        thread.join()
    assert all(found) and len(found) == 601
    assert open_fds() - before < 20
