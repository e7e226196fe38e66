"""PostgreSQL for the tests: find or start a server, one schema per test, restarts.

Test modules import what they need by name (``from pg_support import restart_server``);
the fixtures that use this module live in ``tests/conftest.py``.

Which server (decided once per test process, see :func:`locate_server`):

1. ``DECISION_TRACE_TEST_PG``, a libpq URL, if set. If that server cannot be reached the
   tests do **not** fall back to another one: the PostgreSQL tests skip (fail under CI)
   with the reason, so a typo never silently tests against some other server.
2. The local server at ``127.0.0.1:5432`` (user ``postgres``, database ``test``, trust
   authentication), if it answers.
3. A throwaway cluster made with ``initdb`` and ``pg_ctl`` (on ``PATH`` or under
   ``/usr/lib/postgresql/*/bin``) in a temporary directory on a free port, stopped and
   removed when the test process ends. Under pytest-xdist each worker has its own.
4. Otherwise every PostgreSQL test skips with a reason that says how to enable them;
   under CI (``CI=true``) it fails with that reason instead (:func:`unavailable`).

Each test works in its own schema ``dt_<hex>`` of the server's database, selected by the
URL the test is given (``?options=-csearch_path%3Ddt_...``), and dropped after the test.
The schema holds only what the test creates: the search path names that schema alone,
so objects in ``public`` (extensions among them) are not found unqualified.

One admin connection per test process creates and drops the schemas; it reconnects by
itself after :func:`restart_server`.

Restarting a shared server would cut the connections of tests running at the same time
in other processes, so every test that holds a schema also holds a shared lock (a file in
the temporary directory, per server address), and a restart waits for an exclusive one:
tests in other pytest-xdist workers, or other test runs on this machine, finish their
current test first and start their next one after the restart.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

ENV_URL = "DECISION_TRACE_TEST_PG"
"""The environment variable naming the server for the tests (a libpq URL)."""

LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/test"
"""The local server tried when ``DECISION_TRACE_TEST_PG`` is not set."""

HOW_TO_ENABLE = (
    f"to run them, set {ENV_URL} to a libpq URL (postgresql://user@host:port/database), "
    "or run a local PostgreSQL on 127.0.0.1:5432 (user postgres, database test, trust "
    "authentication), or install PostgreSQL's initdb and pg_ctl (on PATH or under "
    "/usr/lib/postgresql/*/bin)"
)

SCHEMA_PREFIX = "dt_"
"""Every per-test schema is this prefix and random hex digits."""

CONNECT_TIMEOUT_S = 5
"""libpq's connect_timeout for the admin connection and the probes (unless the URL sets one)."""

READY_TIMEOUT_S = 60.0
"""How long a restarted server may take to accept connections again."""

LOCK_TIMEOUT_S = 300.0
"""How long a test waits for another process's restart, or a restart for running tests."""

THROWAWAY_PREFIX = "decision-trace-pg-"
"""Temporary directories of throwaway clusters start with this."""

Source = Literal["env", "local", "throwaway"]


class ClusterError(Exception):
    """A throwaway cluster could not be made, started or stopped; the message says why."""


def in_ci(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the tests run under CI: ``CI`` is ``true`` (or ``1``, ``yes``; any case)."""
    env = os.environ if environ is None else environ
    return env.get("CI", "").strip().lower() in {"true", "1", "yes"}


def unavailable(reason: str, environ: Mapping[str, str] | None = None) -> NoReturn:
    """Skip the current test because PostgreSQL is not available; under CI, fail it.

    Args:
        reason: Why there is no server, and how to get one.
        environ: The environment to read ``CI`` from (default: ``os.environ``).
    """
    if in_ci(environ):
        pytest.fail(f"{reason} [CI is set, so the PostgreSQL tests must run]", pytrace=False)
    pytest.skip(reason)


def redact(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = quote(parts.username or "", safe="")
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def with_search_path(url: str, schema: str) -> str:
    """``url`` with libpq ``options`` that make ``schema`` the only schema searched.

    Options already in the URL are kept; the search path comes last, so it wins.

    >>> with_search_path("postgresql://postgres@127.0.0.1:5432/test", "dt_ab")
    'postgresql://postgres@127.0.0.1:5432/test?options=-csearch_path%3Ddt_ab'
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = [value for key, value in query if key == "options"]
    others = [(key, value) for key, value in query if key != "options"]
    options.append(f"-csearch_path={schema}")
    encoded = urlencode([*others, ("options", " ".join(options))], quote_via=quote)
    return urlunsplit(parts._replace(query=encoded))


def connect(url: str, **kwargs: Any) -> psycopg.Connection[tuple[Any, ...]]:
    """A psycopg connection to ``url``, with a connect timeout unless the URL has one."""
    if "connect_timeout" not in conninfo_to_dict(url):
        kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
    return psycopg.connect(url, **kwargs)


def _error_text(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _probe(url: str) -> str | None:
    """None if ``url`` accepts a connection, else why not (one line)."""
    try:
        with connect(url, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except (psycopg.Error, OSError) as error:
        return _error_text(error)
    return None


def _port_open(host: str, port: int) -> str | None:
    """None if something listens on ``host:port``, else why not (fast, no libpq)."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return None
    except OSError as error:
        return _error_text(error)


# --- the restart lock -------------------------------------------------------------


class RestartLock:
    """Tests hold it shared while they use a server; a restart holds it exclusively.

    Two ``flock`` files: the main lock (shared by tests, exclusive for a restart) and a
    gate that a restart holds while it waits, so tests that start meanwhile wait for the
    restart instead of starving it. Shared holds nest within one process.
    """

    def __init__(self, path: Path) -> None:
        """Lock on ``path`` (and ``path`` + ``.gate``); the files are made if missing."""
        self.path = path
        self._main = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
        self._gate = os.open(f"{path}.gate", os.O_RDONLY | os.O_CREAT, 0o666)
        self._shared = 0

    @staticmethod
    def _acquire(fd: int, operation: int, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, operation | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"waited {timeout:.0f}s for {what}") from None
                time.sleep(0.05)

    @contextlib.contextmanager
    def shared(self, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Hold the lock shared: no restart happens until the block ends."""
        if self._shared == 0:
            self._acquire(self._gate, fcntl.LOCK_EX, timeout, "a server restart to finish")
            try:
                self._acquire(self._main, fcntl.LOCK_SH, timeout, "a server restart to finish")
            finally:
                fcntl.flock(self._gate, fcntl.LOCK_UN)
        self._shared += 1
        try:
            yield
        finally:
            self._shared -= 1
            if self._shared == 0:
                fcntl.flock(self._main, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def exclusive(self, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Hold the lock alone (a shared hold of this process is given up meanwhile)."""
        held = self._shared > 0
        if held:
            fcntl.flock(self._main, fcntl.LOCK_UN)
        try:
            self._acquire(self._gate, fcntl.LOCK_EX, timeout, "another server restart")
        except BaseException:
            if held:
                self._acquire(self._main, fcntl.LOCK_SH, timeout, "another server restart")
            raise
        try:
            self._acquire(self._main, fcntl.LOCK_EX, timeout, "tests using the server")
            yield
        finally:
            # Back to what this process held. Only a gate holder ever holds the main
            # lock exclusively, so taking it shared while holding the gate never waits.
            fcntl.flock(self._main, fcntl.LOCK_SH if held else fcntl.LOCK_UN)
            fcntl.flock(self._gate, fcntl.LOCK_UN)

    def close(self) -> None:
        """Release everything and close the files."""
        os.close(self._main)
        os.close(self._gate)


def _lock_for(url: str) -> RestartLock | None:
    parts = urlsplit(url)
    name = re.sub(r"[^A-Za-z0-9.]+", "_", f"{parts.hostname or 'socket'}-{parts.port or 5432}")
    try:
        return RestartLock(Path(tempfile.gettempdir()) / f"decision-trace-pglock-{name}")
    except OSError:
        return None  # an unwritable temporary directory: no coordination, but no failure


# --- the throwaway cluster ----------------------------------------------------------


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: ``PATH`` first, then the newest
    ``/usr/lib/postgresql/*/bin``; None if neither has both."""
    initdb = shutil.which("initdb")
    if initdb is not None and (Path(initdb).parent / "pg_ctl").exists():
        return Path(initdb).parent

    def version(bindir: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", bindir.parent.name))

    candidates = [
        path.parent
        for path in Path("/usr/lib/postgresql").glob("*/bin/initdb")
        if (path.parent / "pg_ctl").exists()
    ]
    return max(candidates, key=version, default=None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ThrowawayCluster:
    """A PostgreSQL cluster of its own in a temporary directory, for one test process.

    ``initdb`` and ``pg_ctl`` refuse to run as root; as root they run as the ``postgres``
    user, which then owns the directory. Durability settings are off (``fsync=off``): a
    restart is a clean one, and the cluster is thrown away anyway.
    """

    def __init__(self, bindir: Path, directory: Path, port: int) -> None:
        """Describe a cluster; :meth:`start` makes one."""
        self.bindir = bindir
        self.directory = directory
        self.port = port
        self._stopped = False

    @property
    def data(self) -> Path:
        """The cluster's data directory."""
        return self.directory / "data"

    @property
    def log(self) -> Path:
        """The server's log file."""
        return self.directory / "server.log"

    @property
    def url(self) -> str:
        """The URL of the cluster's ``postgres`` database, as the ``postgres`` superuser."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @staticmethod
    def _run_as() -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            raise ClusterError(
                "initdb refuses to run as root and there is no postgres user to run it as"
            ) from None
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _run(self, *args: str, timeout: float = 120.0) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        try:
            subprocess.run(
                command,
                cwd=self.directory,
                check=True,
                capture_output=True,
                text=True,
                timeout=timeout,
                **self._run_as(),
            )
        except subprocess.CalledProcessError as error:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise ClusterError(
                f"{args[0]} {args[-1]} failed ({error.returncode}): "
                f"{' '.join((error.stderr or error.stdout or '').split())} {log}".strip()
            ) from None
        except (OSError, subprocess.TimeoutExpired) as error:
            raise ClusterError(f"{args[0]} {args[-1]}: {_error_text(error)}") from None

    @classmethod
    def start(cls, bindir: Path | None = None, attempts: int = 3) -> ThrowawayCluster:
        """Make and start a cluster on a free port.

        Raises:
            ClusterError: no initdb/pg_ctl, or the cluster would not start.
        """
        bindir = bindir or find_bindir()
        if bindir is None:
            raise ClusterError("initdb and pg_ctl not found (PATH, /usr/lib/postgresql/*/bin)")
        sweep_stale_clusters(bindir)
        run_as = cls._run_as()
        directory = Path(tempfile.mkdtemp(prefix=THROWAWAY_PREFIX))
        (directory / "owner.pid").write_text(f"{os.getpid()}\n")
        if run_as:
            os.chown(directory, run_as["user"], run_as["group"])
        cluster = cls(bindir, directory, _free_port())
        try:
            cluster._run(
                "initdb",
                "-D",
                str(cluster.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            )
            for attempt in range(attempts):
                with (cluster.data / "postgresql.conf").open("a") as conf:
                    conf.write(
                        f"\n# decision-trace tests\nport = {cluster.port}\n"
                        "listen_addresses = '127.0.0.1'\n"
                        f"unix_socket_directories = '{directory}'\n"
                        "fsync = off\n"
                    )
                try:
                    cluster._run(
                        "pg_ctl",
                        "-D",
                        str(cluster.data),
                        "-l",
                        str(cluster.log),
                        "-w",
                        "-t",
                        "60",
                        "start",
                    )
                    break
                except ClusterError:
                    if attempt == attempts - 1:
                        raise
                    cluster.port = _free_port()  # another process took the port meanwhile
        except BaseException:
            cluster.stop()
            raise
        atexit.register(cluster.stop)
        return cluster

    def restart(self) -> None:
        """Restart the server (fast shutdown: connections are cut, then it comes back)."""
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "-m",
            "fast",
            "restart",
        )

    def stop(self) -> None:
        """Stop the server and remove the directory; a second call does nothing."""
        if self._stopped:
            return
        if (self.data / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except ClusterError:
                return  # still running: keep its directory rather than orphan the server
        self._stopped = True
        shutil.rmtree(self.directory, ignore_errors=True)


def sweep_stale_clusters(bindir: Path) -> list[Path]:
    """Stop and remove throwaway clusters whose test process is gone (killed with -9).

    Args:
        bindir: Where ``pg_ctl`` is (a cluster that cannot be stopped is left alone).

    Returns:
        The directories removed.
    """
    removed = []
    for directory in Path(tempfile.gettempdir()).glob(f"{THROWAWAY_PREFIX}*"):
        try:
            owner = int((directory / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if _pid_alive(owner):
            continue
        ThrowawayCluster(bindir, directory, 0).stop()
        if not directory.exists():
            removed.append(directory)
    return removed


# --- the server and its schemas ---------------------------------------------------


_LOCK_HOLDERS = """
SELECT DISTINCT l.pid
FROM pg_locks l
JOIN pg_namespace n ON n.nspname = %(schema)s
LEFT JOIN pg_class c ON c.oid = l.relation
WHERE l.pid <> pg_backend_pid()
  AND (c.relnamespace = n.oid
       OR (l.locktype = 'object' AND l.classid = 'pg_namespace'::regclass
           AND l.objid = n.oid))
"""
"""Backends holding locks on a schema or on anything in it."""


@dataclass(frozen=True)
class TestSchema:
    """One test's schema: its name and the URL that selects it."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    name: str
    url: str


class PgServer:
    """A PostgreSQL server the tests may use, with one admin connection (autocommit).

    Args:
        url: The admin URL: the server's database, as a user that may create schemas.
        source: Where the server came from (see the module docstring).
        cluster: The throwaway cluster, when ``source`` is ``"throwaway"``.
        lock_timeout: How long dropping a schema waits for locks a test left behind.
    """

    def __init__(
        self,
        url: str,
        source: Source,
        cluster: ThrowawayCluster | None = None,
        *,
        lock_timeout: str = "10s",
    ) -> None:
        """Wrap a server known to accept connections."""
        self.url = url
        self.source = source
        self.cluster = cluster
        self.lock_timeout = lock_timeout
        self._admin: psycopg.Connection[tuple[Any, ...]] | None = None
        # A throwaway cluster belongs to this process alone: nobody to coordinate with.
        self.lock = None if cluster is not None else _lock_for(url)

    def __repr__(self) -> str:
        return f"PgServer({redact(self.url)!r}, source={self.source!r})"

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._admin is None or self._admin.closed:
            self._admin = connect(self.url, autocommit=True)
            self._admin.execute(
                sql.SQL("SET lock_timeout = {}").format(sql.Literal(self.lock_timeout))
            )
        return self._admin

    def execute(self, query: sql.Composable | str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement on the admin connection; return its rows (none for DDL).

        A connection broken by a server restart is replaced and the statement run again.
        """
        for attempt in (1, 2):
            conn = self._connection()
            try:
                cursor = conn.execute(query, params)  # type: ignore[arg-type]
                return cursor.fetchall() if cursor.description is not None else []
            except psycopg.OperationalError:
                if attempt == 2 or not conn.closed:
                    raise
                self._admin = None
        raise AssertionError("unreachable")

    def schema_exists(self, name: str) -> bool:
        """Whether a schema called ``name`` exists in the server database."""
        return bool(self.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [name]))

    @contextlib.contextmanager
    def schema(self) -> Iterator[TestSchema]:
        """A new empty schema, dropped (with everything in it) when the block ends.

        While the block runs, the server is not restarted by another process's
        :func:`restart_server` (see :class:`RestartLock`).
        """
        with self.lock.shared() if self.lock is not None else contextlib.nullcontext():
            name = f"{SCHEMA_PREFIX}{secrets.token_hex(6)}"
            self.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
            try:
                yield TestSchema(name, with_search_path(self.url, name))
            finally:
                self.drop_schema(name)

    def drop_schema(self, name: str) -> None:
        """Drop schema ``name`` and everything in it.

        A connection the test left in a transaction on the schema's tables would block
        the drop forever: after ``lock_timeout`` such connections are terminated, the
        schema is dropped anyway, and a warning names the test's leak.
        """
        drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
        try:
            self.execute(drop)
            return
        except psycopg.errors.LockNotAvailable:
            pass
        terminated: set[int] = set()
        for attempt in range(5):
            holders = self.execute(_LOCK_HOLDERS, {"schema": name})
            for (pid,) in holders:
                self.execute("SELECT pg_terminate_backend(%s)", [pid])
            terminated.update(pid for (pid,) in holders)
            time.sleep(0.1)  # termination is a signal: give the backends a moment
            try:
                self.execute(drop)
                break
            except psycopg.errors.LockNotAvailable:
                if attempt == 4:
                    raise
        warnings.warn(
            f"schema {name}: the test left {len(terminated)} connection(s) holding locks "
            "(an unclosed ledger or transaction?); they were terminated to drop it",
            pytest.PytestWarning,
            stacklevel=2,
        )

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Return once the server accepts connections again (after a restart)."""
        deadline = time.monotonic() + timeout
        while (why := _probe(self.url)) is not None:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{redact(self.url)} not back after {timeout:.0f}s: {why}")
            time.sleep(0.1)

    def debian_cluster(self) -> tuple[str, str] | str:
        """The ``(version, name)`` of the Debian cluster (``pg_ctlcluster``) this server
        is, or why it is not one this machine can restart."""
        if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
            return "pg_ctlcluster/pg_lsclusters not found (no Debian postgresql-common)"
        host = urlsplit(self.url).hostname
        if host not in (None, "", "127.0.0.1", "localhost", "::1") and not host.startswith("/"):
            return f"the server is on another host ({host})"
        try:
            rows = self.execute("SELECT current_setting('data_directory'), current_setting('port')")
            data_directory, port = rows[0]
        except psycopg.Error as error:
            return f"cannot read the server's data directory: {_error_text(error)}"
        listing = subprocess.run(
            ["pg_lsclusters", "--no-header"], capture_output=True, text=True, timeout=30
        )
        for line in listing.stdout.splitlines():
            fields = line.split()
            if (
                len(fields) >= 6
                and fields[2] == str(port)
                and os.path.realpath(fields[5]) == os.path.realpath(data_directory)
            ):
                return fields[0], fields[1]
        return f"no cluster in pg_lsclusters has data directory {data_directory}"

    def restart(self) -> None:
        """Restart the server and wait until it accepts connections again.

        A throwaway cluster restarts with ``pg_ctl restart -m fast``; a local Debian
        cluster with ``pg_ctlcluster --skip-systemctl-redirect <version> <name> restart``
        (which needs root or the cluster's owner). Any other server, e.g. one named by
        ``DECISION_TRACE_TEST_PG`` on another host, cannot be restarted by the tests: the
        test is skipped, with the reason, also under CI.
        """
        if self.cluster is not None:
            self.cluster.restart()
            self.wait_ready()
            return
        found = self.debian_cluster()
        if isinstance(found, str):
            pytest.skip(f"cannot restart {redact(self.url)} ({self.source}): {found}")
        version, name = found
        with self.lock.exclusive() if self.lock is not None else contextlib.nullcontext():
            ran = subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, "restart"],
                capture_output=True,
                text=True,
                timeout=180,
            )
            if ran.returncode != 0:
                pytest.fail(f"pg_ctlcluster {version} {name} restart: {ran.stderr.strip()}")
            self.wait_ready()

    def close(self) -> None:
        """Close the admin connection and stop a throwaway cluster."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        if self.lock is not None:
            self.lock.close()
            self.lock = None
        if self.cluster is not None:
            self.cluster.stop()


@dataclass(frozen=True)
class Unavailable:
    """No server for the tests, and why (a reason a person can act on)."""

    reason: str


def locate_server(
    environ: Mapping[str, str] | None = None,
    *,
    local_url: str = LOCAL_URL,
    throwaway: bool = True,
) -> PgServer | Unavailable:
    """Find the server the tests use (the order is in the module docstring).

    Args:
        environ: The environment to read ``DECISION_TRACE_TEST_PG`` from.
        local_url: The local server to try next.
        throwaway: Whether starting a throwaway cluster is allowed.

    Returns:
        The server, or why there is none. A set but unreachable ``DECISION_TRACE_TEST_PG``
        is :class:`Unavailable`, never a reason to try another server.
    """
    env = os.environ if environ is None else environ
    url = env.get(ENV_URL, "").strip()
    if url:
        shown = f"{ENV_URL}={redact(url)}"
        if not url.startswith(("postgresql://", "postgres://")):
            return Unavailable(f"{shown} is not a postgresql:// URL; {HOW_TO_ENABLE}")
        why = _probe(url)
        if why is not None:
            return Unavailable(
                f"PostgreSQL tests: {shown} is set but the server cannot be used ({why}); "
                f"fix or unset it (no other server is tried when it is set)"
            )
        return PgServer(url, "env")
    local = urlsplit(local_url)
    why_local = _port_open(local.hostname or "127.0.0.1", local.port or 5432)
    why_local = why_local or _probe(local_url)
    if why_local is None:
        return PgServer(local_url, "local")
    if not throwaway:
        why_throwaway = "not tried"
    else:
        try:
            cluster = ThrowawayCluster.start()
        except ClusterError as error:
            why_throwaway = str(error)
        else:
            return PgServer(cluster.url, "throwaway", cluster)
    return Unavailable(
        f"PostgreSQL tests need a server (local {local.hostname}:{local.port}: {why_local}; "
        f"throwaway cluster: {why_throwaway}); {HOW_TO_ENABLE}"
    )


def require(found: PgServer | Unavailable, environ: Mapping[str, str] | None = None) -> PgServer:
    """The server in ``found``, or skip the test (fail it under CI) with the reason."""
    if isinstance(found, Unavailable):
        unavailable(found.reason, environ)
    return found


_found: PgServer | Unavailable | None = None


def server() -> PgServer:
    """This process's server, located on first use; skips (fails under CI) if none."""
    global _found
    if _found is None:
        _found = locate_server()
    return require(_found)


def shutdown() -> None:
    """Close this process's server (stopping a throwaway cluster); the next
    :func:`server` call locates one again."""
    global _found
    if isinstance(_found, PgServer):
        _found.close()
    _found = None


def restart_server() -> None:
    """Restart this process's PostgreSQL server from a test, e.g. while a client records.

    Connections are cut (the admin connection reconnects by itself); the call returns
    once the server accepts connections again. Skips when the server cannot be
    restarted from here (see :meth:`PgServer.restart`).
    """
    server().restart()
