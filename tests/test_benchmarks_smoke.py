"""Smoke test of the benchmarks: each script runs in --quick mode and reports its ratio.

No timing is asserted here (the machine is shared and the sizes are tiny); the numbers
that count are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

SCRIPTS = sorted((REPO_ROOT / "benchmarks").glob("bench_*.py"))


def test_every_benchmark_is_found() -> None:
    assert len(SCRIPTS) >= 7


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_runs_in_quick_mode(script: Path, tmp_path: Path) -> None:
    env = dict(os.environ)
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
