"""Exit paths in batch mode: every acknowledged event is written at exit, SIGTERM and
SIGHUP, whoever holds the client and whichever thread made it; or exactly how many were
not is logged and counted, never silently lost."""

from __future__ import annotations

import logging
import re
import signal
import time
from pathlib import Path

import pytest
from reliability_support import run_python, started_python, stored_ids, write_script, writes_blocked

from decision_trace import DecisionTraceClient

_ID = re.compile(r"^[0-9a-f]{16}$")
_NOT_WRITTEN = re.compile(r"(\d+) event\(s\) were not written to .* before the shutdown deadline")


_stored_ids = stored_ids
"""The ids in the ledger (SQLite file or PostgreSQL schema), after checking it is intact."""


def _printed_ids(text: str) -> list[str]:
    return [line for line in text.splitlines() if _ID.match(line)]


def test_one_line_script_keeps_its_event(tmp_path: Path, ledger_target: str) -> None:
    """The client is never referenced after record(): its event is still written at exit."""
    db = ledger_target
    code = (
        "from decision_trace import DecisionTraceClient as C; "
        f"print(C(db_path={db!r}).trace('job.ran').by_system('cron').record())"
    )
    script = write_script(tmp_path, "one_line.py", code)
    result = run_python(script)
    assert result.returncode == 0, result.stderr
    printed = _printed_ids(result.stdout)
    assert len(printed) == 1
    assert _stored_ids(db) == set(printed)


def test_client_made_inside_a_function_is_flushed_at_exit(
    tmp_path: Path, ledger_target: str
) -> None:
    """A client that only a returned-from function ever held: all 3,000 events written."""
    db = ledger_target
    script = write_script(
        tmp_path,
        "in_function.py",
        """
        import gc, sys
        from decision_trace import DecisionTraceClient

        def job(db):
            client = DecisionTraceClient(db_path=db)
            for i in range(3000):
                print(client.trace("job.step", f"step {i}").by_system("cron")
                      .because("scheduled", context={"i": i}).record(), flush=True)
            return client.stats().queued

        queued = job(sys.argv[1])
        gc.collect()
        print("queued at return", queued, file=sys.stderr)
        """,
    )
    result = run_python(script, db)
    assert result.returncode == 0, result.stderr
    printed = _printed_ids(result.stdout)
    assert len(printed) == 3000
    assert _stored_ids(db) == set(printed)


# The client is made, and every event recorded, in a worker thread (a request handler);
# the main thread only waits for it, as a server's main thread does.
WORKER_RECORDER = """
    import signal, sys, threading
    # As in a normal process: both signals at their default action (not inherited as ignored).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    from decision_trace import DecisionTraceClient

    def work(db):
        client = DecisionTraceClient(db_path=db)
        i = 0
        while True:
            print(client.trace("request.handled", f"request {i}").by_system("web")
                  .affecting_order(f"ord-{i}", {"n": i}).because("served").record(),
                  flush=True)
            i += 1

    worker = threading.Thread(target=work, args=(sys.argv[1],), daemon=True)
    worker.start()
    worker.join()
"""


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_signal_flushes_a_client_made_in_a_worker_thread(
    tmp_path: Path, ledger_target: str, signame: str
) -> None:
    """SIGTERM or SIGHUP while a worker thread records through a client it made: every
    printed id is stored, and the process still dies of that signal."""
    signum = getattr(signal, signame)
    db = ledger_target
    script = write_script(tmp_path, "worker.py", WORKER_RECORDER)
    printed: list[str] = []
    with started_python(script, db) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if _ID.match(line.strip()):
                printed.append(line.strip())
            if len(printed) >= 1500:
                proc.send_signal(signum)
                break
        rest, err = proc.communicate(timeout=90)
        printed += _printed_ids(rest)
        assert proc.returncode == -signum, err
    stored = _stored_ids(db)
    assert set(printed) <= stored, f"{len(set(printed) - stored)} acknowledged events lost"


def test_signal_hooks_respect_the_host_and_can_be_switched_off(tmp_path: Path) -> None:
    """A handler the host installed (before or after the import) is never replaced; an
    import off the main thread is made up for by the next main-thread call; and
    DECISION_TRACE_SIGNAL_HOOKS=0 leaves both signals alone."""
    script = write_script(
        tmp_path,
        "hooks.py",
        """
        import signal, sys
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        def host(signum, frame):
            pass
        if sys.argv[2] == "host-first":
            signal.signal(signal.SIGTERM, host)
        if sys.argv[2] == "import-in-thread":  # a lazy import in a request handler
            import threading
            importer = threading.Thread(target=lambda: __import__("decision_trace"))
            importer.start()
            importer.join()
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        from decision_trace import DecisionTraceClient
        client = DecisionTraceClient(db_path=sys.argv[1])  # on the main thread: installs
        if sys.argv[2] == "host-later":
            signal.signal(signal.SIGTERM, host)
        client.trace("job.ran").by_system("cron").record()
        client.flush()
        def name(handler):
            if handler is host:
                return "host"
            if handler is signal.SIG_DFL:
                return "default"
            return getattr(handler, "__module__", "?")
        print(name(signal.getsignal(signal.SIGTERM)), name(signal.getsignal(signal.SIGHUP)))
        """,
    )

    def handlers(mode: str, env: dict[str, str] | None = None) -> str:
        result = run_python(script, str(tmp_path / f"{mode}.db"), mode, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    ours = "decision_trace._lifecycle"
    assert handlers("plain") == f"{ours} {ours}"
    assert handlers("host-first") == f"host {ours}"
    assert handlers("host-later") == f"host {ours}"
    assert handlers("import-in-thread") == f"{ours} {ours}"
    assert handlers("plain", {"DECISION_TRACE_SIGNAL_HOOKS": "0"}) == "default default"


def test_close_past_its_deadline_says_exactly_how_many_were_not_written(
    ledger_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The ledger cannot be written (another writer holds it): close() returns at its
    deadline, logs the exact count not written, stats() and flush() say it too; every
    event is then either in the ledger or counted as failed."""
    client = DecisionTraceClient(db_path=ledger_target, shutdown_timeout_s=2)
    client.trace("job.started").by_system("cron").record()
    assert client.flush()
    with writes_blocked(ledger_target):
        for i in range(1000):
            client.trace("job.step", f"step {i}").by_system("cron").record()
        started = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="decision_trace"):
            client.close()
        elapsed = time.monotonic() - started
        # The bound asked for: the deadline (2 s) plus generous slack for a loaded machine.
        assert elapsed < 2 + 15, elapsed
        counts = [int(m.group(1)) for r in caplog.records if (m := _NOT_WRITTEN.search(r.message))]
        assert counts == [1000], [r.message for r in caplog.records]
        stats = client.stats()
        assert stats.recorded == 1001
        assert stats.written == 1
        assert stats.failed + stats.queued == 1000  # dropped + still in the blocked write
    deadline = time.monotonic() + 60
    while client.stats().queued and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = client.stats()
    assert stats.queued == 0
    assert stats.written + stats.failed == stats.recorded
    assert len(_stored_ids(ledger_target)) == stats.written
    assert client.flush(timeout_s=5) is False


def test_exit_past_its_deadline_says_exactly_how_many_were_not_written(
    tmp_path: Path, ledger_target: str
) -> None:
    """Normal exit while the ledger cannot be written: the process ends within its
    deadline and its log names exactly the number of events missing from the ledger."""
    db = ledger_target
    go = tmp_path / "go"
    script = write_script(
        tmp_path,
        "blocked_exit.py",
        """
        import os, sys, time
        from decision_trace import DecisionTraceClient

        client = DecisionTraceClient(db_path=sys.argv[1])
        client.trace("job.started").by_system("cron").record()
        assert client.flush()
        print("ready", flush=True)
        while not os.path.exists(sys.argv[2]):  # the test now takes the write lock
            time.sleep(0.01)
        for i in range(1000):
            print(client.trace("job.step", f"step {i}").by_system("cron").record())
        """,
    )
    with started_python(script, db, str(go), env={"DECISION_TRACE_SHUTDOWN_TIMEOUT": "2"}) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        with writes_blocked(db):
            go.touch()
            out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    printed = _printed_ids(out)
    assert len(printed) == 1000
    missing = set(printed) - _stored_ids(db)
    counts = [int(n) for n in _NOT_WRITTEN.findall(err)]
    assert counts == [len(missing)], err
    assert counts[0] > 0
