"""Helpers for the reliability tests: run Python code in a real child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

CHILD_TIMEOUT_S = 120
"""No child process of these tests may live longer than this."""


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment (already isolated by conftest) plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def write_script(directory: Path, name: str, code: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(code), encoding="utf-8")
    return path


def run_python(
    script: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = CHILD_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` to completion in a fresh interpreter; output captured as text."""
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        env=child_env(env),
        timeout=timeout,
        check=False,
    )


@contextmanager
def started_python(
    script: Path, *args: str, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """Start ``script``; the child is always killed and reaped when the block ends."""
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(env),
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        try:
            proc.communicate(timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
