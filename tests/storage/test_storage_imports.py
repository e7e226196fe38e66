"""The storage layer knows no OpenTelemetry: a CLI, a server or a script that only reads a
ledger never pays for importing the SDK."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_storage_layer_imports_no_opentelemetry() -> None:
    code = (
        "import sys\n"
        "import decision_trace.storage, decision_trace.storage.sqlite, decision_trace.record\n"
        "from decision_trace import ChainNode, StoreError, TraceEvent\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'opentelemetry'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_recording_api_is_still_one_import_away() -> None:
    code = (
        "import sys, decision_trace\n"
        "assert 'opentelemetry.sdk' not in sys.modules\n"
        "from decision_trace import DecisionTraceClient, EcommerceClient, TraceBuilder\n"
        "assert 'opentelemetry.sdk' in sys.modules\n"
        "assert set(decision_trace.__all__) <= set(dir(decision_trace))\n"
        "print(all(getattr(decision_trace, name) for name in decision_trace.__all__))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_a_sqlite_ledger_never_imports_psycopg(tmp_path: object) -> None:
    code = (
        "import sys\n"
        "from decision_trace import DecisionTraceClient\n"
        "from decision_trace.storage import open_ledger, EventFilters\n"
        f"client = DecisionTraceClient(db_path={str(tmp_path) + '/t.db'!r})\n"
        "client.trace('order.refunded', 'Refund').by_user('u').record()\n"
        "client.close()\n"
        f"ledger = open_ledger({str(tmp_path) + '/t.db'!r}, read_only=True)\n"
        "assert ledger.count(EventFilters()) == 1\n"
        "import decision_trace.cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('psycopg', 'psycopg_pool')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
