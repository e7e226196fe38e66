"""The ``decision-trace`` command, through click's CliRunner and as a real subprocess.

Every test that reads or writes a ledger runs on both backends (``ledger_target``: a
SQLite file, then a ``postgresql://`` URL), with the same assertions; where the backends
differ as docs/postgres.md says (the schema version, what ``stats`` reports of size, the
file's own integrity check), the test asserts each backend's answer. Tests about the
SQLite file itself are ``sqlite_only``; parsing and help tests touch no ledger.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click
import psycopg
import pytest
from click.testing import CliRunner, Result

from decision_trace import DecisionTraceClient
from decision_trace.cli import main, parse_object_ref, parse_time
from decision_trace.errors import StoreError
from decision_trace.models import ObjectType
from decision_trace.record import EventRecord
from decision_trace.storage import is_url, open_ledger
from decision_trace.storage.postgres.schema import SCHEMA_VERSION as PG_SCHEMA_VERSION
from decision_trace.store import SCHEMA_VERSION

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMANDS = (
    "events",
    "show",
    "why",
    "search",
    "chain",
    "stats",
    "export",
    "prune",
    "keygen",
    "checkpoint",
    "verify",
    "erase",
    "copy",
    "ship",
    "serve",
    "ui",
)
NOW = datetime.now(timezone.utc)
HOSTILE_DESCRIPTION = "Note from customer: \x1b[2J\x1b[31mred\x1b[0m \u202eevil\u202c done"


def on_postgres(target: str | Path) -> bool:
    """Whether the ledger a test runs on is a PostgreSQL URL (else an SQLite file)."""
    return is_url(str(target))


def write_records(target: str | Path, records: list[EventRecord]) -> None:
    """Store ``records`` straight into a ledger (as an OTLP ingest would)."""
    ledger = open_ledger(target)
    try:
        ledger.write(records)
    finally:
        ledger.close()


@dataclass
class Ledger:
    db: str
    created: str
    workflow: str
    payment: str
    picking: str
    adjusted: str
    refunded: str
    hostile: str
    old: str


@pytest.fixture
def ledger(make_client: Callable[..., DecisionTraceClient], ledger_target: str) -> Ledger:
    """A small shop's ledger, recorded by the library (sync: committed on record()), once
    per backend."""
    client = make_client(durability="sync")
    old = (
        client.trace("order.created", "Order placed long ago, archived later")
        .at(NOW - timedelta(days=100))
        .by_user("cust-old", "Old Customer")
        .affecting_order("ord-old", {"total": 10})
        .because("Ancient checkout with zanzibarword in it")
        .with_tags("legacy")
        .record()
    )
    created = (
        client.trace("order.created", "Order created")
        .at(NOW - timedelta(hours=3))
        .by_user("cust-1", "Jane Customer", role="customer", email="jane@example.com")
        .affecting_order("ord-1", {"total": 149.99})
        .because(
            "Customer completed checkout after 3 items in cart",
            context={"session_duration": "5m 32s", "coupon_applied": None},
        )
        .with_tags("checkout", "web")
        .record()
    )
    workflow = (
        client.trace("workflow.started", "Order fulfillment started")
        .by_system("fulfillment-engine")
        .affecting_order("ord-1")
        .record()
    )
    payment = (
        client.trace("payment.captured", "Payment captured")
        .child_of(workflow)
        .by_external("stripe", "Stripe", service_name="api.stripe.com")
        .affecting_payment("pay-1", {"amount": 149.99})
        .record()
    )
    with client.span("workflow.step", "Picking the items").child_of(workflow) as trace:
        trace.by_compute("picker", "Warehouse picker")
        adjusted = (
            client.trace("inventory.adjusted", "Stock decremented")
            .by_compute("picker")
            .affecting_inventory("SKU-789", quantity_before=100, quantity_after=98)
            .record()
        )
    picking = trace.event_id
    assert picking is not None
    refunded = (
        client.trace(
            "order.refunded",
            "Refund issued after a long back-and-forth with the customer about a "
            "defective grinder whose burrs were misaligned from the factory, which took "
            "several emails: https://support.example.com/tickets/0123456789abcdef0123456789",
        )
        .by_ai_agent("refund-ai", "Refund Agent", model="gpt-4", version="2.1")
        .affecting(
            "order",
            "ord-1",
            state_before={"status": "paid", "refund": 0},
            state_after={"status": "refunded", "refund": 99.99},
        )
        .affecting_customer("cust-1")
        .because(
            "Refund approved due to product defect",
            context={"defect_type": "manufacturing", "customer_tier": "gold"},
            alternatives=[
                {"action": "replace", "reason": "offer replacement instead"},
                {"action": "partial_refund", "reason": "50% refund option"},
            ],
            rejection_reasons={
                "replace": "Customer requested full refund",
                "partial_refund": "Clear manufacturer defect",
            },
        )
        .with_confidence(0.92)
        .with_risk("medium")
        .with_tags("refund")
        .failed("card network timeout")
        .record()
    )
    hostile = (
        client.trace("note.added", HOSTILE_DESCRIPTION)
        .by_user("cust-1")
        .affecting_order("ord-1")
        .because('He said "hello" (AND) -maybe * NEAR OR: col:umn')
        .record()
    )
    client.close()
    return Ledger(
        db=ledger_target,
        created=created,
        workflow=workflow,
        payment=payment,
        picking=picking,
        adjusted=adjusted,
        refunded=refunded,
        hostile=hostile,
        old=old,
    )


@pytest.fixture
def no_ledger(request: pytest.FixtureRequest, ledger_target: str, tmp_path: Path) -> Iterator[str]:
    """A target on the same backend as ``ledger_target`` that holds no ledger: a file
    that does not exist, or an empty schema of its own."""
    if on_postgres(ledger_target):
        with request.getfixturevalue("pg_server").schema() as schema:
            yield schema.url
    else:
        yield str(tmp_path / "absent.db")


def ledger_exists(target: str) -> bool:
    """Whether anything was made at ``target``: the file, or a table in the schema."""
    if not on_postgres(target):
        return Path(target).exists()
    with psycopg.connect(target) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
        ).fetchone()
    assert row is not None
    return bool(row[0])


def run(*args: str, ok: bool = True, **kwargs: Any) -> Result:
    """Invoke the CLI in-process; by default the command must succeed."""
    result = CliRunner().invoke(main, list(args), **kwargs)
    if ok:
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def run_db(ledger: Ledger, command: str, *args: str, ok: bool = True, **kwargs: Any) -> Result:
    """Run ``command`` with ``--db`` pointing at the ledger."""
    return run(command, "--db", str(ledger.db), *args, ok=ok, **kwargs)


def json_lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def fails(result: Result, code: int, *fragments: str) -> str:
    """Assert a one-line error on stderr, nothing on stdout, exit status ``code``."""
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


# --- parsing helpers ----------------------------------------------------------------------


def test_parse_time_relative_and_iso() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    assert parse_time("15m", now) == now - timedelta(minutes=15)
    assert parse_time("2h", now) == now - timedelta(hours=2)
    assert parse_time("7d", now) == now - timedelta(days=7)
    assert parse_time("2w", now) == now - timedelta(weeks=2)
    assert parse_time("90 days", now) == now - timedelta(days=90)
    assert parse_time("3 hours ago", now) == now - timedelta(hours=3)
    assert parse_time("2024-01-31") == datetime(2024, 1, 31, tzinfo=timezone.utc)
    assert parse_time("2024-01-31T14:00Z") == datetime(2024, 1, 31, 14, tzinfo=timezone.utc)
    assert parse_time("2024-01-31T16:00+02:00") == datetime(2024, 1, 31, 14, tzinfo=timezone.utc)
    for bad in ("yesterday", "15x", "", "-5m", "1e9d", "2024-13-01"):
        with pytest.raises(ValueError):
            parse_time(bad, now)
    with pytest.raises(ValueError, match="before year 1"):
        parse_time("999999999w", now)


def test_parse_object_ref() -> None:
    assert parse_object_ref("order:ord-1") == (ObjectType.ORDER, "ord-1")
    assert parse_object_ref("ORDER:ord-1") == (ObjectType.ORDER, "ord-1")
    assert parse_object_ref("Purchase-Order:po:7") == (ObjectType.PURCHASE_ORDER, "po:7")
    for bad in ("ord-1", "order:", ":ord-1", "spaceship:1", "order:   "):
        with pytest.raises(ValueError):
            parse_object_ref(bad)


# --- events -----------------------------------------------------------------------------


def test_events_lists_newest_first_as_json(ledger: Ledger) -> None:
    events = json_lines(run_db(ledger, "events", "--json", "--limit", "0"))
    ids = [e["id"] for e in events]
    assert len(ids) == 8
    assert ids[-1] == ledger.old and ids[-2] == ledger.created
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps, reverse=True)
    refund = next(e for e in events if e["id"] == ledger.refunded)
    assert refund["actor"]["type"] == "ai_agent"
    assert refund["actor"]["model"] == "gpt-4"
    assert refund["outcome"] == "failure"
    assert refund["error"] == "card network timeout"
    assert refund["decision"]["rejection_reasons"]["replace"] == "Customer requested full refund"
    assert refund["decision"]["confidence"] == 0.92
    assert refund["objects"][0] == {
        "object_type": "order",
        "external_id": "ord-1",
        "state": {},
        "state_before": {"status": "paid", "refund": 0},
        "state_after": {"status": "refunded", "refund": 99.99},
    }
    assert refund["tags"] == ["refund"]
    assert len(refund["correlation_id"]) == 32


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--actor-type", "ai_agent"), ["refunded"]),
        (("--actor-type", "AI_AGENT"), ["refunded"]),
        (("--actor-type", "ai-agent"), ["refunded"]),
        (("--actor-type", "External", "--actor-type", "ai_agent"), ["refunded", "payment"]),
        (("--outcome", "FAILURE"), ["refunded"]),
        (("--object", "order:ord-1", "--type", "order.created"), ["created"]),
        (("--object", "Inventory:SKU-789"), ["adjusted"]),
        (("--object", "payment:pay-1"), ["payment"]),
        (("--tag", "checkout"), ["created"]),
        (("--tag", "legacy", "--tag", "refund"), ["refunded", "old"]),
        (("--actor", "picker", "--type", "workflow.step"), ["picking"]),
        (("--since", "7d", "--type", "order.created"), ["created"]),
        (("--until", "30d"), ["old"]),
        (("--since", "2h", "--type", "order.created"), []),
        (("--object", "order:ord-old", "--since", "1d"), []),
    ],
)
def test_events_filters(ledger: Ledger, args: tuple[str, ...], expected: list[str]) -> None:
    result = run_db(ledger, "events", "--json", *args)
    assert [e["id"] for e in json_lines(result)] == [getattr(ledger, n) for n in expected]


def test_events_human_output_fits_80_columns(ledger: Ledger) -> None:
    result = run_db(ledger, "events", "--limit", "3")
    out = result.stdout
    assert ledger.refunded in out
    assert 'ai_agent refund-ai "Refund Agent"' in out
    assert "why: Refund approved due to product defect" in out
    assert "card network timeout" in out
    assert all(len(line) <= 80 for line in out.splitlines())
    assert "Showing the newest 3 of 8 events" in result.stderr


def test_no_match_is_not_an_error(ledger: Ledger) -> None:
    result = run_db(ledger, "events", "--type", "no.such.type")
    assert result.stdout == ""
    assert "No events match" in result.stderr
    assert run_db(ledger, "events", "--type", "no.such.type", "--json").stdout == ""


def test_db_option_before_the_command(ledger: Ledger) -> None:
    result = run("--db", str(ledger.db), "events", "--json", "--limit", "1")
    assert json_lines(result)[0]["id"] == ledger.hostile


def test_db_from_environment(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DECISION_TRACE_DB", str(ledger.db))
    assert json_lines(run("show", ledger.created, "--json"))[0]["id"] == ledger.created


URL = "nosuch+scheme://reader:s3cret@db.example:5432/ledger?sslmode=require"


@pytest.mark.parametrize(
    "args",
    [
        ("events",),
        ("show", "0123456789abcdef"),
        ("why", "order:ord-1"),
        ("search", "refund"),
        ("chain", "0123456789abcdef"),
        ("stats",),
        ("export",),
        ("export", "-o", "out.jsonl"),
        ("prune", "--older-than", "90d"),
    ],
)
def test_db_takes_a_url_untouched(
    args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A URL reaches the storage layer as typed, from --db after or before the command or
    from $DECISION_TRACE_DB: not expanded, not checked as a file, no ``//`` turned into
    ``/`` (as ``Path`` would), and no file or folder made of it."""
    import decision_trace.cli as cli

    opened: list[tuple[object, dict[str, Any]]] = []

    def fake_open_ledger(target: object, **kwargs: Any) -> Any:
        opened.append((target, kwargs))
        raise StoreError("no such backend in this test")

    monkeypatch.setattr(cli, "open_ledger", fake_open_ledger)
    monkeypatch.chdir(tmp_path)
    fails(run(*args, "--db", URL, ok=False), 1, "no such backend in this test")
    fails(run("--db", URL, *args, ok=False), 1, "no such backend in this test")
    monkeypatch.setenv("DECISION_TRACE_DB", URL)
    fails(run(*args, ok=False), 1, "no such backend in this test")
    write = args[0] == "prune"
    assert opened == [(URL, {"create": False, "read_only": not write})] * 3
    assert list(tmp_path.iterdir()) == []


def test_a_url_without_a_backend_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    fails(run("events", "--db", "nosuch://host/ledger", ok=False), 1, "nosuch://")
    monkeypatch.setenv("DECISION_TRACE_DB", "nosuch://host/ledger")
    fails(run("stats", ok=False), 1, "nosuch://")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.sqlite_only  # a stand-in URL ledger over the SQLite file; test_stats shows a real one
def test_stats_and_export_of_a_ledger_that_is_not_a_file(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A ledger named by URL has no file: stats shows its location and the sizes the
    backend reports, export -o writes anywhere but stdout stays the default, and prune
    --vacuum speaks of compacting, not of a file."""
    import decision_trace.cli as cli
    from decision_trace.storage import open_ledger

    location = "nosuch://db.example/ledger"

    class UrlLedger:
        """The real SQLite ledger, but located at a URL (as a remote backend would be)."""

        def __init__(self, **kwargs: Any) -> None:
            self._ledger = open_ledger(ledger.db, **kwargs)

        location = "nosuch://db.example/ledger"

        def size_bytes(self) -> tuple[int, int]:
            return 12345, 0

        def __getattr__(self, name: str) -> Any:
            return getattr(self._ledger, name)

    monkeypatch.setattr(cli, "open_ledger", lambda target, **kwargs: UrlLedger(**kwargs))
    stats = json_lines(run("stats", "--db", location, "--json"))[0]
    assert (stats["db"], stats["size_bytes"], stats["wal_bytes"]) == (location, 12345, 0)
    text = run("stats", "--db", location).stdout
    assert f"Ledger      {location}" in text and "write-ahead" not in text
    assert len(json_lines(run("export", "--db", location))) == 8
    run("export", "--db", location, "-o", str(tmp_path / "out.jsonl"))
    assert len((tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()) == 8
    pruned = run("prune", "--db", location, "--older-than", "90d", "--vacuum").stdout
    assert "Ledger compacted" in pruned and "File" not in pruned


# --- show -------------------------------------------------------------------------------


def test_show_one_event_in_full(ledger: Ledger) -> None:
    out = run_db(ledger, "show", ledger.refunded).stdout
    for text in (
        ledger.refunded,
        "order.refunded",
        'ai_agent refund-ai "Refund Agent" (model gpt-4, version 2.1)',
        "Refund approved due to product defect",
        "defect_type: manufacturing",
        "replace (offer replacement instead): Customer requested full refund",
        "partial_refund (50% refund option): Clear manufacturer defect",
        "order ord-1",
        "status: paid → refunded",
        "refund: 0 → 99.99",
        "customer cust-1",
        "Confidence   0.92",
        "Risk         medium",
        "failure: card network timeout",
        "Tags         refund",
    ):
        assert text in out, text
    assert all(len(line) <= 80 for line in out.splitlines())


def test_show_json_and_ids_any_case(ledger: Ledger) -> None:
    event = json_lines(run_db(ledger, "show", ledger.payment.upper(), "--json"))[0]
    assert event["id"] == ledger.payment
    assert event["parent_event_id"] == ledger.workflow
    assert event["actor"] == {
        "type": "external",
        "id": "stripe",
        "name": "Stripe",
        "email": None,
        "role": None,
        "model": None,
        "version": None,
        "service_name": "api.stripe.com",
        "metadata": {},
    }
    created = json_lines(run_db(ledger, "show", ledger.created, "--json"))[0]
    assert created["decision"]["context"] == {"session_duration": "5m 32s", "coupon_applied": None}
    assert created["actor"]["email"] == "jane@example.com"
    assert "jane@example.com" in run_db(ledger, "show", ledger.created).stdout


def test_show_shows_trace_and_parent(ledger: Ledger) -> None:
    out = run_db(ledger, "show", ledger.adjusted).stdout
    assert f"Parent       {ledger.picking}" in out
    assert "quantity: 100 → 98" in out or "100 → 98" in out


# --- why --------------------------------------------------------------------------------


def test_why_tells_the_story_oldest_first(ledger: Ledger) -> None:
    out = run_db(ledger, "why", "order:ord-1").stdout
    assert out.startswith("order ord-1: 4 events")
    positions = [out.index(e) for e in (ledger.created, ledger.workflow, ledger.refunded)]
    assert positions == sorted(positions)
    assert 'who        user cust-1 "Jane Customer" (role customer)' in out
    assert "why        Customer completed checkout after 3 items in cart" in out
    assert "rejected   replace (offer replacement instead): Customer requested full" in out
    assert "changed    status: paid → refunded" in out
    assert "outcome    failure: card network timeout" in out
    assert all(len(line) <= 80 for line in out.splitlines())


def test_why_json_and_case_insensitive_type(ledger: Ledger) -> None:
    history = json_lines(run_db(ledger, "why", "ORDER:ord-1", "--json"))
    assert [e["id"] for e in history] == [
        ledger.created,
        ledger.workflow,
        ledger.refunded,
        ledger.hostile,
    ]
    inventory = json_lines(run_db(ledger, "why", "inventory:SKU-789", "--json"))
    assert [e["id"] for e in inventory] == [ledger.adjusted]
    assert inventory[0]["objects"][0]["state_after"] == {"quantity": 98}


def test_why_other_objects_changes_are_labelled(ledger: Ledger) -> None:
    out = run_db(ledger, "why", "customer:cust-1").stdout
    assert "changed    order ord-1: status: paid → refunded" in out


def test_why_alternatives_with_and_without_reasons(
    make_client: Callable[..., DecisionTraceClient], ledger_target: str
) -> None:
    client = make_client(durability="sync")
    client.trace("price.updated", "Price raised").by_ai_agent("pricing-ai").affecting_product(
        "SKU-1", state_before={"price": 10}, state_after={"price": 11}
    ).because(
        "Competitor raised theirs",
        alternatives=[{"action": "wait"}, {"name": "discount", "percent": 5}, {"odd": True}],
        rejection_reasons={"discount": "Margin too thin", "hold": "Stock is low"},
    ).record()
    out = run("why", "product:SKU-1", "--db", ledger_target).stdout
    assert "rejected   wait: (no reason recorded)" in out
    assert "rejected   discount (percent=5): Margin too thin" in out
    assert 'rejected   {"odd": true}: (no reason recorded)' in out
    assert "rejected   hold: Stock is low" in out
    assert "changed    price: 10 → 11" in out


# --- search -----------------------------------------------------------------------------


def test_search_finds_and_is_json(ledger: Ledger) -> None:
    found = json_lines(run_db(ledger, "search", "manufacturing", "--json"))
    assert [e["id"] for e in found] == [ledger.refunded]
    words = json_lines(run_db(ledger, "search", "product", "defect", "--json"))
    assert [e["id"] for e in words] == [ledger.refunded]
    human = run_db(ledger, "search", "checkout").stdout
    assert ledger.created in human and "Customer completed checkout" in human


@pytest.mark.parametrize(
    "text",
    ['"hello"', '"unbalanced', "AND", "OR NOT", "-maybe", "NEAR(", "col:umn", "*", "(AND)"],
)
def test_search_syntax_is_searched_as_text(ledger: Ledger, text: str) -> None:
    result = run_db(ledger, "search", "--json", "--", text)
    ids = [e["id"] for e in json_lines(result)]
    if text in ('"unbalanced', "OR NOT", "*"):
        assert ids == []
    else:
        assert ledger.hostile in ids


@pytest.mark.parametrize(
    "text", ["'; DROP TABLE events; --", "🙂" * 50, "x" * 10_000, "\ud800", "\\"]
)
def test_search_weird_text_is_safe(ledger: Ledger, text: str) -> None:
    result = run_db(ledger, "search", "--", text)
    assert result.stdout == ""
    assert "No events match" in result.stderr
    assert len(json_lines(run_db(ledger, "events", "--json", "--limit", "0"))) == 8


@pytest.mark.parametrize("text", ["   ", "", "\t\n", "\x00"])
def test_search_without_words_matches_nothing(ledger: Ledger, text: str) -> None:
    result = run_db(ledger, "search", "--", text)
    assert result.stdout == ""
    assert "no words" in result.stderr
    assert run_db(ledger, "search", "--json", "--", text).stdout == ""


def test_search_needs_text(ledger: Ledger) -> None:
    fails(run_db(ledger, "search", ok=False), 2, "Missing argument")


# --- chain ------------------------------------------------------------------------------


def test_chain_tree(ledger: Ledger) -> None:
    out = run_db(ledger, "chain", ledger.adjusted).stdout
    lines = out.splitlines()
    assert lines[0].startswith("workflow.started")
    assert ledger.workflow in lines[0]
    order = [out.index(i) for i in (ledger.workflow, ledger.payment, ledger.picking)]
    assert order == sorted(order)
    adjusted_line = next(line for line in lines if ledger.adjusted in line)
    assert adjusted_line.startswith("   └─ inventory.adjusted")
    assert "◀ this event" in adjusted_line
    picking_line = next(line for line in lines if ledger.picking in line)
    assert re.search(r"\d+(\.\d+)? (ms|s)|<0\.1 ms", picking_line)
    assert all(len(line) <= 80 for line in lines)


def test_chain_json_has_depths(ledger: Ledger) -> None:
    nodes = json_lines(run_db(ledger, "chain", ledger.payment, "--json"))
    assert [(n["depth"], n["id"]) for n in nodes] == [
        (0, ledger.workflow),
        (1, ledger.payment),
        (1, ledger.picking),
        (2, ledger.adjusted),
    ]
    assert nodes[3]["parent_event_id"] == ledger.picking
    assert nodes[2]["duration_ms"] >= 0


# --- stats ------------------------------------------------------------------------------


def test_stats(ledger: Ledger) -> None:
    stats = json_lines(run_db(ledger, "stats", "--json"))[0]
    assert stats["events"] == 8
    assert stats["by_event_type"]["order.created"] == 2
    assert stats["by_actor_type"] == {
        "user": 3,
        "compute": 2,
        "ai_agent": 1,
        "external": 1,
        "system": 1,
    }
    assert stats["by_outcome"] == {"success": 7, "failure": 1}
    assert sum(stats["by_day"].values()) == 8
    assert (NOW - timedelta(days=100)).strftime("%Y-%m-%d") in stats["by_day"]
    assert stats["first"] < stats["last"]
    span = datetime.fromisoformat(stats["last"]) - datetime.fromisoformat(stats["first"])
    assert stats["span_seconds"] == span.total_seconds() >= 100 * 86400
    assert stats["db"] == ledger.db  # a URL as given (it holds no password)
    if on_postgres(ledger.db):  # the three tables with their indexes; no separate log
        assert stats["size_bytes"] > 0 and stats["wal_bytes"] == 0
        assert stats["schema_version"] == PG_SCHEMA_VERSION == 2
    else:
        assert stats["size_bytes"] == Path(ledger.db).stat().st_size > 0
        assert stats["schema_version"] == SCHEMA_VERSION == 4
    human = run_db(ledger, "stats").stdout
    assert "order.created" in human and "By actor type" in human and "Size" in human
    assert f"Ledger      {ledger.db}" in human.replace("\n" + " " * 12, "")  # wrapped
    assert re.search(r"Covers +(99|100) days", human)
    assert all(len(line) <= 80 for line in human.splitlines())


def test_stats_on_an_empty_ledger(
    make_client: Callable[..., DecisionTraceClient], ledger_target: str
) -> None:
    client = make_client()
    client.close()
    assert client.db_path == ledger_target
    stats = json_lines(run("stats", "--db", client.db_path, "--json"))[0]
    assert stats["events"] == 0 and stats["first"] is None and stats["by_day"] == {}


def test_a_password_in_the_url_is_never_shown(
    make_client: Callable[..., DecisionTraceClient], pg_url: str, tmp_path: Path
) -> None:
    """``--db postgresql://user:password@...``: stats, errors and copy's report name the
    ledger by its URL without the password (PostgreSQL only: a file has none)."""
    client = make_client(db_path=pg_url, durability="sync")
    client.trace("order.created", "Order created").by_user("cust-1").record()
    client.close()
    parts = urlsplit(pg_url)
    password = parts.password or "s3cret-pw"  # the test server trusts, or takes its own
    user, host = parts.username or "", parts.netloc.rpartition("@")[2]
    secret = urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))
    public = urlunsplit(parts._replace(netloc=f"{user}@{host}"))
    results = [
        run("stats", "--db", secret, "--json"),
        run("stats", "--db", secret),
        run("show", "0123456789abcdef", "--db", secret, ok=False),
        run("why", "order:never", "--db", secret, ok=False),
        run("copy", "--from", secret, "--to", str(tmp_path / "copy.db")),
        run("copy", "--from", secret, "--to", secret, ok=False),
    ]
    for result in results:
        assert password not in result.stdout + result.stderr
    assert json_lines(results[0])[0]["db"] == public
    assert f"Ledger      {public}" in results[1].stdout.replace("\n" + " " * 12, "")
    assert f"no event with id '0123456789abcdef' in {public}" in results[2].stderr
    assert f"no events about order 'never' in {public}" in results[3].stderr
    assert results[4].stdout.startswith(f"Copied {public} to ")
    fails(results[5], 2, f"same ledger ({public})")


# --- export -----------------------------------------------------------------------------


def test_export_jsonl_to_stdout_oldest_first(ledger: Ledger) -> None:
    exported = json_lines(run_db(ledger, "export"))
    assert len(exported) == 8
    assert exported[0]["id"] == ledger.old
    listed = json_lines(run_db(ledger, "events", "--json", "--limit", "0"))
    assert sorted(e["id"] for e in exported) == sorted(e["id"] for e in listed)
    assert {e["id"]: e for e in exported} == {e["id"]: e for e in listed}
    assert json_lines(run_db(ledger, "export", "--json")) == exported


def test_export_csv_to_file_with_filters(ledger: Ledger, tmp_path: Path) -> None:
    out = tmp_path / "out" / "refunds.csv"
    out.parent.mkdir()
    result = run_db(ledger, "export", "--format", "CSV", "--object", "order:ord-1", "-o", str(out))
    assert "Exported 4 events" in result.stderr
    assert result.stdout == ""
    assert out.stat().st_mode & 0o777 == 0o600
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"), newline="")))
    assert [r["id"] for r in rows] == [
        ledger.created,
        ledger.workflow,
        ledger.refunded,
        ledger.hostile,
    ]
    refund = rows[2]
    assert refund["actor_type"] == "ai_agent"
    assert refund["outcome"] == "failure"
    assert json.loads(refund["objects"])[0]["state_after"]["status"] == "refunded"
    assert json.loads(refund["rejection_reasons"])["replace"] == "Customer requested full refund"
    assert rows[3]["description"] == HOSTILE_DESCRIPTION
    assert list(tmp_path.joinpath("out").iterdir()) == [out]


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_export_csv_cells_never_run_as_spreadsheet_formulas(
    make_client: Callable[..., DecisionTraceClient], ledger_target: str, start: str
) -> None:
    client = make_client(durability="sync")
    formula = start + 'HYPERLINK("http://evil.example","refund")'
    event_id = (
        client.trace("order.note", formula)
        .by_user("cust-1", start + "cmd|' /C calc'!A0")
        .because(formula, context={"note": formula})
        .record()
    )
    rows = list(
        csv.DictReader(
            io.StringIO(run("export", "--db", ledger_target, "--format", "csv").stdout, newline="")
        )
    )
    (row,) = rows
    assert row["id"] == event_id
    assert row["description"] == row["reasoning"] == "'" + formula
    assert row["actor_name"] == "'" + start + "cmd|' /C calc'!A0"
    assert json.loads(row["context"]) == {"note": formula}  # a JSON cell starts with {
    # JSON lines keep the exact text.
    (line,) = json_lines(run("export", "--db", ledger_target))
    assert line["description"] == formula


def test_export_has_no_progress_bar_when_not_a_terminal(ledger: Ledger, tmp_path: Path) -> None:
    result = run_db(ledger, "export", "-o", str(tmp_path / "x.jsonl"))
    assert "Exporting" not in result.stderr
    assert result.stderr.strip() == f"Exported 8 events to {tmp_path / 'x.jsonl'}."


@pytest.mark.sqlite_only  # about the output path: refused before the ledger is read
def test_export_to_a_missing_folder(ledger: Ledger, tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "folder.csv"
    fails(run_db(ledger, "export", "-o", str(target), ok=False), 1, "does not exist")
    fails(run_db(ledger, "export", "-o", str(tmp_path), ok=False), 1, "is a directory")
    assert not (tmp_path / "no").exists()


def test_export_json_conflicts_with_csv(ledger: Ledger) -> None:
    fails(run_db(ledger, "export", "--json", "--format", "csv", ok=False), 2, "--format jsonl")


def _record(i: int, start_ns: int) -> EventRecord:
    return EventRecord(
        id=f"{i + 1:016x}",
        trace_id=f"{i + 1:032x}",
        parent_id=None,
        start_ns=start_ns + i,
        duration_ns=1000,
        event_type="bulk.event",
        description=f"Bulk event number {i} with some description text to make it sizeable",
        actor_type="compute",
        actor_id="loader",
        actor_name="Bulk loader",
        actor_json=None,
        reasoning="Loaded in bulk to check that export streams",
        decision_json='{"context":{"batch":"x"},"alternatives":[],"rejection_reasons":{},'
        '"confidence":null,"risk_level":null}',
        object_types=("order",),
        object_ids=(f"ord-{i}",),
        objects_json=None,
        tags=("bulk",),
        outcome="success",
        error=None,
        metadata_json=None,
        service_name="loader",
    )


def test_export_streams_in_bounded_memory(ledger_target: str, tmp_path: Path) -> None:
    count = 20_000
    start = int(NOW.timestamp()) * 1_000_000_000
    for chunk in range(0, count, 5000):
        write_records(ledger_target, [_record(i, start) for i in range(chunk, chunk + 5000)])
    out = tmp_path / "all.jsonl"
    tracemalloc.start()
    try:
        run("export", "--db", ledger_target, "-o", str(out))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = out.stat().st_size
    with out.open(encoding="utf-8") as lines:
        assert sum(1 for _ in lines) == count
    # Holding every event (or the output) in memory would need far more than this.
    assert size > 10_000_000
    assert peak < 8_000_000, peak


def test_export_progress_bar_on_a_terminal(ledger: Ledger, tmp_path: Path) -> None:
    pty = pytest.importorskip("pty")
    controller, terminal = pty.openpty()
    out = tmp_path / "x.jsonl"
    try:
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "decision_trace",
                "export",
                "--db",
                ledger.db,
                "-o",
                str(out),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=terminal,
            timeout=120,
            check=False,
        )
        os.close(terminal)
        seen = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(controller)
    assert completed.returncode == 0
    assert b"Exporting" in seen
    assert len(out.read_text(encoding="utf-8").splitlines()) == 8


# --- prune ------------------------------------------------------------------------------


def integrity(target: str | Path) -> str:
    """The ledger's integrity check, run outside the CLI: SQLite's own for a file, the
    backend's consistency check for PostgreSQL (``ok``, or the problems found)."""
    if on_postgres(target):
        ledger = open_ledger(target, create=False, read_only=True)
        try:
            return "; ".join(ledger.check()) or "ok"
        finally:
            ledger.close()
    with closing(sqlite3.connect(target)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def test_prune_dry_run_then_for_real(ledger: Ledger) -> None:
    dry = json_lines(run_db(ledger, "prune", "--older-than", "90d", "--dry-run", "--json"))[0]
    assert (dry["dry_run"], dry["events"], dry["objects"], dry["tags"]) == (True, 1, 1, 1)
    assert len(json_lines(run_db(ledger, "events", "--json", "--limit", "0"))) == 8

    report = json_lines(run_db(ledger, "prune", "--older-than", "90d", "--json"))[0]
    assert (report["events"], report["objects"], report["tags"]) == (1, 1, 1)
    assert report["integrity_check"] == "ok"
    remaining = [e["id"] for e in json_lines(run_db(ledger, "events", "--json", "--limit", "0"))]
    assert ledger.old not in remaining and len(remaining) == 7
    assert run_db(ledger, "search", "zanzibarword").stdout == ""
    fails(run_db(ledger, "why", "order:ord-old", ok=False), 1, "no events about order")
    assert integrity(ledger.db) == "ok"

    again = run_db(ledger, "prune", "--older-than", "90d")
    assert "Deleted 0 events" in again.stdout
    assert "Integrity check: ok" in again.stdout


def test_prune_vacuum_removes_the_bytes(ledger: Ledger) -> None:
    if on_postgres(ledger.db):
        result = run_db(ledger, "prune", "--older-than", "2000h", "--vacuum")
        assert "Deleted 1 event older than" in result.stdout
        assert "Ledger compacted: the deleted data's space is given back." in result.stdout
        assert "File" not in result.stdout and result.stderr == ""
    else:
        db = Path(ledger.db)
        assert b"zanzibarword" in db.read_bytes() + _wal(db)
        result = run_db(ledger, "prune", "--older-than", "2000h", "--vacuum")
        assert "Deleted 1 event older than" in result.stdout
        assert "File vacuumed: the deleted data is gone from disk." in result.stdout
        assert b"zanzibarword" not in db.read_bytes() + _wal(db)
    assert integrity(ledger.db) == "ok"
    assert len(json_lines(run_db(ledger, "export"))) == 7
    assert run_db(ledger, "search", "zanzibarword").stdout == ""


@pytest.mark.sqlite_only  # an SQLite reader pinning the write-ahead log
def test_prune_vacuum_while_another_process_reads(ledger: Ledger) -> None:
    with closing(sqlite3.connect(ledger.db, isolation_level=None)) as reader:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM events").fetchone()[0] == 8
        result = run_db(ledger, "prune", "--older-than", "90d", "--vacuum", "--json")
        reader.execute("COMMIT")
    report = json_lines(result)[0]
    assert (report["events"], report["vacuumed"], report["checkpointed"]) == (1, True, False)
    assert report["integrity_check"] == "ok"
    assert integrity(ledger.db) == "ok"
    again = json_lines(run_db(ledger, "prune", "--older-than", "90d", "--vacuum", "--json"))
    assert again[0]["checkpointed"] is True
    assert b"zanzibarword" not in Path(ledger.db).read_bytes() + _wal(Path(ledger.db))


def _wal(db: Path) -> bytes:
    wal = Path(f"{db}-wal")
    return wal.read_bytes() if wal.exists() else b""


def test_prune_refuses_the_future_and_needs_a_cutoff(ledger: Ledger) -> None:
    fails(run_db(ledger, "prune", "--older-than", "2999-01-01", ok=False), 2, "future")
    fails(run_db(ledger, "prune", ok=False), 2, "--older-than")
    fails(run_db(ledger, "prune", "--older-than", "soon", ok=False), 2, "--older-than")


# --- hostile input and errors -----------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("events", "--object", "ord-1"),
        ("events", "--object", "order:"),
        ("events", "--object", ":ord-1"),
        ("events", "--object", "spaceship:1"),
        ("export", "--object", "order"),
        ("why", "widget:1"),
        ("why", "order:"),
        ("why", ":ord-1"),
        ("why", "  "),
    ],
)
def test_malformed_object_is_one_line(ledger: Ledger, args: tuple[str, ...]) -> None:
    line = fails(run_db(ledger, *args, ok=False), 2)
    assert "TYPE:ID" in line or "object type" in line, line


@pytest.mark.parametrize(
    "args",
    [
        ("events", "--actor-type", "robot"),
        ("events", "--outcome", "maybe"),
        ("events", "--since", "last tuesday"),
        ("events", "--since", "999999999w"),
        ("events", "--since", "1h", "--until", "2h"),
        ("events", "--limit", "-1"),
        ("show", "not-an-id"),
        ("show", "123"),
        ("show", "0123456789abcdef0"),
        ("chain", "zzzzzzzzzzzzzzzz"),
        ("events", "--trace", "0123"),
        ("events", "--trace", "z" * 32),
        ("stats", "--days", "x"),
        ("export", "--format", "xml"),
        ("nonsense",),
        ("events", "--no-such-option"),
    ],
)
def test_bad_arguments_are_one_line(ledger: Ledger, args: tuple[str, ...]) -> None:
    fails(run_db(ledger, *args, ok=False), 2)


def test_unknown_event_id(ledger: Ledger) -> None:
    fails(run_db(ledger, "show", "0123456789abcdef", ok=False), 1, "no event with id")
    fails(run_db(ledger, "chain", "0123456789abcdef", ok=False), 1, "no event with id")
    fails(run_db(ledger, "why", "order:never", ok=False), 1, "no events about order 'never'")


MISSING_LEDGER_COMMANDS = [
    ("events",),
    ("show", "0123456789abcdef"),
    ("why", "order:ord-1"),
    ("search", "refund"),
    ("chain", "0123456789abcdef"),
    ("stats",),
    ("export",),
    ("prune", "--older-than", "90d"),
]


@pytest.mark.parametrize("args", MISSING_LEDGER_COMMANDS)
def test_missing_database_is_never_created(tmp_path: Path, args: tuple[str, ...]) -> None:
    missing = tmp_path / "nowhere" / "traces.db"
    fails(run(*args, "--db", str(missing), ok=False), 1, "no decision-trace database")
    assert not missing.parent.exists()
    default = tmp_path / "home" / ".local" / "share" / "decision-trace"
    fails(run(*args, ok=False), 1, "no decision-trace database")
    assert not default.exists()


def test_a_schema_without_a_ledger_is_never_written(pg_url: str) -> None:
    """The PostgreSQL side of the two tests around this one: a URL naming an empty schema,
    or a schema whose ``events`` table belongs to another application, is one line, exit
    status 1, for every command, and nothing is created or changed there."""
    no_ledger = "no decision-trace ledger at " + pg_url
    for args in MISSING_LEDGER_COMMANDS:
        fails(run(*args, "--db", pg_url, ok=False), 1, no_ledger)
    assert not ledger_exists(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (x integer)")
        conn.execute("INSERT INTO events VALUES (1)")
    for args in MISSING_LEDGER_COMMANDS:
        line = fails(run(*args, "--db", pg_url, ok=False), 1, pg_url, "left untouched")
        assert "has an events table that is not a decision-trace ledger" in line
    with psycopg.connect(pg_url) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        ).fetchall()
        assert tables == [("events",)]
        assert conn.execute("SELECT x FROM events").fetchall() == [(1,)]


def test_files_that_are_not_ledgers(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not SQLite\n" * 100)
    fails(run("events", "--db", str(text), ok=False), 1, "not a decision-trace database")
    empty = tmp_path / "empty.db"
    empty.touch()
    fails(run("stats", "--db", str(empty), ok=False), 1, "empty")
    assert empty.stat().st_size == 0
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE t (x)")
    fails(run("stats", "--db", str(other), ok=False), 1, "another application")
    fails(run("events", "--db", str(tmp_path), ok=False), 2, "directory")


def test_a_ledger_from_a_newer_release(ledger: Ledger) -> None:
    if on_postgres(ledger.db):
        with psycopg.connect(ledger.db, autocommit=True) as pg:
            pg.execute("UPDATE decision_trace_schema SET version = 99")
    else:
        with closing(sqlite3.connect(ledger.db)) as conn:
            conn.execute("PRAGMA user_version = 99")
            conn.commit()
    fails(run_db(ledger, "stats", ok=False), 1, "schema version 99", "upgrade decision-trace")


def test_recorded_escape_sequences_never_reach_the_terminal(ledger: Ledger) -> None:
    for args in (
        ("events",),
        ("show", ledger.hostile),
        ("why", "order:ord-1"),
        ("search", "customer"),
        ("chain", ledger.hostile),
    ):
        out = run_db(ledger, *args).stdout
        assert "\x1b" not in out and "\u202e" not in out, args
    shown = run_db(ledger, "show", ledger.hostile).stdout
    assert "\\x1b[2J" in shown and "\\u202e" in shown
    as_json = json_lines(run_db(ledger, "show", ledger.hostile, "--json"))[0]
    assert as_json["description"] == HOSTILE_DESCRIPTION


def test_colour_only_on_a_terminal(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = run_db(ledger, "show", ledger.refunded).stdout
    assert "\x1b[" not in plain
    coloured = run_db(ledger, "show", ledger.refunded, color=True).stdout
    assert "\x1b[" in coloured
    assert click.unstyle(coloured) == plain
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[" not in run_db(ledger, "show", ledger.refunded, color=True).stdout


# --- help and documentation -------------------------------------------------------------


def test_every_command_is_registered() -> None:
    assert set(main.commands) == set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_help_has_an_example(name: str) -> None:
    result = run(name, "--help")
    assert "Examples:" in result.stdout
    assert f"decision-trace {name} " in result.stdout
    ledger_options: tuple[str, ...] = ("--db PATH|URL",)
    if name == "copy":
        ledger_options = ("--from PATH|URL", "--to PATH|URL")
    elif name == "keygen":  # makes key files; touches no ledger
        ledger_options = ()
    for option in ledger_options:
        assert option in result.stdout
    if name not in ("serve", "ui"):  # a service logs lines; it has no output for scripts
        assert "--json" in result.stdout
    assert all(len(line) <= 80 for line in result.stdout.splitlines())


def test_main_help_and_version() -> None:
    out = run("--help").stdout
    for name in COMMANDS:
        assert name in out
    assert "decision-trace why order:ord-123" in out
    assert "decision-trace" in run("--version").stdout


def test_every_command_is_documented_in_the_cli_reference() -> None:
    readme = (REPO_ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    section = readme.split("## Command line", 1)[1].split("\n## ", 1)[0]
    for name in main.commands:
        assert f"decision-trace {name}" in section, name
    assert "--json" in section and "--db" in section


# --- real processes ---------------------------------------------------------------------


def _console_script() -> list[str]:
    script = Path(sys.executable).parent / "decision-trace"
    return [str(script)] if script.exists() else [sys.executable, "-m", "decision_trace"]


def test_installed_console_script_on_recorded_data(ledger: Ledger, no_ledger: str) -> None:
    env = {**os.environ, "DECISION_TRACE_DB": ledger.db}

    def cli(*args: str, command: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*(command or _console_script()), *args],
            capture_output=True,
            text=True,
            encoding="utf-8",
            env=env,
            timeout=120,
            check=False,
        )

    why = cli("why", "order:ord-1", "--json")
    assert why.returncode == 0, why.stderr
    history = [json.loads(line) for line in why.stdout.splitlines()]
    assert history[0]["id"] == ledger.created
    assert history[2]["decision"]["reasoning"] == "Refund approved due to product defect"

    human = cli("why", "order:ord-1")
    assert "status: paid → refunded" in human.stdout
    assert "\x1b" not in human.stdout

    python_m = [sys.executable, "-m", "decision_trace"]
    module = cli("show", ledger.refunded, "--json", command=python_m)
    assert module.returncode == 0, module.stderr
    assert json.loads(module.stdout)["id"] == ledger.refunded

    missing = cli("show", "0123456789abcdef")
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert missing.stderr.strip().splitlines() == [
        f"Error: no event with id '0123456789abcdef' in {ledger.db}"
    ]

    usage = cli("events", "--object", "nonsense")
    assert usage.returncode == 2
    assert len(usage.stderr.strip().splitlines()) == 1
    assert "Traceback" not in usage.stderr

    absent = cli("stats", "--db", no_ledger)
    assert absent.returncode == 1 and absent.stdout == ""
    assert absent.stderr.startswith("Error: no decision-trace ")
    assert not ledger_exists(no_ledger)


NEW_USER_PROGRAM = """
import sys
from decision_trace import DecisionTraceClient

client = DecisionTraceClient(db_path=sys.argv[1])
refund = (
    client.trace("order.refunded", "Refund of 89.00 USD for order ord-123")
    .by_ai_agent("support-bot", "Support Assistant", model="gpt-4o")
    .affecting_order("ord-123", state_before={"status": "paid"}, state_after={"status": "refunded"})
    .because(
        "Parcel arrived crushed; the customer sent photos",
        context={"photos": 3, "customer_tier": "gold"},
        alternatives=[{"action": "replace"}],
        rejection_reasons={"replace": "out of stock"},
    )
    .with_tags("refund", "damaged-in-transit")
    .record()
)
note = (
    client.trace("order.note", "Customer called back")
    .child_of(refund)
    .by_user("agent-7")
    .affecting_order("ord-123")
    .record()
)
client.close()
print(refund, note)
"""


def test_a_new_user_records_and_asks_through_one_target(ledger_target: str, tmp_path: Path) -> None:
    """What a new user does with a SQLite path or a ``postgresql://`` URL alike: record
    from their own program (README's example, ``db_path=`` the target), then ask
    ``python -m decision_trace ... --db <target>`` in another process."""
    program = tmp_path / "shop.py"
    program.write_text(NEW_USER_PROGRAM, encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if key != "DECISION_TRACE_DB"}

    def python(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, *args],
            capture_output=True,
            text=True,
            encoding="utf-8",
            env=env,
            cwd=tmp_path,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, (args, done.stderr)
        assert "Traceback" not in done.stderr
        return done

    refund, note = python(str(program), ledger_target).stdout.split()

    def ask(*args: str) -> str:
        return python("-m", "decision_trace", *args, "--db", ledger_target).stdout

    listed = [json.loads(line) for line in ask("events", "--json").splitlines()]
    assert [e["id"] for e in listed] == [note, refund]
    assert listed[1]["actor"]["model"] == "gpt-4o"
    assert listed[1]["decision"]["context"] == {"photos": 3, "customer_tier": "gold"}
    assert listed[1]["objects"][0]["state_after"] == {"status": "refunded"}
    assert listed[0]["parent_event_id"] == refund
    story = ask("why", "order:ord-123")
    assert story.startswith("order ord-123: 2 events")
    assert "why        Parcel arrived crushed; the customer sent photos" in story
    assert "rejected   replace: out of stock" in story
    assert "changed    status: paid → refunded" in story
    assert refund in ask("search", "crushed")
    assert refund in ask("show", refund[:8]) and "damaged-in-transit" in ask("show", refund)
    tree = ask("chain", note)
    assert tree.index(refund) < tree.index(note)
    (stats,) = [json.loads(line) for line in ask("stats", "--json").splitlines()]
    assert (stats["db"], stats["events"]) == (ledger_target, 2)
    assert stats["by_actor_type"] == {"ai_agent": 1, "user": 1}
    exported = [json.loads(line) for line in ask("export").splitlines()]
    assert [e["id"] for e in exported] == [refund, note]


def test_demo_data_through_a_real_process(ledger_target: str) -> None:
    """``make demo``'s script records a day; the command answers questions about it (the
    ledger named by $DECISION_TRACE_DB for both)."""
    demo = REPO_ROOT / "examples" / "ecommerce_demo.py"
    db = ledger_target
    env = {**os.environ, "DECISION_TRACE_DB": db}
    recorded = subprocess.run(
        [sys.executable, str(demo)], capture_output=True, text=True, env=env, timeout=300
    )
    assert recorded.returncode == 0, recorded.stderr

    def cli(*args: str) -> str:
        done = subprocess.run(
            [*_console_script(), *args],
            capture_output=True,
            text=True,
            encoding="utf-8",
            env=env,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    stats = json.loads(cli("stats", "--json"))
    events = [json.loads(line) for line in cli("events", "--json", "--limit", "0").splitlines()]
    assert stats["events"] == len(events) > 0
    refund = next(e for e in events if e["event_type"] == "order.refunded")
    order = next(o for o in refund["objects"] if o["object_type"] == "order")
    why = cli("why", f"order:{order['external_id']}", "--json")
    story = [json.loads(line) for line in why.splitlines()]
    assert refund["id"] in [e["id"] for e in story]
    assert refund["id"] in cli("chain", refund["id"])
    exported = cli("export", "--format", "csv")
    assert len(list(csv.reader(io.StringIO(exported)))) == len(events) + 1
    pruned = json.loads(cli("prune", "--older-than", "0s", "--force", "--json"))
    assert pruned["events"] == len(events) and pruned["integrity_check"] == "ok"
    assert integrity(db) == "ok"


def test_why_and_search_stream_histories_longer_than_a_batch(
    make_client: Callable[..., DecisionTraceClient], ledger_target: str
) -> None:
    """``why`` and ``search --limit 0`` read 200 rows at a time; every event of a long
    history comes out, in order, with the title counting them all (or the limit)."""
    client = make_client(durability="sync")
    start = datetime(2025, 3, 1, tzinfo=timezone.utc)
    ids = [
        client.trace("order.touched", f"touch {i}")
        .by_system("ops")
        .affecting_order("ord-long", {"n": i})
        .because("routine recalculation")
        .at(start + timedelta(minutes=i))
        .record()
        for i in range(450)
    ]
    db = ledger_target

    story = run("why", "order:ord-long", "--db", db).stdout
    assert story.startswith("order ord-long: 450 events")
    assert [line.split()[-1] for line in story.splitlines() if "event  " in line] == ids
    assert run("why", "order:ord-long", "--db", db, "--limit", "5").stdout.startswith(
        "order ord-long: 5 events"
    )
    history = json_lines(run("why", "order:ord-long", "--db", db, "--json"))
    assert [e["id"] for e in history] == ids

    found = json_lines(run("search", "routine", "--db", db, "--limit", "0", "--json"))
    assert [e["id"] for e in found] == ids[::-1]  # newest stored first
    assert len(json_lines(run("search", "routine", "--db", db, "--json"))) == 50


def test_huge_limits_mean_no_limit_and_old_cutoffs_name_the_option(ledger: Ledger) -> None:
    huge = "99999999999999999999999"
    assert json_lines(run_db(ledger, "events", "--json", "--limit", huge)) == json_lines(
        run_db(ledger, "events", "--json", "--limit", "0")
    )
    fails(run_db(ledger, "prune", "--older-than", "1000-01-01", ok=False), 1, "--older-than")


# --- issue 18: the CLI for a support agent -------------------------------------------------


def test_why_finds_an_object_by_its_id_alone(
    ledger: Ledger, make_client: Callable[..., DecisionTraceClient]
) -> None:
    typed = run_db(ledger, "why", "order:ord-1").stdout
    assert typed.startswith("order ord-1: 4 events")
    assert run_db(ledger, "why", "ord-1").stdout == typed
    assert run_db(ledger, "why", "ord-1", "--json").stdout == (
        run_db(ledger, "why", "order:ord-1", "--json").stdout
    )
    assert run_db(ledger, "why", "SKU-789").stdout.startswith("inventory SKU-789: 1 event")
    fails(
        run_db(ledger, "why", "never", ok=False),
        1,
        "no events about any object with id 'never'",
    )
    hostile = fails(run_db(ledger, "why", "\x1b[2J\u202e", ok=False), 1, "'\\x1b[2J\\u202e'")
    assert "\x1b" not in hostile and "\u202e" not in hostile

    client = make_client(durability="sync")
    client.trace("coupon.issued", "Coupon named after the order").affecting(
        "coupon", "ord-1"
    ).record()
    client.trace("po.raised", "An id with a colon").affecting("other", "po:7").record()
    client.close()
    line = fails(run_db(ledger, "why", "ord-1", ok=False), 1, "TYPE:ID")
    assert "'ord-1' is the id of 2 objects (order:ord-1, coupon:ord-1)" in line
    # Typed, each one is found as before.
    assert run_db(ledger, "why", "order:ord-1").stdout == typed
    assert run_db(ledger, "why", "coupon:ord-1").stdout.startswith("coupon ord-1: 1 event")
    # An id holding a colon is found whole when its start is no object type.
    assert run_db(ledger, "why", "po:7").stdout.startswith("other po:7: 1 event")
    fails(run_db(ledger, "why", "widget:1", ok=False), 2, "unknown object type 'widget'")


def _with_id(event_id: str, start_ns: int) -> EventRecord:
    return replace(_record(0, start_ns), id=event_id, trace_id=event_id * 2)


def test_show_and_chain_take_a_unique_id_prefix(ledger: Ledger) -> None:
    ids = [e["id"] for e in json_lines(run_db(ledger, "events", "--json", "--limit", "0"))]
    length = next(n for n in range(4, 17) if len({i[:n] for i in ids}) == len(ids))
    short = ledger.refunded[:length]
    assert run_db(ledger, "show", short).stdout == run_db(ledger, "show", ledger.refunded).stdout
    assert run_db(ledger, "show", short.upper(), "--json").stdout == (
        run_db(ledger, "show", ledger.refunded, "--json").stdout
    )
    chained = run_db(ledger, "chain", ledger.adjusted[:length]).stdout
    assert chained == run_db(ledger, "chain", ledger.adjusted).stdout
    assert "◀ this event" in next(line for line in chained.splitlines() if ledger.adjusted in line)

    start = int(NOW.timestamp()) * 1_000_000_000
    write_records(
        ledger.db,
        [
            _with_id("abcd000000000001", start),
            _with_id("abcd000000000002", start),
            *(_with_id(f"abce00000000000{i}", start) for i in range(7)),
        ],
    )
    for command in ("show", "chain"):
        line = fails(run_db(ledger, command, "abcd", ok=False), 1)
        assert "'abcd' is ambiguous: 2 event ids start with it" in line
        assert "(abcd000000000001, abcd000000000002)" in line and "type more" in line
        line = fails(run_db(ledger, command, "ABCE", ok=False), 1, "more than 5")
        assert "abce000000000004, ..." in line and "abce000000000005" not in line
        fails(run_db(ledger, command, "abcf", ok=False), 1, "no event id starts with 'abcf'")
        assert "abcd000000000002" in run_db(ledger, command, "ABCD000000000002").stdout
        fails(run_db(ledger, command, "abc", ok=False), 2, "at least 4")


def test_events_by_trace(ledger: Ledger) -> None:
    trace = json_lines(run_db(ledger, "show", ledger.adjusted, "--json"))[0]["correlation_id"]
    found = json_lines(run_db(ledger, "events", "--trace", trace.upper(), "--json"))
    assert sorted(e["id"] for e in found) == sorted(
        [ledger.workflow, ledger.payment, ledger.picking, ledger.adjusted]
    )
    assert {e["correlation_id"] for e in found} == {trace}
    both = json_lines(
        run_db(ledger, "events", "--trace", trace, "--type", "payment.captured", "--json")
    )
    assert [e["id"] for e in both] == [ledger.payment]
    assert run_db(ledger, "events", "--trace", "f" * 32).stderr == "No events match.\n"
    exported = json_lines(run_db(ledger, "export", "--trace", trace))
    assert [e["id"] for e in exported] == [e["id"] for e in found][::-1]


def test_money_prints_with_its_currency_decimals(
    make_client: Callable[..., Any], ledger_target: str
) -> None:
    from decision_trace.ecommerce import EcommerceClient

    shop = make_client(EcommerceClient, durability="sync")
    created = shop.order_created(
        "ord-9", "cust-9", 89, [{"sku": "MUG-1", "qty": 1, "price": 89}]
    ).record()
    refunded = shop.order_refunded(
        "ord-9", 30, "Lid arrived cracked", order_total=89, previous_status="paid"
    ).record()
    shop.order_created("ord-jp", "cust-9", 1000, [], currency="JPY").record()
    shop.order_created("ord-kw", "cust-9", 12.5, [], currency="KWD").record()
    shop.payment_captured("pay-9", "ord-9", 0.125, "card").record()
    repriced = shop.price_updated("MUG-1", 89, 94.5, "Supplier raised prices").record()
    shop.close()
    db = ledger_target

    story = run("why", "ord-9", "--db", db).stdout
    flat = " ".join(story.split())  # the items wrap to a second line
    if on_postgres(db):  # jsonb keeps no key order (docs/postgres.md): shortest key first
        items = '[{"price": 89.00, "qty": 1, "sku": "MUG-1"}]'
        assert f"state items: {items}, total: 89.00 USD, status: created" in flat
        assert "state      order_total: 89.00 USD, refund_amount: 30.00 USD" in story
    else:
        assert 'state status: created, total: 89.00 USD, items: [{"price": 89.00, "qty": 1,' in flat
        assert "state      refund_amount: 30.00 USD, order_total: 89.00 USD" in story
    assert "currency" not in story and "89.0," not in story and "30.0," not in story
    assert "1000 JPY" in run("why", "order:ord-jp", "--db", db).stdout
    assert "total: 12.500 KWD" in run("why", "ord-kw", "--db", db).stdout
    assert "amount: 0.125 USD" in run("why", "pay-9", "--db", db).stdout  # never rounded away

    product = run("why", "product:MUG-1", "--db", db).stdout
    assert "price: 89.00 USD → 94.50 USD" in product
    assert "change: 5.50 USD" in product
    shown = run("show", repriced, "--db", db).stdout
    assert "price: 89.00 USD → 94.50 USD" in shown and "change: 5.50 USD" in shown
    shown = run("show", created, "--db", db).stdout
    assert "total: 89.00 USD" in shown and "currency: USD" not in shown
    assert "refund_amount: 30.00 USD" in run("show", refunded, "--db", db).stdout

    # JSON keeps what is stored.
    (stored,) = [
        o
        for o in json_lines(run("show", refunded, "--db", db, "--json"))[0]["objects"]
        if o["object_type"] == "order"
    ]
    assert stored["state"] == {"refund_amount": 30.0, "currency": "USD", "order_total": 89.0}


def test_money_needs_a_currency_and_a_money_key(ledger: Ledger) -> None:
    out = run_db(ledger, "show", ledger.refunded).stdout
    assert "refund: 0 → 99.99" in out  # no currency: as stored
    assert "total: 149.99" in run_db(ledger, "show", ledger.created).stdout


def test_chain_shows_each_steps_reasoning_and_cuts_at_words(ledger: Ledger) -> None:
    plain = run_db(ledger, "chain", ledger.refunded).stdout
    (detail,) = [line for line in plain.splitlines() if "refund-ai" in line]
    assert detail.endswith("…") and len(detail) <= 80
    shown = detail.split(" · ", 1)[1][:-1]
    full = "Refund issued after a long back-and-forth with the customer"
    assert full.startswith(shown) or shown.startswith(full)
    assert full.split()[len(shown.split()) - 1] == shown.split()[-1]  # whole last word
    assert "why:" not in plain

    lines = run_db(ledger, "chain", ledger.refunded, "--why").stdout.splitlines()
    at = next(
        i
        for i, line in enumerate(lines)
        if line.endswith('"Refund Agent" (model gpt-4, version 2.1)')
    )
    step = " ".join(" ".join(lines[at + 1 :]).split())
    assert step == (
        "what: Refund issued after a long back-and-forth with the customer about a defective "
        "grinder whose burrs were misaligned from the factory, which took several emails: "
        "https://support.example.com/tickets/0123456789abcdef0123456789 "
        "why: Refund approved due to product defect error: card network timeout"
    )
    assert all(len(line) <= 80 for line in lines)
    tree = run_db(ledger, "chain", ledger.adjusted, "--why").stdout
    assert "why:" not in tree  # steps without reasoning add no line


def test_parse_time_months_and_years() -> None:
    now = datetime(2024, 8, 31, 12, 0, tzinfo=timezone.utc)
    assert parse_time("30d", now) == now - timedelta(days=30)
    assert parse_time("6mo", now) == datetime(2024, 2, 29, 12, 0, tzinfo=timezone.utc)
    assert parse_time("1y", now) == datetime(2023, 8, 31, 12, 0, tzinfo=timezone.utc)
    assert parse_time("2 years", now) == datetime(2022, 8, 31, 12, 0, tzinfo=timezone.utc)
    assert parse_time("18 months ago", now) == datetime(2023, 2, 28, 12, 0, tzinfo=timezone.utc)
    assert parse_time("90 days", now) == now - timedelta(days=90)
    assert parse_time("6m", now) == now - timedelta(minutes=6)  # m stays minutes
    with pytest.raises(ValueError, match="before year 1"):
        parse_time("999999999y", now)


def test_prune_ages_and_a_recent_cutoff_needs_force(ledger: Ledger) -> None:
    for age in ("30d", "6mo", "1y", "90 days"):
        report = json_lines(run_db(ledger, "prune", "--older-than", age, "--dry-run", "--json"))
        assert report[0]["events"] == (1 if age in ("30d", "90 days") else 0), age
    line = fails(run_db(ledger, "prune", "--older-than", "2h", ok=False), 2)
    assert "less than one day ago" in line and "--force" in line and "--dry-run" in line
    recent = (NOW + timedelta(minutes=1) - timedelta(hours=23)).strftime("%Y-%m-%dT%H:%M")
    fails(run_db(ledger, "prune", "--older-than", recent, ok=False), 2, "--force")
    assert len(json_lines(run_db(ledger, "export"))) == 8
    dry = json_lines(run_db(ledger, "prune", "--older-than", "2h", "--dry-run", "--json"))[0]
    assert dry["events"] == 2
    assert len(json_lines(run_db(ledger, "export"))) == 8
    done = json_lines(run_db(ledger, "prune", "--older-than", "2h", "--force", "--json"))[0]
    assert done["events"] == 2
    assert len(json_lines(run_db(ledger, "export"))) == 6
