"""The README and docs/ stay true: the README's example runs as written, with the answer
it promises, every relative link points at a file that exists, and the README stays a
short front door."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"
DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_readme_example_runs_and_the_cli_answers_why(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    (example,) = _blocks(text, "python")
    shell = next(block for block in _blocks(text, "bash") if "why" in block)
    script = tmp_path / "example.py"
    script.write_text(example, encoding="utf-8")
    ran = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "Support Assistant - Parcel arrived crushed; the customer sent photos\n"
    command = shell.split("#", 1)[0].split()
    assert command[0] == "decision-trace"
    why = subprocess.run(
        [sys.executable, "-m", "decision_trace", *command[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert why.returncode == 0, why.stderr
    assert "Parcel arrived crushed" in why.stdout
    assert "status: paid → refunded" in why.stdout


def test_every_relative_link_points_at_a_file() -> None:
    for page in [README, *DOCS]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text("utf-8")):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_readme_is_a_short_front_door() -> None:
    assert len(README.read_bytes()) <= 8_192
    for command in ("make demo", "make test"):
        assert command in README.read_text(encoding="utf-8")
