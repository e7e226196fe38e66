"""Event ids: an application that seeds Python's global random generator (a simulation,
a reproducible ML job) must not make decision-trace reuse ids, or the ledger would
take new events for duplicates of stored ones."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
from reliability_support import run_python, stored_column, write_script

from decision_trace import DecisionTraceClient

pytestmark = pytest.mark.usefixtures("ledger_target")

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


def test_same_seeded_job_run_twice_stores_both_runs(tmp_path: Path, ledger_target: str) -> None:
    script = write_script(tmp_path, "job.py", SEEDED_JOB)
    for _ in range(2):
        result = run_python(script, ledger_target)
        assert result.returncode == 0, result.stderr
    assert len(set(stored_column(ledger_target, "id"))) == 10
    assert len(set(stored_column(ledger_target, "trace_id"))) == 10
