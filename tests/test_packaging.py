"""Packaging: public API, entry points, console script, no top-level `exporters`."""

from __future__ import annotations

import inspect
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import decision_trace
from decision_trace.exporters import SQLiteSpanExporter


def test_all_is_sorted_and_complete() -> None:
    assert decision_trace.__all__ == sorted(decision_trace.__all__)
    for name in decision_trace.__all__:
        assert hasattr(decision_trace, name), name
    # Everything public that is not a submodule must be listed in __all__.
    public = {
        name
        for name, value in vars(decision_trace).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public == set(decision_trace.__all__)


def test_exporter_entry_point_resolves_to_our_exporter(tmp_path: Path) -> None:
    (entry,) = [
        e for e in entry_points(group="opentelemetry_traces_exporter") if e.name == "decision_trace"
    ]
    assert entry.load() is SQLiteSpanExporter


def test_top_level_exporters_module_is_not_installed(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import exporters"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "No module named 'exporters'" in result.stderr


def test_py_typed_is_shipped() -> None:
    assert (Path(decision_trace.__file__).parent / "py.typed").exists()


def test_console_script_is_declared() -> None:
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("decision-trace") == "decision_trace.cli:main"
