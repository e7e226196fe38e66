"""Shared fixtures: a fresh ledger per test (SQLite, or PostgreSQL too) and clients that
are always closed.

Running a test on both backends
-------------------------------
A test runs once per backend when it requests ``ledger_target``: as an argument, or with
``@pytest.mark.usefixtures("ledger_target")`` (a whole module: ``pytestmark = ...``).
``ledger_target`` is what a user would pass as ``db_path=`` or ``--db``: a file path
under ``tmp_path`` (``[sqlite]``) or a URL selecting a schema of its own on a PostgreSQL
server (``[postgres]``). In such a test, ``make_client`` and ``client`` open their
clients on ``ledger_target``; in every other test they stay on ``db_path``, the SQLite
file, as before. So tests move to both backends one at a time, each visibly, by asking
for the fixture; nothing changes for a test that does not.

``@pytest.mark.sqlite_only`` keeps a test that requests ``ledger_target`` (say, through
its module's ``pytestmark``) off PostgreSQL: its ``[postgres]`` variant is deselected
at collection, not skipped, so it is not reported as a missing PostgreSQL run.

``-k sqlite`` or ``-k postgres`` runs one backend's variants. Where the PostgreSQL
server comes from, what happens without one (a skip; a failure under ``CI=true``) and
``restart_server()`` are in ``tests/pg_support.py`` and docs/contributing.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pg_support
import pytest

from decision_trace import DecisionTraceClient

REPO_ROOT = Path(__file__).resolve().parent.parent

SLOW_DIRECTORIES = (REPO_ROOT / "tests" / "reliability",)
"""Every test under these folders is marked slow (new files there are covered too)."""
SLOW_FILES = (
    REPO_ROOT / "tests" / "test_benchmarks_smoke.py",
    # A real browser against a real server: about two minutes on a loaded 2-core machine.
    REPO_ROOT / "tests" / "test_web_browser.py",
)
SLOW_TESTS = ("tests/test_cli.py::test_export_streams_in_bounded_memory",)
"""Single slow tests in otherwise quick files (up to a minute each on a loaded machine)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the reliability tests, the benchmark smoke tests and the browser tests ``slow``
    by their path, so that ``make quick`` (``pytest -m "not slow"``) leaves them out.
    Other slow tests carry ``@pytest.mark.slow`` themselves."""
    for item in items:
        path = item.path.resolve()
        slow_test = item.nodeid.split("[")[0] in SLOW_TESTS
        if slow_test or path in SLOW_FILES or any(path.is_relative_to(d) for d in SLOW_DIRECTORIES):
            item.add_marker(pytest.mark.slow)
    postgres_only_too = [item for item in items if _is_sqlite_only_postgres_variant(item)]
    if postgres_only_too:
        config.hook.pytest_deselected(items=postgres_only_too)
        deselected = set(postgres_only_too)
        items[:] = [item for item in items if item not in deselected]


def _is_sqlite_only_postgres_variant(item: pytest.Item) -> bool:
    """The ``[postgres]`` variant of a test marked ``sqlite_only``."""
    callspec = getattr(item, "callspec", None)
    return (
        callspec is not None
        and callspec.params.get("ledger_target") == "postgres"
        and item.get_closest_marker("sqlite_only") is not None
    )


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


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pg_support.PgServer]:
    """The PostgreSQL server of this test process (under xdist: of this worker), found
    or started on first use; skips the test (fails it under CI) when there is none."""
    yield pg_support.server()
    pg_support.shutdown()


@pytest.fixture
def pg_url(pg_server: pg_support.PgServer) -> Iterator[str]:
    """A URL selecting a new empty schema of its own, dropped after the test."""
    with pg_server.schema() as schema:
        yield schema.url


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The ledger a user would name (``db_path=``, ``--db``), once per backend: a SQLite
    file that does not exist yet, then a PostgreSQL URL with a schema of its own."""
    if request.param == "sqlite":
        return str(tmp_path / "traces.db")
    url: str = request.getfixturevalue("pg_url")
    return url


ClientT = TypeVar("ClientT", bound=DecisionTraceClient)


class MakeClient(Protocol):
    def __call__(self, client_class: type[ClientT] = ..., **kwargs: Any) -> ClientT: ...


@pytest.fixture
def make_client(request: pytest.FixtureRequest, db_path: Path) -> Iterator[MakeClient]:
    """Build clients (default: a ``DecisionTraceClient`` on ``ledger_target`` if the test
    requests it, else on ``db_path``; pass ``client_class=EcommerceClient`` for another
    kind); every one is closed after the test, before its ledger is dropped."""
    made: list[DecisionTraceClient] = []
    default_db: str | Path = db_path
    if "ledger_target" in request.fixturenames:
        default_db = request.getfixturevalue("ledger_target")

    def make(client_class: type[Any] = DecisionTraceClient, **kwargs: Any) -> Any:
        kwargs.setdefault("db_path", default_db)
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
