"""Event ids: an application that seeds Python's global random generator (a simulation,
a reproducible ML job) must not make decision-trace reuse ids, or the ledger would
take new events for duplicates of stored ones."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

from reliability_support import run_python, write_script

from decision_trace import DecisionTraceClient

SEEDED_JOB = """
    import random, sys
    from decision_trace import DecisionTraceClient

    random.seed(42)  # the job wants reproducible numbers
    with DecisionTraceClient(db_path=sys.argv[1]) as client:
        for i in range(5):
            client.trace("job.step", f"step {i}").by_compute("nightly").record()
"""


def test_reseeding_random_in_process_loses_no_event(
    make_client: Callable[..., DecisionTraceClient],
) -> None:
    client = make_client()
    ids = []
    for i in range(20):
        random.seed(1234)
        ids.append(client.trace("sim.step", f"step {i}").by_compute("sim").record())
    assert len(set(ids)) == 20
    assert len(client.query(limit=None)) == 20


def test_same_seeded_job_run_twice_stores_both_runs(tmp_path: Path) -> None:
    db = tmp_path / "traces.db"
    script = write_script(tmp_path, "job.py", SEEDED_JOB)
    for _ in range(2):
        result = run_python(script, str(db))
        assert result.returncode == 0, result.stderr
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT count(DISTINCT id) FROM events").fetchone()[0] == 10
        assert conn.execute("SELECT count(DISTINCT trace_id) FROM events").fetchone()[0] == 10
    finally:
        conn.close()
