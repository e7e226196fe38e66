"""A real browser for the web view's tests: the system's Chromium, driven by Playwright.

Test modules import what they need by name (``from browser_support import launch``).

Which browser (see :func:`find_chromium`):

1. ``DECISION_TRACE_TEST_CHROMIUM``, the path of a Chromium (or Chrome) executable, if
   set. If it does not name an executable file the browser tests do **not** fall back to
   another browser: they skip (fail under CI) with the reason.
2. ``chromium``, then ``chromium-browser``, on ``PATH`` (Debian's and Ubuntu's names).
3. Otherwise every browser test skips with a reason that says how to enable them; under
   CI (``CI=true``) it fails with that reason instead (:func:`unavailable`), as the
   PostgreSQL tests do (``tests/pg_support.py``).

Playwright (the ``test`` extra) brings its driver but no browser, and the tests never
download one (no ``playwright install``): it launches the system's executable
(``executable_path``), headless, with the background services that would reach for the
network switched off (the machines the tests run on may have none).

Screenshots go to :func:`artifacts_dir`: ``$DECISION_TRACE_TEST_ARTIFACTS``, else
``test-artifacts/`` at the repository root (ignored by git), under ``web/``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest
from pg_support import in_ci
from playwright.sync_api import Browser, sync_playwright

ENV_BROWSER = "DECISION_TRACE_TEST_CHROMIUM"
"""The environment variable naming the browser executable for the tests."""

ENV_ARTIFACTS = "DECISION_TRACE_TEST_ARTIFACTS"
"""The environment variable naming the folder the tests save screenshots in."""

NAMES = ("chromium", "chromium-browser")
"""Executables looked for on ``PATH`` when ``DECISION_TRACE_TEST_CHROMIUM`` is not set."""

HOW_TO_ENABLE = (
    f"to run them, install Chromium (Debian/Ubuntu: sudo apt-get install chromium) so that "
    f"one of {', '.join(NAMES)} is on PATH, or set {ENV_BROWSER} to a Chromium executable"
)

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium keeps calling home (updates, safe browsing, sync) and, with
    # no network, floods its log with refused connections.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
"""The command-line switches the browser is launched with."""

REPO_ROOT = Path(__file__).resolve().parent.parent


def find_chromium(environ: Mapping[str, str] | None = None) -> tuple[str | None, str]:
    """The browser executable and where it came from, or None and why there is none.

    Args:
        environ: The environment to read (default: ``os.environ``).
    """
    env = os.environ if environ is None else environ
    named = env.get(ENV_BROWSER, "").strip()
    if named:
        path = Path(named).expanduser()
        found = shutil.which(str(path)) if path.parent == Path() else None
        if found is not None:
            return found, f"{ENV_BROWSER}={named}"
        if path.is_file() and os.access(path, os.X_OK):
            return str(path), f"{ENV_BROWSER}={named}"
        return None, f"{ENV_BROWSER}={named} is not an executable file"
    search_path = env.get("PATH", os.defpath)
    for name in NAMES:
        found = shutil.which(name, path=search_path)
        if found is not None:
            return found, f"{name} on PATH"
    return None, f"no browser: neither {' nor '.join(NAMES)} is on PATH"


def unavailable(reason: str, environ: Mapping[str, str] | None = None) -> NoReturn:
    """Skip the current test because there is no browser; under CI, fail it.

    Args:
        reason: Why there is no browser, and how to get one.
        environ: The environment to read ``CI`` from (default: ``os.environ``).
    """
    if in_ci(environ):
        pytest.fail(f"{reason} [CI is set, so the browser tests must run]", pytrace=False)
    pytest.skip(reason)


def chromium_or_skip(environ: Mapping[str, str] | None = None) -> str:
    """The browser's executable; skips the test (fails it under CI) when there is none.

    Args:
        environ: The environment to read (default: ``os.environ``).
    """
    executable, why = find_chromium(environ)
    if executable is None:
        unavailable(f"browser tests: {why}; {HOW_TO_ENABLE}", environ)
    return executable


@contextmanager
def launch() -> Iterator[Browser]:
    """The system's Chromium, headless, for as long as the block runs."""
    executable = chromium_or_skip()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=list(CHROMIUM_ARGS), headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


def artifacts_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the web view's screenshots go (made if missing): ``web/`` under
    ``$DECISION_TRACE_TEST_ARTIFACTS``, else under ``test-artifacts/`` at the repo root."""
    env = os.environ if environ is None else environ
    base = env.get(ENV_ARTIFACTS, "").strip()
    path = (Path(base).expanduser() if base else REPO_ROOT / "test-artifacts") / "web"
    path.mkdir(parents=True, exist_ok=True)
    return path
