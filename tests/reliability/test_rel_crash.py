"""Crash safety: what record() accepted survives kill -9 (sync) and every exit path (batch).

On both backends (``ledger_target``): on PostgreSQL the killed process is the client, so
"survives" means record() returned only after the server committed.
"""

from __future__ import annotations

import random
import re
import signal
import time
from pathlib import Path

import pytest
from reliability_support import run_python, started_python, stored_ids, write_script

from decision_trace._lifecycle import SHUTDOWN_TIMEOUT_ENV

pytestmark = pytest.mark.usefixtures("ledger_target")

_ID = re.compile(r"^[0-9a-f]{16}$")

# Records events forever (or ``count`` of them), printing each id once record() returned.
RECORDER = """
    import sys
    from decision_trace import DecisionTraceClient

    db, durability, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = DecisionTraceClient(db_path=db, durability=durability)
    i = 0
    while count < 0 or i < count:
        event_id = (
            client.trace("order.refunded", f"refund number {i}")
            .by_user(f"user-{i % 7}", "Sam")
            .affecting_order(f"ord-{i}", {"status": "refunded", "amount": i / 100})
            .because("item arrived broken", context={"i": i, "note": "x" * (i % 50)})
            .with_tags("refund", f"t{i % 3}")
            .record()
        )
        print(event_id, flush=True)
        i += 1
    print("done", flush=True)
"""


_stored_ids = stored_ids
"""The ids in the ledger, after checking it is intact (SQLite: PRAGMA integrity_check and
FTS5's own check that the search index matches the events)."""


def _printed_ids(text: str) -> list[str]:
    return [line for line in text.splitlines() if _ID.match(line)]


def _record_until_killed(script: Path, db: str, rng: random.Random) -> list[str]:
    """Run the sync recorder, SIGKILL it after a random number of events plus a random
    delay; return every id it printed (each printed only after record() returned)."""
    printed: list[str] = []
    with started_python(script, db, "sync", "-1") as proc:
        assert proc.stdout is not None
        stop_at = rng.randint(20, 600)
        for line in proc.stdout:
            if _ID.match(line.strip()):
                printed.append(line.strip())
            if len(printed) >= stop_at:
                break
        time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
    return printed + _printed_ids(rest)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sync_events_survive_sigkill_at_a_random_moment(
    tmp_path: Path, ledger_target: str, seed: int
) -> None:
    """durability="sync": every id printed before kill -9 is stored; the ledger is intact,
    even after the same ledger's writer was killed three times in a row."""
    rng = random.Random(seed)
    db = ledger_target
    script = write_script(tmp_path, "recorder.py", RECORDER)
    printed: list[str] = []
    for _ in range(3):
        printed += _record_until_killed(script, db, rng)
        missing = set(printed) - _stored_ids(db)
        assert not missing, f"{len(missing)} acknowledged events lost to kill -9"
    assert len(printed) >= 3 * 20


EXITS = {
    "normal": "",
    "sys_exit": "sys.exit(3)",
    "exception": "raise RuntimeError('boom')",
}


@pytest.mark.parametrize("how", sorted(EXITS))
def test_batch_flushes_on_every_exit_path(tmp_path: Path, ledger_target: str, how: str) -> None:
    """durability="batch": normal exit, sys.exit and an uncaught exception all flush."""
    db = ledger_target
    code = (
        RECORDER.replace('print("done", flush=True)', "")
        + "\n    assert client.stats().queued > 0, 'exit must find work still queued'\n    "
        + EXITS[how]
        + "\n"
    )
    script = write_script(tmp_path, "recorder.py", code)
    result = run_python(script, db, "batch", "3000")
    expected_rc = {"normal": 0, "sys_exit": 3, "exception": 1}[how]
    assert result.returncode == expected_rc, result.stderr
    printed = _printed_ids(result.stdout)
    assert len(printed) == 3000
    assert _stored_ids(db) == set(printed)


@pytest.mark.parametrize(
    ("durability", "seed"),
    [
        *(("batch", seed) for seed in range(6, 12)),
        # On PostgreSQL a sync record() returns after the server committed (the kill -9
        # test above proves it), and this run of up to 3,000 commits took 55 s there.
        pytest.param("sync", 12, marks=pytest.mark.sqlite_only),
    ],
)
def test_batch_flushes_on_sigterm_mid_stream(
    tmp_path: Path, ledger_target: str, durability: str, seed: int
) -> None:
    """SIGTERM while recording: everything record() returned is flushed, and the process
    still dies of SIGTERM (no deadlock in the hook, whatever it interrupted)."""
    rng = random.Random(seed)
    db = ledger_target
    script = write_script(tmp_path, "recorder.py", RECORDER)
    printed: list[str] = []
    # The promise is "flushed at SIGTERM, within the shutdown deadline"; this tests the
    # first half (test_rel_shutdown_deadline.py tests the deadline). Its one failure (493
    # of the printed ids missing, on a loaded CI machine, before stderr was shown) fits
    # a queue (up to 20,000 events) not written within the default 10 s, the rest being
    # dropped as documented; a deadline no machine reaches keeps it about flushing.
    env = {SHUTDOWN_TIMEOUT_ENV: "120"}
    with started_python(script, db, durability, "-1", env=env) as proc:
        assert proc.stdout is not None
        stop_at = rng.randint(200, 3000)
        for line in proc.stdout:
            if _ID.match(line.strip()):
                printed.append(line.strip())
            if len(printed) >= stop_at:
                proc.send_signal(signal.SIGTERM)
                break
        rest, err = proc.communicate(timeout=90)
        printed += _printed_ids(rest)
        assert proc.returncode == -signal.SIGTERM, err
    missing = set(printed) - _stored_ids(db)
    # The recorder's stderr says why, if it knows (a shutdown deadline passed, a failed write).
    assert not missing, f"{len(missing)} of {len(printed)} printed ids not stored; stderr: {err}"
