"""The CLI never destroys what it reads: an export aimed at the ledger is refused, one odd
value cannot fail a whole export, a deep chain prints, and a stalled reader (a pager left
open) never keeps the write-ahead log from being checkpointed."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from reliability_support import CHILD_TIMEOUT_S, child_env, is_postgres, run_python, write_script

from decision_trace import DecisionTraceClient
from decision_trace import query as q
from decision_trace.cli import main
from decision_trace.store import Store

BASE = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def _cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _digest(db: Path) -> str:
    data = b"".join(
        Path(f"{db}{suffix}").read_bytes()
        for suffix in ("", "-wal")
        if Path(f"{db}{suffix}").exists()
    )
    return hashlib.sha256(data).hexdigest()


def _small_ledger(make_client: Callable[..., DecisionTraceClient]) -> list[str]:
    client = make_client(durability="sync")
    ids = [client.trace("order.created", f"order {i}").by_system("shop").record() for i in range(5)]
    client.close()
    return ids


# --- export -o never overwrites the ledger ---------------------------------------------------


@pytest.mark.parametrize(
    "how", ["same path", "relative path", "symlink", "hard link", "-wal", "-shm", "-journal"]
)
def test_export_refuses_to_overwrite_the_ledger_or_its_companions(
    make_client: Callable[..., DecisionTraceClient],
    db_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    ids = _small_ledger(make_client)
    # A reader keeps the -wal and -shm files in place, as a live application would.
    store = Store(db_path, create=False)
    with store.reader() as conn:
        conn.execute("SELECT count(*) FROM events").fetchone()
    other = tmp_path / "elsewhere"
    other.mkdir()
    if how == "same path":
        target = str(db_path)
    elif how == "relative path":
        monkeypatch.chdir(other)
        target = os.path.join("..", db_path.name)
    elif how == "symlink":
        (other / "export.jsonl").symlink_to(db_path)
        target = str(other / "export.jsonl")
    elif how == "hard link":
        os.link(db_path, other / "export.jsonl")
        target = str(other / "export.jsonl")
    else:  # a companion, existing (-wal, -shm) or not (-journal), through a symlink too
        target = f"{db_path}{how}"
        (other / "via-link").symlink_to(target)
    before = _digest(db_path)
    for output in [target] + ([str(other / "via-link")] if how.startswith("-") else []):
        for fmt in ("jsonl", "csv"):
            result = _cli("export", "--db", str(db_path), "--format", fmt, "-o", output)
            assert result.exit_code == 2, (result.stdout, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("Error: --output ")
            assert "would destroy the ledger" in lines[0]
            assert result.stdout == ""
    store.close()
    assert _digest(db_path) == before
    assert not Path(f"{db_path}-journal").exists()
    client = make_client()
    assert {e.id for e in client.query()} == set(ids)


def test_export_next_to_the_ledger_still_works(
    make_client: Callable[..., DecisionTraceClient], db_path: Path
) -> None:
    """Names that merely start like the ledger's are not refused."""
    ids = _small_ledger(make_client)
    for name in (f"{db_path.name}-wal.jsonl", f"{db_path.name}.jsonl", f"{db_path.name}-backup"):
        target = db_path.parent / name
        result = _cli("export", "--db", str(db_path), "-o", str(target))
        assert result.exit_code == 0, result.stderr
        assert [json.loads(line)["id"] for line in target.read_text().splitlines()] == ids


# --- one odd value never fails an export -----------------------------------------------------


def test_csv_export_replaces_a_lone_surrogate_instead_of_failing(
    make_client: Callable[..., DecisionTraceClient], ledger_target: str, tmp_path: Path
) -> None:
    db_path = ledger_target
    client = make_client(durability="sync")
    ids = [client.trace("note.taken", "before").by_system("shop").record()]
    ids.append(
        client.trace("note.taken", "odd")
        .by_system("shop")
        .because("pasted text", context={"note": "half an emoji \ud83d here"})
        .affecting_order("ord-1", {"comment": "\udcff"})
        .with_metadata(raw="=\ud800")
        .record()
    )
    ids.append(client.trace("note.taken", "after").by_system("shop").record())
    client.close()
    out = tmp_path / "export.csv"
    result = _cli("export", "--db", str(db_path), "--format", "csv", "-o", str(out))
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(out.open(encoding="utf-8", newline="")))
    assert [row["id"] for row in rows] == ids
    assert json.loads(rows[1]["context"]) == {"note": "half an emoji \ufffd here"}
    assert json.loads(rows[1]["objects"])[0]["state"] == {"comment": "\ufffd"}
    assert json.loads(rows[1]["metadata"]) == {"raw": "=\ufffd"}
    # To stdout as well; JSON lines keep the value exactly (as a \u escape), as stored:
    # PostgreSQL stores a lone surrogate in JSON as U+FFFD (docs/postgres.md).
    piped = _cli("export", "--db", str(db_path), "--format", "csv")
    assert piped.exit_code == 0 and piped.stdout.count("\ufffd") == 3
    lines = _cli("export", "--db", str(db_path)).stdout.splitlines()
    stored = "\ufffd" if is_postgres(db_path) else chr(0xD83D)
    assert json.loads(lines[1])["decision"]["context"]["note"] == f"half an emoji {stored} here"


# --- chains deeper than Python's recursion limit ---------------------------------------------

DEPTH = 3_000


def test_a_chain_3000_deep_is_walked_found_and_printed(
    make_client: Callable[..., DecisionTraceClient], ledger_target: str
) -> None:
    db_path = ledger_target
    assert sys.getrecursionlimit() < DEPTH
    client = make_client()
    ids = [client.trace("step", "step 0").by_system("engine").record()]
    for i in range(1, DEPTH):
        ids.append(client.trace("step", f"step {i}").by_system("engine").child_of(ids[-1]).record())
    assert client.flush()

    chain = client.get_chain(ids[DEPTH // 2])
    walked = list(chain.walk())
    assert [(depth, event.id) for depth, event in walked] == list(enumerate(ids))
    deepest = chain.find(ids[-1])
    assert deepest is not None and deepest.event.id == ids[-1] and deepest.children == ()
    assert chain.find("0" * 16) is None
    assert chain == client.get_chain(ids[-1])  # compared without recursion too
    assert deepest != chain
    assert ids[0] in repr(chain)

    text = _cli("chain", "--db", str(db_path), ids[DEPTH // 2])
    assert text.exit_code == 0, text.stderr
    lines = text.stdout.splitlines()
    assert len(lines) == 2 * DEPTH
    assert [line.split()[-1] for line in lines[0::2] if "this event" not in line] == [
        i for i in ids if i != ids[DEPTH // 2]
    ]
    assert sum("this event" in line for line in lines) == 1
    assert max(len(line) for line in lines) <= 100  # indentation is cut, lines fit
    assert "[depth 2999]" in lines[-2]

    as_json = _cli("chain", "--db", str(db_path), ids[0], "--json")
    assert as_json.exit_code == 0, as_json.stderr
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(row["depth"], row["id"]) for row in rows] == list(enumerate(ids))


# --- a stalled reader never pins the write-ahead log -----------------------------------------

WRITER = """
import json, os, sqlite3, sys
from datetime import datetime, timedelta, timezone
from decision_trace import DecisionTraceClient

db, count, base = sys.argv[1], int(sys.argv[2]), datetime.fromisoformat(sys.argv[3])
client = DecisionTraceClient(db_path=db, durability="batch")
ids = [
    client.trace("late.write", f"written while a reader waits {i}")
    .at(base + timedelta(microseconds=i % 7))
    .by_system("writer")
    .record()
    for i in range(count)
]
assert client.flush()
client.close()
conn = sqlite3.connect(db, timeout=10)
grown = os.path.getsize(db + "-wal") if os.path.exists(db + "-wal") else 0
busy, log, done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
wal = os.path.getsize(db + "-wal") if os.path.exists(db + "-wal") else 0
print(json.dumps({"ids": ids, "busy": busy, "log": log, "done": done, "wal": wal}))
"""


def _ledger_with_ties(make_client: Callable[..., DecisionTraceClient], count: int) -> list[str]:
    """``count`` events, several at each instant (the order then rests on the rowid)."""
    client = make_client()
    ids = [
        client.trace("early.write", f"stored before the reader began {i}")
        .at(BASE + timedelta(microseconds=i // 3))
        .by_system("shop")
        .record()
        for i in range(count)
    ]
    assert client.flush()
    client.close()
    return ids


def _write_and_checkpoint(tmp_path: Path, db: Path, count: int, at: datetime) -> dict[str, object]:
    script = write_script(tmp_path, "writer.py", WRITER)
    done = run_python(script, str(db), str(count), at.isoformat())
    assert done.returncode == 0, done.stderr
    report: dict[str, object] = json.loads(done.stdout)
    return report


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_a_paused_iteration_lets_other_processes_checkpoint(
    make_client: Callable[..., DecisionTraceClient], db_path: Path, tmp_path: Path, order: str
) -> None:
    early = _ledger_with_ties(make_client, 1_000)
    store = Store(db_path, create=False)
    try:
        conn = store.read_connection()
        stream = q.iter_events(conn, q.QueryFilters.build(), order=order, batch_size=64)  # type: ignore[arg-type]
        seen = [next(stream).id for _ in range(150)]  # paused inside the third batch
        # Meanwhile, another process writes (some sorting before, some after, the point
        # reached) and checkpoints the whole log into the file, twice.
        reports = [
            _write_and_checkpoint(tmp_path, db_path, 1_500, BASE + timedelta(microseconds=100)),
            _write_and_checkpoint(tmp_path, db_path, 1_500, BASE - timedelta(days=1)),
        ]
        for report in reports:
            assert (report["busy"], report["wal"]) == (0, 0), report
        seen += [event.id for event in stream]
    finally:
        store.close()
    # Exact: nothing twice, everything stored before the reader began exactly once and in
    # order (ties broken by storage order), whatever was written meanwhile.
    assert len(seen) == len(set(seen))
    expected = early if order == "asc" else early[::-1]
    assert [i for i in seen if i in set(early)] == expected
    late = set(reports[0]["ids"]) | set(reports[1]["ids"])  # type: ignore[arg-type]
    assert set(seen) <= set(early) | late


PAGER_ARGS = ("--limit", "0", "--json")


def test_a_stalled_events_pager_never_pins_the_write_ahead_log(
    make_client: Callable[..., DecisionTraceClient], db_path: Path, tmp_path: Path
) -> None:
    """``decision-trace events --limit 0 | less``, with the pager left open: the CLI blocks
    writing to a full pipe; meanwhile writers commit and checkpoint as if it were not
    there. Then the pager reads on: every event, once."""
    early = _ledger_with_ties(make_client, 3_000)  # ~1.5 MB of JSON: fills any pipe
    with subprocess.Popen(
        [sys.executable, "-m", "decision_trace", "events", "--db", str(db_path), *PAGER_ARGS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
        # Unbuffered: readline() below must take the first line only. A buffered reader
        # reads ahead, and communicate() reads the pipe's descriptor directly, so what the
        # reader had taken beyond the first line would be lost (a line cut in two).
        bufsize=0,
    ) as pager:
        try:
            assert pager.stdout is not None
            first = pager.stdout.readline()  # the CLI streams, and soon fills the pipe
            assert json.loads(first)["id"] == early[-1]
            reports = [
                _write_and_checkpoint(tmp_path, db_path, 2_000, BASE + timedelta(days=1))
                for _ in range(2)
            ]
            assert pager.poll() is None  # still stalled while the log was checkpointed
            for report in reports:
                assert (report["busy"], report["wal"]) == (0, 0), report
            rest, errors = pager.communicate(timeout=CHILD_TIMEOUT_S)
        finally:
            if pager.poll() is None:
                pager.kill()
    assert pager.returncode == 0, errors
    seen = [json.loads(first)["id"]] + [json.loads(line)["id"] for line in rest.splitlines()]
    assert len(seen) == len(set(seen))
    assert [i for i in seen if i in set(early)] == early[::-1]
