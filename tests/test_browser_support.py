"""tests/browser_support.py: which browser the web view's tests use, and what happens
without one (a skip with the way to enable them; a failure under CI)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from browser_support import (
    ENV_ARTIFACTS,
    ENV_BROWSER,
    artifacts_dir,
    chromium_or_skip,
    find_chromium,
    launch,
)


def _outcome(fn: Callable[[], object]) -> BaseException:
    try:
        fn()
    except BaseException as error:  # pytest's skip and fail are BaseExceptions
        return error
    raise AssertionError("neither skipped nor failed")


def _executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_the_named_browser_is_the_one_used(tmp_path: Path) -> None:
    browser = _executable(tmp_path / "my-chrome")
    assert find_chromium({ENV_BROWSER: str(browser), "PATH": ""}) == (
        str(browser),
        f"{ENV_BROWSER}={browser}",
    )


def test_a_named_browser_that_is_not_there_is_not_replaced_by_another(tmp_path: Path) -> None:
    _executable(tmp_path / "chromium")
    missing = tmp_path / "nowhere" / "chrome"
    executable, why = find_chromium({ENV_BROWSER: str(missing), "PATH": str(tmp_path)})
    assert executable is None
    assert str(missing) in why and "not an executable" in why


def test_chromium_then_chromium_browser_on_path(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    _executable(second / "chromium-browser")
    path = os.pathsep.join([str(first), str(second)])
    assert find_chromium({"PATH": path}) == (
        str(second / "chromium-browser"),
        "chromium-browser on PATH",
    )
    _executable(first / "chromium")
    assert find_chromium({"PATH": path}) == (str(first / "chromium"), "chromium on PATH")


@pytest.mark.parametrize("environ", [{}, {"CI": "false"}, {"CI": ""}])
def test_outside_ci_no_browser_skips_and_says_how_to_enable(
    environ: dict[str, str], tmp_path: Path
) -> None:
    skipped = _outcome(lambda: chromium_or_skip({**environ, "PATH": str(tmp_path)}))
    assert isinstance(skipped, pytest.skip.Exception)
    assert "apt-get install chromium" in str(skipped)
    assert ENV_BROWSER in str(skipped)


@pytest.mark.parametrize("ci", ["true", "TRUE", "1"])
def test_under_ci_no_browser_fails(ci: str, tmp_path: Path) -> None:
    failed = _outcome(lambda: chromium_or_skip({"CI": ci, "PATH": str(tmp_path)}))
    assert isinstance(failed, pytest.fail.Exception)
    assert "CI is set" in str(failed)
    assert "apt-get install chromium" in str(failed)


def test_screenshots_go_under_the_folder_the_environment_names(tmp_path: Path) -> None:
    folder = artifacts_dir({ENV_ARTIFACTS: str(tmp_path / "kept")})
    assert folder == tmp_path / "kept" / "web"
    assert folder.is_dir()


def test_screenshots_go_under_test_artifacts_by_default() -> None:
    folder = artifacts_dir({})
    assert folder == Path(__file__).resolve().parent.parent / "test-artifacts" / "web"


def test_the_system_browser_starts_headless_and_renders() -> None:
    with launch() as browser:
        page = browser.new_page()
        page.set_content("<p id=p>ok</p>")
        assert page.inner_text("#p") == "ok"
