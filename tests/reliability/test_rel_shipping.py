"""Shipping (issue 15) between real processes: every event of a local ledger reaches the
destination exactly once as stored, through a destination outage, a ``kill -9`` of the
shipper, refusals, a destination that never answers, and a destination that is not ours.

The destinations are a real ``decision-trace serve`` (tests/server_support.py), the
suite's plain OTLP receiver (tests/otlp_receiver.py) and small stdlib ones
(tests/shipping_support.py). The shipping side is a child process: an application
recording with ``DecisionTraceClient(ship_to=...)``, or ``decision-trace ship``.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import otlp_receiver
from reliability_support import CHILD_TIMEOUT_S, child_env, stored_ids, write_script
from server_support import running_server
from shipping_support import Seen, ok, partial, scripted_receiver, stalling_socket

from decision_trace._encode import record_attributes
from decision_trace.attributes import TAGS
from decision_trace.shipping import destination_url
from decision_trace.storage import open_ledger

# An application that records COUNT events (100 at a time, 0.1 s apart, so that shipping
# runs alongside) with in-process shipping, writes their ids, waits until the
# destination has acknowledged everything, then closes.
RECORDER = """
import json, sys, time
from decision_trace import DecisionTraceClient

db, to, ids_path, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ship_to = None if to == "-" else to
client = DecisionTraceClient(db_path=db, ship_to=ship_to, shutdown_timeout_s=30)
ids = []
for i in range(count):
    builder = (
        client.trace("order.refunded", f"refund {i}")
        .by_user(f"user-{i % 7}", "Support Rep")
        .affecting("order", f"ord-{i}", {"total": i})
        .because("damaged on arrival", context={"i": i})
    )
    if i % 97 == 13:
        builder.with_tags("blocked")
    ids.append(builder.record())
    if i % 100 == 99:
        print(f"recorded {i + 1}", flush=True)
        time.sleep(0.1)
with open(ids_path, "w") as out:
    out.write("\\n".join(ids))
print("recorded all", flush=True)
if ship_to is not None:
    deadline = time.monotonic() + 100
    while time.monotonic() < deadline:
        status = client.shipping_status()
        if status and status[0].backlog == 0:
            break
        time.sleep(0.2)
    print("status", json.dumps([s.backlog for s in client.shipping_status()]), flush=True)
client.close()
print("closed", flush=True)
"""


class Child:
    """A child process whose output lines are collected as they come."""

    def __init__(self, command: Sequence[str]) -> None:
        self.proc = subprocess.Popen(
            list(command),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=child_env(),
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = CHILD_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.proc.poll() is not None:
                self._reader.join(10)
                if any(text in line for line in self.lines):
                    return
                raise AssertionError(f"exited before {text!r}:\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} in {timeout} s:\n{self.output()}")

    def finish(self, timeout: float = CHILD_TIMEOUT_S) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish()


@contextmanager
def child(command: Sequence[str]) -> Iterator[Child]:
    started = Child(command)
    try:
        yield started
    finally:
        started.kill()


def recorder(script: Path, db: Path, to: str, ids: Path, count: int) -> list[str]:
    return [sys.executable, str(script), str(db), to, str(ids), str(count)]


def ship_command(db: Path, to: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "decision_trace", "ship", "--db", str(db), "--to", to, *args]


def rows(db: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Rows of a query on a SQLite ledger another process may be writing."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def count_events(db: Path) -> int:
    try:
        return int(rows(db, "SELECT count(*) FROM events")[0][0])
    except sqlite3.OperationalError:  # not created yet
        return 0


def wait_until(condition: Any, what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def assert_exactly(dest: Path, ids: Sequence[str]) -> None:
    """The destination holds every id once, and nothing else."""
    assert len(set(ids)) == len(ids)
    assert rows(dest, "SELECT count(*), count(DISTINCT id) FROM events") == [(len(ids), len(ids))]
    assert stored_ids(dest) == set(ids)


# --- a. the destination stopped mid-run, started again on the same port ----------------


def test_in_process_shipping_survives_a_destination_outage(tmp_path: Path) -> None:
    script = write_script(tmp_path, "record.py", RECORDER)
    local, dest, ids_path = tmp_path / "local.db", tmp_path / "dest.db", tmp_path / "ids.txt"
    with running_server(str(dest), grpc=False) as server:
        port, url = server.http_port, server.url
        with child(recorder(script, local, url, ids_path, 5000)) as app:
            app.wait_for("recorded 1000")
            server.stop()  # SIGTERM, mid-run
            at_stop = count_events(dest)
            wait_until(
                lambda: rows(local, "SELECT last_error FROM outbox")[0][0] is not None,
                "the shipper notes the destination is down",
                timeout=30,
            )
            time.sleep(3)
            with running_server(str(dest), "--port", str(port), grpc=False) as again:
                assert again.http_port == port
                app.wait_for("closed", timeout=150)
                assert app.finish() == 0, app.output()
    assert "status [0]" in app.output()
    assert 0 < at_stop < 5000  # it really was mid-run
    ids = ids_path.read_text().split("\n")
    assert len(ids) == 5000
    assert_exactly(dest, ids)
    (backlog, error) = rows(
        local, "SELECT (SELECT count(*) FROM events) - position, last_error FROM outbox"
    )[0]
    assert (backlog, error) == (0, None)


# --- b. kill -9 of `decision-trace ship --follow`, then ship again -----------------------


def test_a_killed_ship_follow_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    script = write_script(tmp_path, "record.py", RECORDER)
    local, dest, ids_path = tmp_path / "local.db", tmp_path / "dest.db", tmp_path / "ids.txt"
    with running_server(str(dest), grpc=False) as server:
        with child(recorder(script, local, "-", ids_path, 5000)) as app:
            app.wait_for("recorded 100")
            follow = ship_command(local, server.url, "--follow", "--batch", "50")
            with child(follow) as first:
                wait_until(lambda: count_events(dest) >= 1000, "1,000 events shipped")
                first.proc.send_signal(signal.SIGKILL)
                assert first.finish() == -signal.SIGKILL
            at_kill = count_events(dest)
            # Restarted at once: the kernel released the dead shipper's lock.
            with child(follow) as second:
                app.wait_for("closed")
                assert app.finish() == 0, app.output()
                wait_until(lambda: count_events(dest) >= 5000, "all 5,000 shipped")
                second.proc.send_signal(signal.SIGTERM)
                assert second.finish() == 0, second.output()
        done = subprocess.run(
            ship_command(local, server.url, "--json"),
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=CHILD_TIMEOUT_S,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert (report["ok"], report["shipped"], report["remaining"]) == (True, 0, 0)
    assert at_kill < 5000  # killed mid-run
    assert_exactly(dest, ids_path.read_text().split("\n"))


# --- c. refusals: recorded, never retried, the rest stored, exit 1 -----------------------


def test_refused_spans_are_recorded_never_retried_and_the_rest_delivered(tmp_path: Path) -> None:
    script = write_script(tmp_path, "record.py", RECORDER)
    local, ids_path = tmp_path / "local.db", tmp_path / "ids.txt"
    recorded = subprocess.run(
        recorder(script, local, "-", ids_path, 600),
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=CHILD_TIMEOUT_S,
    )
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    ids = ids_path.read_text().split("\n")
    blocked = [ids[i] for i in range(len(ids)) if i % 97 == 13]
    assert len(blocked) == 7

    def refuse_blocked(number: int, seen: Seen) -> Any:
        # No ids named: the shipper must find the refused spans by itself.
        refused = sum("blocked" in (attrs.get(TAGS) or []) for attrs in seen.attributes)
        return partial(refused, f"{refused} span(s) carry a blocked tag") if refused else ok()

    with scripted_receiver(refuse_blocked) as receiver:
        shipped = subprocess.run(
            ship_command(local, receiver.url, "--json", "--batch", "128"),
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=CHILD_TIMEOUT_S,
        )
        assert shipped.returncode == 1, shipped.stdout + shipped.stderr
        report = json.loads(shipped.stdout)
        requests = len(receiver.seen)
        again = subprocess.run(
            ship_command(local, receiver.url, "--json"),
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=CHILD_TIMEOUT_S,
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert len(receiver.seen) == requests  # nothing re-sent, refused ones included
        delivered = set(receiver.accepted)
    assert "rejected by" in shipped.stderr
    assert [item["event_id"] for item in report["rejected"]] == blocked
    assert {item["message"] for item in report["rejected"]} == {"1 span(s) carry a blocked tag"}
    assert (report["ok"], report["shipped"], report["remaining"]) == (False, 600, 0)
    destination = destination_url(receiver.url)
    kept = rows(
        local,
        "SELECT event_id, message FROM outbox_rejected WHERE destination = ? ORDER BY position",
        (destination,),
    )
    assert kept == [(event_id, "1 span(s) carry a blocked tag") for event_id in blocked]
    assert delivered >= set(ids) - set(blocked)
    stats = subprocess.run(
        [sys.executable, "-m", "decision_trace", "stats", "--db", str(local), "--json"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=CHILD_TIMEOUT_S,
    )
    (shipping,) = json.loads(stats.stdout)["shipping"]
    assert (shipping["rejected"], shipping["backlog"]) == (7, 0)


# --- d. a destination that never answers -------------------------------------------------

CLOSE_TIMED = """
import sys, time
from decision_trace import DecisionTraceClient

db, to, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = DecisionTraceClient(db_path=db, ship_to=to, shutdown_timeout_s=3)
for i in range(count):
    client.trace("price.changed", f"price {i}").by_system("pricer", "Pricer").record()
client.flush()
time.sleep(1.0)  # the shipper's request is in the stalled socket by now
started = time.monotonic()
client.close()
print(f"close took {time.monotonic() - started:.3f}", flush=True)
"""


def test_a_destination_that_never_answers_bounds_close_and_loses_nothing(
    tmp_path: Path,
) -> None:
    script = write_script(tmp_path, "close.py", CLOSE_TIMED)
    local, dest = tmp_path / "local.db", tmp_path / "dest.db"
    with stalling_socket() as port:
        url = f"http://127.0.0.1:{port}"
        app = subprocess.run(
            [sys.executable, str(script), str(local), url, "300"],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=CHILD_TIMEOUT_S,
        )
        assert app.returncode == 0, app.stdout + app.stderr
        took = float(app.stdout.split("close took ")[1])
        assert took <= 3 + 3  # shutdown_timeout_s plus a margin: a bound, not a speed
        # The CLI against the same stall: each request times out and is retried.
        stalled = subprocess.run(
            ship_command(local, url, "--json", "--timeout", "0.5", "--max-wait", "2.5"),
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=CHILD_TIMEOUT_S,
        )
    assert stalled.returncode == 1, stalled.stdout + stalled.stderr
    report = json.loads(stalled.stdout)
    assert report["gave_up"] and report["retries"] >= 2 and report["remaining"] == 300
    assert report["last_error"] == "no answer in time (timed out)"
    # The stall is over: a real destination on the same port, and a later start.
    ids = [row[0] for row in rows(local, "SELECT id FROM events")]
    assert len(ids) == 300
    with running_server(str(dest), "--port", str(port), grpc=False):
        later = write_script(tmp_path, "later.py", RECORDER)
        again = subprocess.run(
            recorder(later, local, url, tmp_path / "more.txt", 0),
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=CHILD_TIMEOUT_S,
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert "status [0]" in again.stdout
    assert_exactly(dest, ids)


# --- e. a destination that is not ours ----------------------------------------------------

VARIED = """
import sys, time
from decision_trace import DecisionTraceClient

db, to = sys.argv[1], sys.argv[2]
with DecisionTraceClient(db_path=db, ship_to=to, service_name="checkout") as client:
    for i in range(40):
        builder = client.trace("order.refunded", f"refund {i}")
        if i % 2:
            builder.by_ai_agent("agent-1", "Refund AI", model="gpt-4o")
        else:
            builder.by_user("u-1", "Ann", email="ann@example.com")
        builder.affecting("order", f"ord-{i}", {"total": 10.5 + i}, state_after={"s": "done"})
        builder.because(
            "damaged", context={"i": i}, alternatives=[{"a": "replace"}],
            rejection_reasons={"replace": "no stock"}, confidence=0.9,
        ).with_tags("refund", f"t{i % 3}").with_metadata(ticket=f"T-{i}")
        if i % 5 == 0:
            builder.failed("gateway timeout")
        builder.record()
    while [s.backlog for s in client.shipping_status()] != [0]:
        time.sleep(0.1)
print("done", flush=True)
"""


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def test_the_suites_plain_otlp_receiver_gets_every_decision(tmp_path: Path) -> None:
    script = write_script(tmp_path, "varied.py", VARIED)
    local = tmp_path / "local.db"
    received: list[otlp_receiver.Received] = []
    server = otlp_receiver.http_server(received)
    port = server.server_address[1]
    with otlp_receiver.serve(server):
        app = subprocess.run(
            [sys.executable, str(script), str(local), f"http://127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=CHILD_TIMEOUT_S,
        )
    assert app.returncode == 0, app.stdout + app.stderr
    by_id = otlp_receiver.Receiver("", received).by_id()
    assert {r.path for r in received} == {"/v1/traces"}
    ledger = open_ledger(local, read_only=True)
    try:
        records = [record for _, record in ledger.iter_records()]
    finally:
        ledger.close()
    assert len(records) == 40 and set(by_id) == {r.id for r in records}
    for record in records:
        span = by_id[record.id]
        assert (span.name, span.trace_id, span.service_name) == (
            record.event_type,
            record.trace_id,
            "checkout",
        )
        expected = {key: _plain(value) for key, value in record_attributes(record).items()}
        assert span.attributes == expected
        assert "decision_trace.reasoning" in span.attributes
