"""Smoke test of the benchmarks: each script runs in --quick mode and reports its ratio.

No timing is asserted here (the machine is shared and the sizes are tiny); the numbers
that count are in benchmarks/RESULTS.md.

``bench_ingest.py`` measures SQLite and PostgreSQL: it is given the tests' PostgreSQL
server (the ``pg_server`` fixture) as ``$DECISION_TRACE_BENCH_PG`` and must then report
both; without a server (outside CI) it reports SQLite only.

The PostgreSQL benchmarks (``bench_pg_*.py``) run against the tests' server (the
``pg_server`` fixture: ``$DECISION_TRACE_TEST_PG``, the local server, or a throwaway
cluster), given to them as ``$DECISION_TRACE_BENCH_PG``; without one they are skipped,
except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

SCRIPTS = sorted((REPO_ROOT / "benchmarks").glob("bench_*.py"))

WITH_POSTGRES = {"bench_ingest": ("ratio ingest/write postgresql", "postgresql: server peak RSS")}
"""Scripts that also measure PostgreSQL, and the lines they must print when given one."""
REQUIRED = {
    "bench_ingest": ("ratio ingest/write sqlite", "sqlite: server peak RSS"),
    "bench_shipping": (
        "ratio ship/ingest sqlite",
        "ratio record ship/no-ship tight",
        "ratio record ship/no-ship realistic",
        "shipped during a burst",
    ),
    "bench_verify": (
        "ratio verify events/s / 100,000",
        "read the rows (Python)",
        "sha256 of",
        "bytes per event:",
        "verify report: ok",
    ),
}
"""Lines a script must always print."""
RATIO_LINE = re.compile(r"ratio [^:]+: \d+\.\d\dx \(target (<=|>=) [\d.]+x\) (MET|MISSED)")
"""What ``_common.report_ratio`` prints: a number that parses, and the target."""


def test_every_benchmark_is_found() -> None:
    assert len(SCRIPTS) >= 10
    names = {script.stem for script in SCRIPTS}
    assert {"bench_pg_write", "bench_pg_end_to_end", "bench_pg_queries"} <= names
    assert "bench_shipping" in names
    assert "bench_verify" in names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_runs_in_quick_mode(
    script: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = dict(os.environ)
    required = list(REQUIRED.get(script.stem, ()))
    if script.stem.startswith("bench_pg_"):
        env["DECISION_TRACE_BENCH_PG"] = request.getfixturevalue("pg_server").url
    if script.stem in WITH_POSTGRES:
        try:
            env["DECISION_TRACE_BENCH_PG"] = request.getfixturevalue("pg_server").url
        except pytest.skip.Exception:
            env["DECISION_TRACE_BENCH_PG"] = "postgresql://nobody@127.0.0.1:1/none"
        else:
            required += WITH_POSTGRES[script.stem]
    env["DECISION_TRACE_BENCH_CACHE"] = str(tmp_path / "cache")
    # The PostgreSQL benchmarks hold the test suite's server-restart lock, kept in the
    # temporary folder the tests use, not in the one TMPDIR names for the benchmark.
    env["DECISION_TRACE_PG_LOCK_DIR"] = tempfile.gettempdir()
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
        assert RATIO_LINE.fullmatch(line), line
    for text in required:
        assert text in result.stdout, result.stdout


WEB_PAGES = (
    "timeline",
    "timeline by type",
    "timeline by actor",
    "timeline by object",
    "timeline by tag",
    "timeline 20 pages in",
    "object story",
    "event",
    "chain",
    "search",
    "stats",
)
"""The pages ``bench_web.py`` times, as its table names them."""


def test_bench_web_prints_a_row_of_numbers_per_page(tmp_path: Path) -> None:
    """A small ledger (``--events``): every page has its median, p95, query time and
    ratio, all numbers (none asserted: the full-size figures are in RESULTS.md)."""
    env = {**os.environ, "DECISION_TRACE_BENCH_CACHE": str(tmp_path / "cache")}
    env["TMPDIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_web.py", "--events", "3000", "--requests", "2"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert any("3,000 events" in line for line in lines), result.stdout
    for page in WEB_PAGES:
        (row,) = [line for line in lines if line.strip().startswith(page + "  ")]
        fields = row.strip()[len(page) :].split()
        median_ms, p95_ms = float(fields[0]), float(fields[1])
        query_ms, ratio, kib = float(fields[-3]), float(fields[-2].rstrip("x")), float(fields[-1])
        assert 0 < median_ms <= p95_ms or median_ms == p95_ms, row
        assert query_ms >= 0 and ratio > 0 and kib > 0, row
        (verdict,) = [line for line in lines if line.startswith(f"ratio {page} / 300 ms: ")]
        assert verdict.endswith(("MET", "MISSED")), verdict
    assert any(line.strip().startswith("all pages within target:") for line in lines)
