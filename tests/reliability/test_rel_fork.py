"""Fork: a client created before os.fork() (the gunicorn preload pattern) keeps working
in the parent and every child, without deadlock and without losing events. On both
backends: a child must neither use nor close the parent's SQLite connections or
PostgreSQL sessions."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_support import run_python, stored_ids, write_script

pytestmark = pytest.mark.usefixtures("ledger_target")

PRELOAD = """
    import os, sys, threading, time
    from decision_trace import DecisionTraceClient

    db, durability, out = sys.argv[1], sys.argv[2], sys.argv[3]
    client = DecisionTraceClient(db_path=db, durability=durability)

    def record(who, i):
        return client.trace("request.handled", f"{who} request {i}") \\
            .by_system(who) \\
            .affecting_order(f"ord-{who}-{i}", {"n": i}) \\
            .because("served", context={"who": who, "i": i}) \\
            .record()

    def save(who, ids):
        with open(os.path.join(out, f"{who}.ids"), "w") as f:
            f.write("\\n".join(ids))

    # The master records before forking, and a thread keeps recording *while* it forks,
    # so locks and the writer's transaction are caught mid-flight at fork().
    master_ids = [record("master", i) for i in range(200)]
    assert client.flush()  # so that children can read these back
    stop = threading.Event()
    background = []
    def churn():
        i = 0
        while not stop.is_set():
            background.append(record("master-bg", i))
            i += 1
    thread = threading.Thread(target=churn)
    thread.start()
    time.sleep(0.05)

    children = []
    for worker in range(4):
        time.sleep(0.01)
        pid = os.fork()
        if pid == 0:  # a worker: it must record, read and exit normally
            ids = [record(f"worker{worker}", i) for i in range(300)]
            assert client.get_event(ids[-1]) is not None
            assert client.get_event(master_ids[0]) is not None
            save(f"worker{worker}", ids)
            sys.exit(0)  # atexit flushes, as in a gunicorn worker
        children.append(pid)

    master_ids += [record("master", i) for i in range(200, 400)]
    stop.set()
    thread.join()
    deadline = time.monotonic() + 60
    codes = {}
    while len(codes) < len(children) and time.monotonic() < deadline:
        for pid in children:
            if pid not in codes:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[pid] = os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    for pid in children:
        if pid not in codes:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            codes[pid] = "deadlocked"
    assert client.flush()
    save("master", master_ids + background)
    print(sorted(codes.values(), key=str))
"""

MULTIPROCESSING = """
    import multiprocessing, os, sys
    from decision_trace import DecisionTraceClient

    db, durability, out = sys.argv[1], sys.argv[2], sys.argv[3]
    client = DecisionTraceClient(db_path=db, durability=durability)

    def work(worker):
        ids = [client.trace("job.step", f"{worker} {i}").by_compute(f"w{worker}").record()
               for i in range(500)]
        with open(os.path.join(out, f"mp{worker}.ids"), "w") as f:
            f.write("\\n".join(ids))
        # No flush(), no close(): multiprocessing ends the child with os._exit().

    if __name__ == "__main__":
        client.trace("job.started").by_compute("master").record()
        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=work, args=(w,)) for w in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        print([p.exitcode for p in procs])
"""


def _ids(out: Path) -> set[str]:
    ids: set[str] = set()
    for path in out.glob("*.ids"):
        ids.update(line for line in path.read_text().splitlines() if line)
    return ids


_stored = stored_ids
"""The ids in the ledger, after checking it is intact."""


@pytest.mark.parametrize("durability", ["batch", "sync"])
def test_client_created_before_fork_works_in_parent_and_children(
    tmp_path: Path, ledger_target: str, durability: str
) -> None:
    db = ledger_target
    out = tmp_path / "out"
    out.mkdir()
    script = write_script(tmp_path, "preload.py", PRELOAD)
    result = run_python(script, db, durability, str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[0, 0, 0, 0]", result.stderr
    recorded = _ids(out)
    assert len(recorded) >= 400 + 4 * 300
    assert recorded <= _stored(db)


@pytest.mark.parametrize("durability", ["batch", "sync"])
def test_multiprocessing_fork_children_lose_nothing(
    tmp_path: Path, ledger_target: str, durability: str
) -> None:
    """multiprocessing's fork children end with os._exit(), skipping atexit: their
    events must still reach the ledger."""
    db = ledger_target
    out = tmp_path / "out"
    out.mkdir()
    script = write_script(tmp_path, "mp.py", MULTIPROCESSING)
    result = run_python(script, db, durability, str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[0, 0, 0]", result.stdout
    recorded = _ids(out)
    assert len(recorded) == 3 * 500
    assert recorded <= _stored(db)
