"""The Guarantees sections of docs/guarantees.md, docs/shipping.md and docs/proving.md
name only tests that exist, and every reliability test module is named in
docs/guarantees.md."""

from __future__ import annotations

import ast
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parent.parent / "docs" / "guarantees.md"


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    return text.split("\n## Guarantees\n", 1)[1].split("\n## ", 1)[0]


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }


def test_every_guarantee_names_an_existing_test() -> None:
    named = re.findall(r"`(test_rel_\w+\.py)::(test_\w+)`", _section())
    assert len(named) >= 30
    for module, test in named:
        assert test in _tests_in(HERE / module), f"{module}::{test} named in docs/guarantees.md"


def test_every_reliability_module_backs_a_guarantee() -> None:
    section = _section()
    for path in sorted(HERE.glob("test_rel_*.py")):
        if path.name != Path(__file__).name:
            assert f"`{path.name}::" in section, path.name


SHIPPING = HERE.parent.parent / "docs" / "shipping.md"


def test_every_shipping_guarantee_names_an_existing_test() -> None:
    text = SHIPPING.read_text(encoding="utf-8")
    section = text.split("\n## Guarantees\n", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"`(?:tests/(?:reliability/)?)?(test_\w+\.py)::(test_\w+)`", section)
    assert len(named) >= 20
    for module, test in named:
        folder = HERE if module.startswith("test_rel_") else HERE.parent
        assert test in _tests_in(folder / module), f"{module}::{test} named in docs/shipping.md"


PROVING = HERE.parent.parent / "docs" / "proving.md"


def test_every_proving_guarantee_names_an_existing_test() -> None:
    text = PROVING.read_text(encoding="utf-8")
    section = text.split("\n## Each guarantee and its test\n", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"`tests/((?:reliability/|storage/)?test_\w+\.py)::(test_\w+)`", section)
    assert len(named) >= 30
    for module, test in named:
        assert test in _tests_in(HERE.parent / module), f"{module}::{test} named in docs/proving.md"
