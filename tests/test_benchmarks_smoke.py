"""Smoke test of the benchmarks: each script runs in --quick mode and reports its ratio.

No timing is asserted here (the machine is shared and the sizes are tiny); the numbers
that count are in benchmarks/RESULTS.md.

``bench_ingest.py`` measures SQLite and PostgreSQL: it is given the tests' PostgreSQL
server (the ``pg_server`` fixture) as ``$DECISION_TRACE_BENCH_PG`` and must then report
both; without a server (outside CI) it reports SQLite only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

SCRIPTS = sorted((REPO_ROOT / "benchmarks").glob("bench_*.py"))

WITH_POSTGRES = {"bench_ingest": ("ratio ingest/write postgresql", "postgresql: server peak RSS")}
"""Scripts that also measure PostgreSQL, and the lines they must print when given one."""
REQUIRED = {"bench_ingest": ("ratio ingest/write sqlite", "sqlite: server peak RSS")}
"""Lines a script must always print."""


def test_every_benchmark_is_found() -> None:
    assert len(SCRIPTS) >= 7


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_runs_in_quick_mode(
    script: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = dict(os.environ)
    required = list(REQUIRED.get(script.stem, ()))
    if script.stem in WITH_POSTGRES:
        try:
            env["DECISION_TRACE_BENCH_PG"] = request.getfixturevalue("pg_server").url
        except pytest.skip.Exception:
            env["DECISION_TRACE_BENCH_PG"] = "postgresql://nobody@127.0.0.1:1/none"
        else:
            required += WITH_POSTGRES[script.stem]
        # It holds the test suite's server-restart lock, kept in the temporary folder the
        # tests use, not in the one TMPDIR names for the benchmark.
        env["DECISION_TRACE_PG_LOCK_DIR"] = tempfile.gettempdir()
    env["DECISION_TRACE_BENCH_CACHE"] = str(tmp_path / "cache")
    env["TMPDIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, str(script), "--quick"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ratio_lines = [line for line in result.stdout.splitlines() if line.startswith("ratio ")]
    assert ratio_lines, result.stdout
    for line in ratio_lines:
        assert "target" in line and ("MET" in line or "MISSED" in line), line
    for text in required:
        assert text in result.stdout, result.stdout
