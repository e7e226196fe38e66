"""The examples run as real programs."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_basic_usage_runs_and_answers(tmp_path: Path) -> None:
    db_path = tmp_path / "basic.db"
    env = {**os.environ, "DECISION_TRACE_DB": str(db_path), "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "basic_usage.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Why was ord-123 refunded?  Refund approved due to product defect" in out
    assert "rejected replace: Customer requested full refund" in out
    assert "price.updated: Raised WIDGET-001 price by 5% (confidence 0.87)" in out
    assert "inventory.adjusted: 100 -> 101" in out
    assert "workflow.step: Label printed [failure]" in out
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 7
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
