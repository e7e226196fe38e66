"""The PostgreSQL test infrastructure (tests/pg_support.py and the fixtures in
tests/conftest.py): where the server comes from, one schema per test, the backend
parametrization, and restarts."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pg_support
import psycopg
import pytest
from pg_support import (
    ENV_URL,
    PgServer,
    RestartLock,
    ThrowawayCluster,
    Unavailable,
    locate_server,
    redact,
    require,
    restart_server,
    unavailable,
    with_search_path,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
UNREACHABLE = "postgresql://postgres:s3cret@127.0.0.1:1/test"
"""Nothing listens on port 1: connecting is refused at once."""


def _current_schema(url: str) -> str:
    with pg_support.connect(url) as conn:
        row = conn.execute("SELECT current_schema()").fetchone()
    assert row is not None
    return str(row[0])


# --- URLs ---------------------------------------------------------------------------


def test_the_search_path_joins_the_options_already_in_the_url() -> None:
    url = "postgresql://u@h:5/db?sslmode=disable&options=-cstatement_timeout%3D5s"
    assert with_search_path(url, "dt_ab") == (
        "postgresql://u@h:5/db?sslmode=disable"
        "&options=-cstatement_timeout%3D5s%20-csearch_path%3Ddt_ab"
    )


def test_messages_never_show_the_password() -> None:
    assert redact(UNREACHABLE) == "postgresql://postgres:***@127.0.0.1:1/test"
    assert redact("postgresql://postgres@h/db") == "postgresql://postgres@h/db"


# --- which server, and what happens without one --------------------------------------


def test_a_set_but_unreachable_server_is_not_replaced_by_another() -> None:
    found = locate_server({ENV_URL: UNREACHABLE})
    assert isinstance(found, Unavailable)  # not the local server, not a throwaway one
    assert f"{ENV_URL}=postgresql://postgres:***@127.0.0.1:1/test is set" in found.reason
    assert "s3cret" not in found.reason


def test_without_any_server_the_reason_says_how_to_enable_the_tests() -> None:
    found = locate_server({}, local_url=UNREACHABLE, throwaway=False)
    assert isinstance(found, Unavailable)
    assert "local 127.0.0.1:1:" in found.reason
    assert f"set {ENV_URL}" in found.reason
    assert "run a local PostgreSQL" in found.reason


def _outcome(call: Callable[[], object]) -> BaseException:
    """What ``call`` raised: a skip and a failure are both exceptions to pytest."""
    with pytest.raises(BaseException) as raised:
        call()
    return raised.value


@pytest.mark.parametrize("ci", ["true", "TRUE", "1"])
def test_under_ci_a_missing_server_fails_the_test(ci: str) -> None:
    found = locate_server({ENV_URL: UNREACHABLE})
    failed = _outcome(lambda: require(found, {"CI": ci}))
    assert isinstance(failed, pytest.fail.Exception)
    assert "is set but the server cannot be used" in str(failed)
    assert "CI is set" in str(failed)
    assert isinstance(_outcome(lambda: unavailable("no server", {"CI": ci})), pytest.fail.Exception)


@pytest.mark.parametrize("environ", [{}, {"CI": "false"}, {"CI": ""}])
def test_outside_ci_a_missing_server_skips_the_test(environ: dict[str, str]) -> None:
    found = locate_server({ENV_URL: UNREACHABLE})
    skipped = _outcome(lambda: require(found, environ))
    assert isinstance(skipped, pytest.skip.Exception)
    assert "is set but the server cannot be used" in str(skipped)


def test_a_set_and_reachable_server_is_the_one_used(pg_server: PgServer) -> None:
    found = locate_server({ENV_URL: pg_server.url})
    assert isinstance(found, PgServer)
    assert (found.source, found.url) == ("env", pg_server.url)
    found.close()


# --- one schema per test -------------------------------------------------------------


def test_pg_url_selects_a_new_schema_of_its_own(pg_url: str, pg_server: PgServer) -> None:
    schema = _current_schema(pg_url)
    assert schema.startswith("dt_")
    assert pg_server.schema_exists(schema)
    with pg_support.connect(pg_url) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", [schema])
        assert tables.fetchone() == (0,)


def test_a_table_in_one_schema_is_invisible_from_another(pg_server: PgServer) -> None:
    with pg_server.schema() as first, pg_server.schema() as second:
        assert first.name != second.name
        assert _current_schema(first.url) == first.name
        assert _current_schema(second.url) == second.name
        with pg_support.connect(first.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE events (id text PRIMARY KEY)")
            conn.execute("INSERT INTO events VALUES ('a')")
        with pg_support.connect(second.url, autocommit=True) as conn:
            assert conn.execute("SELECT to_regclass('events')").fetchone() == (None,)
            with pytest.raises(psycopg.errors.UndefinedTable):
                conn.execute("SELECT * FROM events")
            conn.execute("CREATE TABLE events (id text PRIMARY KEY)")  # no clash either
            assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)


def test_the_schema_is_dropped_with_everything_in_it(pg_server: PgServer) -> None:
    with pg_server.schema() as schema:
        with pg_support.connect(schema.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE events (id text)")
            conn.execute("INSERT INTO events VALUES ('a')")
        assert pg_server.schema_exists(schema.name)
    assert not pg_server.schema_exists(schema.name)


def test_a_transaction_left_open_does_not_block_the_drop(pg_server: PgServer) -> None:
    impatient = PgServer(pg_server.url, pg_server.source, lock_timeout="200ms")
    try:
        with pytest.warns(pytest.PytestWarning, match="left 1 connection"):  # noqa: SIM117
            with impatient.schema() as schema:
                leaked = pg_support.connect(schema.url)
                leaked.execute("CREATE TABLE events (id text)")  # a transaction, still open
        assert not impatient.schema_exists(schema.name)
        with pytest.raises(psycopg.OperationalError):
            leaked.execute("SELECT 1")
    finally:
        leaked.close()
        impatient.close()


# --- the backend parametrization -----------------------------------------------------


class _FakeClient:
    """Stands in for a client: remembers what it was given, needs no database."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_make_client_opens_the_ledger_target(
    request: pytest.FixtureRequest, ledger_target: str, make_client: Any
) -> None:
    client = make_client(client_class=_FakeClient)
    assert client.kwargs["db_path"] == ledger_target
    on_postgres = request.node.name.endswith("[postgres]")
    assert ledger_target.startswith("postgresql://") == on_postgres
    if not on_postgres:
        assert ledger_target.endswith("traces.db")


def test_make_client_stays_on_db_path_without_ledger_target(
    request: pytest.FixtureRequest, db_path: Path, make_client: Any
) -> None:
    assert make_client(client_class=_FakeClient).kwargs["db_path"] == db_path
    assert "ledger_target" not in request.fixturenames


@pytest.mark.sqlite_only
def test_a_sqlite_only_test_runs_on_sqlite(
    request: pytest.FixtureRequest, ledger_target: str
) -> None:
    assert not ledger_target.startswith("postgresql://")
    assert request.node.name.endswith("[sqlite]")


def test_sqlite_only_deselects_the_postgres_variant_instead_of_skipping_it() -> None:
    here = Path(__file__).relative_to(REPO_ROOT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "CI"))}
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         f"{here}::test_a_sqlite_only_test_runs_on_sqlite",
         f"{here}::test_make_client_opens_the_ledger_target"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert collected.returncode == 0, collected.stdout + collected.stderr
    ids = [line for line in collected.stdout.splitlines() if "::" in line]
    assert ids == [
        f"{here}::test_a_sqlite_only_test_runs_on_sqlite[sqlite]",
        f"{here}::test_make_client_opens_the_ledger_target[sqlite]",
        f"{here}::test_make_client_opens_the_ledger_target[postgres]",
    ]
    assert "3/4 tests collected (1 deselected)" in collected.stdout


# --- the restart lock ----------------------------------------------------------------


def _blocked(hold: AbstractContextManager[None]) -> bool:
    """Whether taking ``hold`` (with a short timeout) had to give up."""
    try:
        with hold:
            return False
    except TimeoutError:
        return True


def test_a_restart_waits_for_tests_using_the_server_and_tests_wait_for_it(
    tmp_path: Path,
) -> None:
    test, restart = RestartLock(tmp_path / "lock"), RestartLock(tmp_path / "lock")
    try:
        with test.shared():
            assert _blocked(restart.exclusive(timeout=0.2))
            assert not _blocked(test.shared(timeout=0.2))  # nested in one process
            assert not _blocked(restart.shared(timeout=0.2))  # other tests run alongside
        with restart.exclusive(timeout=0.2):
            assert _blocked(test.shared(timeout=0.2))
        assert not _blocked(test.shared(timeout=0.2))
    finally:
        test.close()
        restart.close()


def test_a_test_holding_the_lock_may_restart_and_keeps_its_hold(tmp_path: Path) -> None:
    test, other = RestartLock(tmp_path / "lock"), RestartLock(tmp_path / "lock")
    try:
        with test.shared():
            with test.exclusive(timeout=0.2):
                assert _blocked(other.shared(timeout=0.2))
            assert _blocked(other.exclusive(timeout=0.2))  # the test's shared hold is back
            assert not _blocked(other.shared(timeout=0.2))
        assert not _blocked(other.exclusive(timeout=0.2))
    finally:
        test.close()
        other.close()


# --- throwaway clusters and restarts -------------------------------------------------


def test_stale_throwaway_directories_are_swept(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = Path(tempfile.mkdtemp(prefix=pg_support.THROWAWAY_PREFIX))
    live = Path(tempfile.mkdtemp(prefix=pg_support.THROWAWAY_PREFIX))
    try:
        (stale / "owner.pid").write_text(gone.stdout)
        (live / "owner.pid").write_text(f"{os.getpid()}\n")
        removed = pg_support.sweep_stale_clusters(pg_support.find_bindir() or tmp_path)
        assert stale in removed
        assert not stale.exists()
        assert live.exists()
    finally:
        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(live, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_a_throwaway_cluster_serves_restarts_and_goes_away() -> None:
    bindir = pg_support.find_bindir()
    if bindir is None:
        pytest.skip("initdb and pg_ctl not found: no throwaway cluster to test")
    cluster = ThrowawayCluster.start(bindir)
    server = PgServer(cluster.url, "throwaway", cluster)
    try:
        assert server.lock is None  # its own cluster: nobody to coordinate with
        with server.schema() as schema:
            assert _current_schema(schema.url) == schema.name
            with pg_support.connect(schema.url, autocommit=True) as conn:
                conn.execute("CREATE TABLE events (id text)")
                server.restart()
                with pytest.raises(psycopg.OperationalError):
                    conn.execute("SELECT 1")
            with pg_support.connect(schema.url) as conn:
                assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
        assert not server.schema_exists(schema.name)  # the admin connection came back
    finally:
        server.close()
    assert not cluster.directory.exists()
    assert not _listening(cluster.port)


@pytest.mark.slow
def test_restart_server_cuts_connections_and_the_server_comes_back(
    pg_server: PgServer, pg_url: str
) -> None:
    """Restarts the server this test process uses (the shared local one, if that is it)."""
    with pg_support.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id text)")
        conn.execute("INSERT INTO events VALUES ('a')")
        restart_server()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    with pg_support.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (1,)
    assert pg_server.schema_exists(_current_schema(pg_url))
