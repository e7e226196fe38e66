"""Packaging: public API, entry points, console script, no top-level `exporters`; the
wheel and sdist build, and the wheel works when installed on its own."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile
from importlib.metadata import distribution, entry_points
from pathlib import Path

import pytest
from click.testing import CliRunner

import decision_trace
from decision_trace.cli import main
from decision_trace.exporters import SQLiteSpanExporter

REPO_ROOT = Path(__file__).resolve().parent.parent
DIST_NAME = "decision-trace-otel"
"""Our distribution name: ``decision-trace`` on PyPI is an unrelated project."""


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


def test_distribution_is_named_decision_trace_otel() -> None:
    dist = distribution(DIST_NAME)
    assert dist.metadata["Name"] == DIST_NAME
    assert {(e.group, e.name, e.value) for e in dist.entry_points} == {
        ("console_scripts", "decision-trace", "decision_trace.cli:main"),
        (
            "opentelemetry_traces_exporter",
            "decision_trace",
            "decision_trace.exporters:SQLiteSpanExporter",
        ),
    }


def test_version_option_reads_our_distribution() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"decision-trace, version {distribution(DIST_NAME).version}"


# Run by the installed wheel's interpreter, from a directory outside the source tree.
INSTALLED_CHECK = """
    import json, os, sys
    from importlib.metadata import entry_points

    import decision_trace
    from decision_trace import DecisionTraceClient

    venv = sys.argv[1]
    assert decision_trace.__file__.startswith(venv), decision_trace.__file__
    try:
        import exporters  # noqa: F401
    except ModuleNotFoundError:
        top_level_exporters = False
    else:
        top_level_exporters = True

    # The OTel entry point, resolved and used the way opentelemetry-instrument does.
    found = [e for e in entry_points(group="opentelemetry_traces_exporter")
             if e.name == "decision_trace"]
    exporter_class = found[0].load()
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter_class()))
    provider.get_tracer("shop").start_span("GET /orders").end()
    provider.shutdown()

    with DecisionTraceClient(db_path=os.environ["DECISION_TRACE_DB"]) as client:
        event_id = client.trace("order.refunded", "Refund for a damaged parcel") \\
            .by_system("billing") \\
            .affecting_order("ord-1", state_before={"status": "paid"},
                             state_after={"status": "refunded"}) \\
            .because("parcel arrived damaged") \\
            .record()
    print(json.dumps({
        "event_id": event_id,
        "top_level_exporters": top_level_exporters,
        "entry_points": [(e.dist.name, e.value) for e in found],
        "exporter": f"{exporter_class.__module__}.{exporter_class.__qualname__}",
    }))
"""


def _copy_source(destination: Path) -> Path:
    """The files a build sees, without this checkout's venv, caches and build output."""
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "*.db*"
    )
    shutil.copytree(REPO_ROOT, destination, ignore=ignore)
    return destination


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.slow
def test_wheel_and_sdist_build_and_the_wheel_works_installed(tmp_path: Path) -> None:
    """`python -m build` makes the sdist, then the wheel *from the sdist* (so the sdist holds
    everything a build needs); the wheel, installed into a fresh venv, runs the CLI, a
    record + query round trip and the OTel entry point from outside the source tree.

    To stay fast and offline the build uses this venv's setuptools (--no-isolation) and the
    fresh venv borrows this venv's site-packages for the dependencies (a .pth path entry:
    the editable install's own .pth files are not processed through it, so the only
    ``decision_trace`` it can import is the wheel's; the check below asserts that)."""
    source = _copy_source(tmp_path / "src")
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, source, cwd=tmp_path)
    (sdist,) = dist.glob("decision_trace_otel-*.tar.gz")
    (wheel,) = dist.glob("decision_trace_otel-*-py3-none-any.whl")

    with tarfile.open(sdist) as archive:
        in_sdist = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"pyproject.toml", "README.md", "LICENSE", "exporters/sqlite.py"} <= in_sdist
    assert {"decision_trace/cli.py", "decision_trace/py.typed"} <= in_sdist
    assert "decision_trace/server/web/templates/base.html" in in_sdist
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
        (metadata_name,) = [n for n in in_wheel if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(metadata_name).decode()
    assert f"Name: {DIST_NAME}\n" in metadata
    assert {"decision_trace/py.typed", "decision_trace/exporters/sqlite.py"} <= in_wheel
    assert {"decision_trace/server/app.py", "decision_trace/server/ingest.py"} <= in_wheel
    # The web view's templates and static files, every one of them (the pages need all).
    web = Path(__file__).parent.parent / "decision_trace" / "server" / "web"
    web_files = {
        f"decision_trace/server/web/{path.relative_to(web).as_posix()}"
        for folder in ("templates", "static")
        for path in (web / folder).iterdir()
    }
    assert len(web_files) >= 10
    assert web_files <= in_wheel, web_files - in_wheel
    assert web_files <= in_sdist, web_files - in_sdist
    assert {name.split("/")[0] for name in in_wheel} == {
        "decision_trace",
        metadata_name.split("/")[0],
    }

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "--quiet",
        "--no-deps",
        "--no-index",
        wheel,
        cwd=tmp_path,
    )
    purelib = _run(
        python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path
    ).strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "_test_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    ledger = outside / "ledger.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "OTEL_"))}
    env["DECISION_TRACE_DB"] = str(ledger)
    cli = venv / "bin" / "decision-trace"

    assert "Usage: decision-trace" in _run(cli, "--help", cwd=outside, env=env)
    version = _run(cli, "--version", cwd=outside, env=env)
    assert version.strip() == f"decision-trace, version {distribution(DIST_NAME).version}"

    script = outside / "check.py"
    script.write_text(textwrap.dedent(INSTALLED_CHECK))
    report = json.loads(_run(python, script, str(venv), cwd=outside, env=env))
    assert report["top_level_exporters"] is False
    assert report["entry_points"] == [[DIST_NAME, "decision_trace.exporters:SQLiteSpanExporter"]]
    assert report["exporter"] == "decision_trace.exporters.sqlite.SQLiteSpanExporter"

    (story,) = [
        json.loads(line)
        for line in _run(cli, "why", "order:ord-1", "--json", cwd=outside, env=env).splitlines()
    ]
    assert story["id"] == report["event_id"]
    assert story["decision"]["reasoning"] == "parcel arrived damaged"
    assert story["objects"][0]["state_after"] == {"status": "refunded"}
    listed = [
        json.loads(line)
        for line in _run(cli, "events", "--json", cwd=outside, env=env).splitlines()
    ]
    assert sorted(e["event_type"] for e in listed) == ["GET /orders", "order.refunded"]
