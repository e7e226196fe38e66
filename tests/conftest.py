"""Shared fixtures: a fresh SQLite file per test and clients that are always closed."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from decision_trace import DecisionTraceClient

REPO_ROOT = Path(__file__).resolve().parent.parent


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
