"""Shared fixtures: a fresh SQLite file per test and clients that are always closed."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from decision_trace import DecisionTraceClient

REPO_ROOT = Path(__file__).resolve().parent.parent

SLOW_DIRECTORIES = (REPO_ROOT / "tests" / "reliability",)
"""Every test under these folders is marked slow (new files there are covered too)."""
SLOW_FILES = (REPO_ROOT / "tests" / "test_benchmarks_smoke.py",)
SLOW_TESTS = ("tests/test_cli.py::test_export_streams_in_bounded_memory",)
"""Single slow tests in otherwise quick files (up to a minute each on a loaded machine)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the reliability tests and the benchmark smoke tests ``slow`` by their path, so
    that ``make quick`` (``pytest -m "not slow"``) leaves them out. Other slow tests carry
    ``@pytest.mark.slow`` themselves."""
    for item in items:
        path = item.path.resolve()
        slow_test = item.nodeid.split("[")[0] in SLOW_TESTS
        if slow_test or path in SLOW_FILES or any(path.is_relative_to(d) for d in SLOW_DIRECTORIES):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the developer's real ledger, collector or OTel settings."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.delenv("DECISION_TRACE_DB", raising=False)
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A database path that does not exist yet."""
    return tmp_path / "traces.db"


ClientT = TypeVar("ClientT", bound=DecisionTraceClient)


class MakeClient(Protocol):
    def __call__(self, client_class: type[ClientT] = ..., **kwargs: Any) -> ClientT: ...


@pytest.fixture
def make_client(db_path: Path) -> Iterator[MakeClient]:
    """Build clients (default: a ``DecisionTraceClient`` on ``db_path``; pass
    ``client_class=EcommerceClient`` for another kind); every one is closed after the test."""
    made: list[DecisionTraceClient] = []

    def make(client_class: type[Any] = DecisionTraceClient, **kwargs: Any) -> Any:
        kwargs.setdefault("db_path", db_path)
        client = client_class(**kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture(params=["batch", "sync"])
def client(
    request: pytest.FixtureRequest, make_client: Callable[..., DecisionTraceClient]
) -> DecisionTraceClient:
    """A client on a fresh file, once per durability mode."""
    return make_client(durability=request.param)
