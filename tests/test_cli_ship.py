"""``decision-trace ship``, and what ``stats`` and ``prune`` say about shipping, through
the command line (in-process with click's runner) against the suite's own OTLP receiver.

The real-process guarantees (outages, kill -9, a stalling destination) are in
``tests/reliability/test_rel_shipping.py``; the shipper's own behaviour in
``tests/test_shipping.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from otlp_receiver import Received, http_server, serve

from decision_trace import DecisionTraceClient
from decision_trace.cli import main
from decision_trace.shipping import Shipper
from decision_trace.storage import open_ledger
from decision_trace.storage.sqlite import SQLiteLedger

OLD = datetime.now(timezone.utc) - timedelta(days=100)


def run(*args: str, code: int = 0, **kwargs: Any) -> Result:
    result = CliRunner().invoke(main, list(args), **kwargs)
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    return result


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[Received]]]:
    """The suite's plain OTLP/HTTP receiver: (base URL, requests received)."""
    received: list[Received] = []
    server = http_server(received)
    with serve(server):
        yield f"http://127.0.0.1:{server.server_address[1]}", received


@pytest.fixture
def ledger_file(tmp_path: Path) -> Path:
    """A ledger of five events, three of them 100 days old."""
    path = tmp_path / "traces.db"
    with DecisionTraceClient(path) as client:
        for i in range(3):
            client.trace("order.created").by_user(f"u-{i}").at(OLD).affecting_order(
                f"ord-{i}"
            ).because("old").record()
        for _ in range(2):
            client.trace("order.shipped").by_system("wms").because("new").record()
    return path


def received_ids(received: list[Received]) -> list[str]:
    return [
        span.span_id.hex()
        for item in received
        for resource_spans in item.request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]


def stored_ids(path: Path) -> set[str]:
    ledger = open_ledger(path)
    try:
        return {record.id for _, record in ledger.iter_records()}
    finally:
        ledger.close()


def test_ship_sends_the_backlog_then_nothing_more(
    ledger_file: Path, receiver: tuple[str, list[Received]]
) -> None:
    url, received = receiver
    first = json.loads(run("ship", "--db", str(ledger_file), "--to", url, "--json").stdout)
    assert first["ok"] is True
    assert first["shipped"] == 5 and first["remaining"] == 0 and first["rejected"] == []
    assert first["destination"] == f"{url}/v1/traces"
    assert sorted(received_ids(received)) == sorted(stored_ids(ledger_file))
    assert all(item.path == "/v1/traces" for item in received)

    again = json.loads(run("ship", "--db", str(ledger_file), "--to", url, "--json").stdout)
    assert again["shipped"] == 0 and again["requests"] == 0
    assert len(received_ids(received)) == 5


def test_ship_text_report_and_token_header(
    ledger_file: Path, receiver: tuple[str, list[Received]]
) -> None:
    url, received = receiver
    result = run(
        "ship", "--db", str(ledger_file), "--to", url, env={"DECISION_TRACE_SHIP_TOKEN": "t0k"}
    )
    assert (
        result.stdout.strip()
        == f"Shipped 5 events to {url}/v1/traces (0 rejected); 0 left to ship."
    )
    assert received[0].headers["authorization"] == "Bearer t0k"
    assert received[0].headers["content-type"] == "application/x-protobuf"


def test_ship_to_a_destination_that_is_down_exits_1_and_stats_says_why(
    ledger_file: Path, tmp_path: Path
) -> None:
    url = "http://127.0.0.1:9"  # discard port: nothing listens
    result = run(
        "ship", "--db", str(ledger_file), "--to", url, "--max-wait", "0.5", "--json", code=1
    )
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["gave_up"] is True and report["remaining"] == 5
    assert "Connection refused" in report["last_error"]
    assert "5 events not shipped" in result.stderr
    # The state change is one line on stderr (no terminal here, so no progress bar).
    assert sum("is not answering" in line for line in result.stderr.splitlines()) == 1

    stats = json.loads(run("stats", "--db", str(ledger_file), "--json").stdout)
    (shipping,) = stats["shipping"]
    assert shipping["destination"] == f"{url}/v1/traces"
    assert shipping["backlog"] == 5 and shipping["shipped_up_to"] == 0
    assert shipping["oldest_unshipped_age_seconds"] > 0
    assert "Connection refused" in shipping["last_error"]
    text = run("stats", "--db", str(ledger_file)).stdout
    assert f"Shipping to {url}/v1/traces" in text
    assert "Backlog     5 events, the oldest from" in text
    assert "Last error  ConnectionRefusedError" in text


def test_a_second_ship_for_the_same_destination_exits_3(
    ledger_file: Path, receiver: tuple[str, list[Received]]
) -> None:
    url, received = receiver
    ledger = open_ledger(ledger_file)
    try:
        with Shipper(ledger, url):
            result = run("ship", "--db", str(ledger_file), "--to", url, code=3)
            assert "another shipper" in result.stderr and "only one may" in result.stderr
            # Another destination is another lock.
            other = run("ship", "--db", str(ledger_file), "--to", f"{url}/other", "--json")
            assert json.loads(other.stdout)["shipped"] == 5
        run("ship", "--db", str(ledger_file), "--to", url)  # released
    finally:
        ledger.close()
    assert len(received_ids(received)) == 10


@pytest.mark.parametrize(
    ("to", "message"),
    [
        ("ftp://host/x", "must be an http:// or https:// URL"),
        ("http://user:pw@host:4318", "must not hold credentials"),
        ("not a url", "must be an http:// or https:// URL"),
    ],
)
def test_a_bad_destination_is_a_usage_error(ledger_file: Path, to: str, message: str) -> None:
    result = run("ship", "--db", str(ledger_file), "--to", to, code=2)
    assert message in result.stderr


def test_ship_needs_a_destination(ledger_file: Path) -> None:
    result = run("ship", "--db", str(ledger_file), code=2, env={"DECISION_TRACE_SHIP_TO": ""})
    assert "--to" in result.stderr


def test_prune_keeps_what_a_destination_lacks_unless_forced(
    ledger_file: Path, receiver: tuple[str, list[Received]]
) -> None:
    url, _ = receiver
    ledger = open_ledger(ledger_file)
    assert isinstance(ledger, SQLiteLedger)
    ledger.register_destination(f"{url}/v1/traces")
    ledger.close()

    dry = json.loads(
        run("prune", "--db", str(ledger_file), "--older-than", "30d", "--dry-run", "--json").stdout
    )
    assert dry["events"] == 3 and dry["unshipped"] == 3
    refused = run("prune", "--db", str(ledger_file), "--older-than", "30d", code=1)
    assert "3 events not yet acknowledged by" in refused.stderr and "--force" in refused.stderr
    assert len(stored_ids(ledger_file)) == 5

    run("ship", "--db", str(ledger_file), "--to", url)
    shipped = json.loads(
        run("prune", "--db", str(ledger_file), "--older-than", "30d", "--json").stdout
    )
    assert shipped["events"] == 3 and shipped["unshipped"] == 0
    assert len(stored_ids(ledger_file)) == 2


def test_prune_force_deletes_unshipped_events_and_says_so(ledger_file: Path) -> None:
    ledger = open_ledger(ledger_file)
    assert isinstance(ledger, SQLiteLedger)
    ledger.register_destination("http://ledger.invalid:4318/v1/traces")
    ledger.close()
    result = run("prune", "--db", str(ledger_file), "--older-than", "30d", "--force")
    assert "Deleted 3 events" in result.stdout
    assert "3 events that a shipping destination had not" in result.stderr
    assert len(stored_ids(ledger_file)) == 2


def test_forget_retires_a_destination(ledger_file: Path) -> None:
    ledger = open_ledger(ledger_file)
    assert isinstance(ledger, SQLiteLedger)
    ledger.register_destination("http://old:4318/v1/traces")
    ledger.close()
    result = run("ship", "--db", str(ledger_file), "--to", "http://old:4318", "--forget")
    assert "Forgot http://old:4318/v1/traces" in result.stdout
    assert json.loads(run("stats", "--db", str(ledger_file), "--json").stdout)["shipping"] == []
    run("prune", "--db", str(ledger_file), "--older-than", "30d")  # no longer refused
    again = run("ship", "--db", str(ledger_file), "--to", "http://old:4318", "--forget", "--json")
    assert json.loads(again.stdout) == {
        "destination": "http://old:4318/v1/traces",
        "forgotten": False,
    }


def test_ship_refuses_a_ledger_that_is_not_a_local_file(pg_url: str) -> None:
    open_ledger(pg_url).close()  # a PostgreSQL ledger is a destination, never an outbox
    result = run("ship", "--db", pg_url, "--to", "http://127.0.0.1:9", code=2)
    assert "only a local SQLite ledger ships" in result.stderr


def test_stats_of_a_ledger_that_never_shipped_lists_no_destination(ledger_file: Path) -> None:
    stats = json.loads(run("stats", "--db", str(ledger_file), "--json").stdout)
    assert stats["shipping"] == []
    assert "Shipping to" not in run("stats", "--db", str(ledger_file)).stdout
