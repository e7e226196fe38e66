"""The ledger service as a ledger: ``open_ledger("http://...")`` reads through the read API
and answers every query method as the local ledger behind the service does, on both
backends; writing through it is refused with a message naming the ways that work; the
command line and a client opened on the URL read through it."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import timedelta

import pytest
from click.testing import CliRunner
from read_api_support import BASE, Shop, record_shop, serve

import decision_trace.storage.http as http_module
from decision_trace import DecisionTraceClient
from decision_trace.cli import main
from decision_trace.errors import EventNotFoundError, InvalidInputError, StoreError
from decision_trace.models import ObjectType
from decision_trace.storage import EventFilters, Ledger, open_ledger
from decision_trace.storage.http import HTTPLedger

TOKEN = "ledger-token"


@dataclass
class Pair:
    local: Ledger
    remote: Ledger
    url: str
    shop: Shop
    target: str


@pytest.fixture
def pair(ledger_target: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pair]:
    """The shop in a ledger of each backend, served; the local ledger and the service
    opened as a ledger (the token from the environment, as a user sets it)."""
    shop = record_shop(ledger_target)
    local = open_ledger(ledger_target)
    monkeypatch.setenv("DECISION_TRACE_TOKEN", TOKEN)
    try:
        with serve(local, token=TOKEN) as url:
            remote = open_ledger(url)
            yield Pair(local, remote, url, shop, ledger_target)
            remote.close()
    finally:
        local.close()


QUESTIONS = [
    EventFilters(),
    EventFilters.build(event_types=["order.refunded", "burst.event"]),
    EventFilters.build(actor_types="ai_agent"),
    EventFilters.build(actor_ids=["agent-7", "pricing"]),
    EventFilters.build(object_types="order", object_ids="ord/1"),
    EventFilters.build(object_types="product"),
    EventFilters.build(object_ids="weird id/../%2F?#"),
    EventFilters.build(tags=["burst", "web"]),
    EventFilters.build(outcome="failure"),
    EventFilters.build(start=BASE + timedelta(minutes=1), end=BASE + timedelta(days=5, seconds=1)),
    EventFilters(start_ns=-(10**30), end_ns=10**30),
    EventFilters.build(tags="t\x00g"),
    EventFilters(event_types=()),  # an empty list of values matches nothing
]


@pytest.fixture(params=[1000, 2], ids=["pages-of-1000", "pages-of-2"])
def page_size(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """The largest answer the client asks for: the server's, or 2 to make every read
    follow cursors across many pages."""
    monkeypatch.setattr(http_module, "MAX_PAGE", request.param)
    monkeypatch.setattr(http_module, "_STREAM_PAGE", min(request.param, 500))
    return int(request.param)


def test_it_is_a_ledger(pair: Pair) -> None:
    assert isinstance(pair.remote, HTTPLedger)
    assert isinstance(pair.remote, Ledger)
    assert pair.remote.location == pair.url
    assert TOKEN not in repr(pair.remote)


def test_every_query_answers_as_the_local_ledger(pair: Pair, page_size: int) -> None:
    local, remote = pair.local, pair.remote
    for filters in QUESTIONS:
        for order in ("desc", "asc"):
            assert remote.query(filters, limit=None, order=order) == local.query(
                filters, limit=None, order=order
            ), (filters, order)
            with closing(remote.iter_events(filters, order=order)) as stream:
                assert list(stream) == local.query(filters, limit=None, order=order)
        for limit, offset in ((100, 0), (1, 0), (3, 2), (0, 0), (5, 100), (2, 9)):
            assert remote.query(filters, limit=limit, offset=offset) == local.query(
                filters, limit=limit, offset=offset
            ), (filters, limit, offset)
        assert remote.count(filters) == local.count(filters)
    assert len(local.query(EventFilters(), limit=None)) > 2 * page_size or page_size == 1000


def test_search_answers_as_the_local_ledger(pair: Pair, page_size: int) -> None:
    for text in ("burst", "parcel crushed", "Remboursé", "\ud800", "\x00", '"(', "", "nothing"):
        for limit in (None, 50, 1, 3, 0):
            assert pair.remote.search(text, limit=limit) == pair.local.search(text, limit=limit)
        with closing(pair.remote.iter_search(text)) as stream:
            assert list(stream) == pair.local.search(text, limit=None)


def test_events_chains_ids_and_objects_answer_as_the_local_ledger(
    pair: Pair, page_size: int
) -> None:
    local, remote = pair.local, pair.remote
    for event_id in [*pair.shop.ids.values(), *pair.shop.burst_ids]:
        assert remote.get_event(event_id) == local.get_event(event_id) is not None
        assert remote.get_event(event_id.upper()) == local.get_event(event_id.upper())
        assert remote.get_chain(event_id) == local.get_chain(event_id)
        assert remote.trace_id_of(event_id) == local.trace_id_of(event_id) is not None
        assert remote.trace_id_of(event_id.upper()) == local.trace_id_of(event_id.upper())
        for length in (1, 4, 16):
            prefix = event_id[:length]
            for limit in (10, 1, None):
                assert remote.event_ids_with_prefix(prefix, limit=limit) == (
                    local.event_ids_with_prefix(prefix, limit=limit)
                )
    for missing in ("0" * 16, "", "a/b", "..", "%2F", "\x00", "\ud800", "x" * 3000):
        assert remote.get_event(missing) is None, missing
        assert remote.trace_id_of(missing) is None
        with pytest.raises(EventNotFoundError):
            remote.get_chain(missing)
    for external_id in (
        "ord/1",
        "sku-9",
        "cust-1",
        "weird id/../%2F?#",
        "two\nlines",
        "nowhere",
        "ORD/1",
    ):
        assert remote.object_types_of(external_id) == local.object_types_of(external_id)
        for object_type in (None, "order", ObjectType.PRODUCT, "customer"):
            expected = local.object_history(external_id, object_type)
            assert remote.object_history(external_id, object_type) == expected
            assert remote.object_history(external_id, object_type, limit=2) == expected[:2]
            with closing(remote.iter_object_history(external_id, object_type)) as stream:
                assert list(stream) == expected
            assert remote.count_object_history(external_id, object_type) == len(expected)


def test_summary_and_sizes(pair: Pair) -> None:
    for days in (None, 1, 0, 10**6):
        assert pair.remote.summary(days=days) == pair.local.summary(days=days)
    size, wal = pair.remote.size_bytes()
    assert size > 0 and wal >= 0
    assert pair.remote.check() == []
    assert pair.remote.confirm_writes() is True


def test_bad_arguments_raise_what_a_local_ledger_raises(pair: Pair) -> None:
    for ledger in (pair.local, pair.remote):
        with pytest.raises(InvalidInputError, match="order"):
            ledger.query(EventFilters(), order="sideways")  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="limit"):
            ledger.query(EventFilters(), limit=-1)
        with pytest.raises(InvalidInputError, match="offset"):
            ledger.query(EventFilters(), offset=-1)
        with pytest.raises(InvalidInputError, match="limit"):
            ledger.search("x", limit=-5)
        for bad in ("", "xyz", "12 34", "%", "_", "\ud800"):
            with pytest.raises(InvalidInputError, match="prefix"):
                ledger.event_ids_with_prefix(bad)
        with pytest.raises(InvalidInputError, match="external_id"):
            ledger.object_types_of("")
        with pytest.raises(InvalidInputError, match="external_id"):
            ledger.object_history("")
        with pytest.raises(InvalidInputError, match="object_type"):
            ledger.object_history("ord/1", "spaceship")


def test_writing_through_it_is_refused_naming_the_ways_that_work(pair: Pair) -> None:
    from decision_trace.record import EventRecord

    remote = pair.remote
    with pytest.raises(StoreError, match="OTLP") as caught:
        remote.write([EventRecord.__new__(EventRecord)])
    assert "/v1/traces" in str(caught.value) and "decision-trace ship" in str(caught.value)
    with pytest.raises(StoreError, match="prune"):
        remote.prune(0, dry_run=True)
    with pytest.raises(StoreError, match="compact"):
        remote.compact()
    with pytest.raises(StoreError, match="records"):
        remote.iter_records()
    assert pair.local.count(EventFilters()) == len(pair.local.query(EventFilters(), limit=None))


def test_the_token_comes_from_the_environment(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DECISION_TRACE_TOKEN")
    without = open_ledger(pair.url)
    with pytest.raises(StoreError, match="DECISION_TRACE_TOKEN"):
        without.count(EventFilters())
    assert without.check() != []
    wrong = HTTPLedger(pair.url, token="nope")
    with pytest.raises(StoreError, match="401"):
        wrong.get_event(pair.shop.ids["created"])
    assert HTTPLedger(pair.url, token=TOKEN).count(EventFilters()) == pair.local.count(
        EventFilters()
    )


def test_closing_ends_use(pair: Pair) -> None:
    pair.remote.close()
    pair.remote.close()
    for call in (
        lambda: pair.remote.query(EventFilters()),
        lambda: pair.remote.query(EventFilters(event_types=())),
        lambda: pair.remote.get_event("0" * 16),
        lambda: list(pair.remote.iter_events(EventFilters())),
        lambda: pair.remote.search("x"),
        lambda: pair.remote.summary(),
    ):
        with pytest.raises(StoreError, match="closed"):
            call()


@pytest.mark.sqlite_only
def test_urls_it_refuses_and_a_service_that_is_not_there(ledger_target: str) -> None:
    for url in ("http://user:pw@host:4318", "https://host?token=x", "http://host#x"):
        with pytest.raises(StoreError):
            open_ledger(url)
    assert open_ledger("HTTPS://Host:4318/prefix/").location == "https://Host:4318/prefix"
    with pytest.raises(StoreError, match="ftp://"):
        open_ledger("ftp://example.com/ledger")
    gone = HTTPLedger("http://127.0.0.1:9", timeout_s=5)  # the discard port: nothing listens
    with pytest.raises(StoreError, match="cannot reach"):
        gone.query(EventFilters())
    (problem,) = gone.check()
    assert "cannot reach" in problem


@pytest.mark.sqlite_only
def test_a_server_that_is_not_the_read_api_is_named_so(ledger_target: str) -> None:
    """A URL where something else answers (here: a path the app does not serve, whose
    404 is Starlette's plain text): its 404 is not "no such event"."""
    ledger = open_ledger(ledger_target)
    try:
        with serve(ledger) as url:
            other = HTTPLedger(url + "/not-the-service")
            with pytest.raises(StoreError, match="decision-trace"):
                other.get_event("0" * 16)
            with pytest.raises(StoreError, match="decision-trace"):
                other.count(EventFilters())
    finally:
        ledger.close()


def test_the_command_line_reads_the_service(pair: Pair) -> None:
    """Every reading command answers the same through --db http://... as on the ledger
    itself (stats: but for where the ledger is)."""
    runner = CliRunner()
    created = pair.shop.ids["created"]
    commands = [
        ["why", "order:ord/1"],
        ["why", "ord/1", "--json"],
        ["why", "sku-9"],
        ["show", created[:6]],
        ["show", created, "--json"],
        ["events", "--json", "--limit", "0"],
        ["events", "--type", "burst.event", "--limit", "3"],
        ["events", "--object", "order:ord/1", "--since", "2026-03-02"],
        ["chain", pair.shop.ids["refund"]],
        ["chain", pair.shop.ids["refund"], "--json"],
        ["search", "parcel", "crushed"],
        ["search", "burst", "--json", "--limit", "0"],
        ["export", "--format", "csv"],
        ["why", "order:nowhere"],
    ]
    for command in commands:
        here = runner.invoke(main, ["--db", pair.target, *command])
        there = runner.invoke(main, ["--db", pair.url, *command])
        assert (there.exit_code, there.stdout) == (here.exit_code, here.stdout), command
        assert there.stderr.replace(pair.url, "X") == here.stderr.replace(pair.target, "X")
    here = runner.invoke(main, ["--db", pair.target, "stats", "--json"])
    there = runner.invoke(main, ["--db", pair.url, "stats", "--json"])
    assert there.exit_code == 0, there.output
    mine, theirs = json.loads(here.stdout), json.loads(there.stdout)
    assert theirs.pop("db") == pair.url
    for key in ("db", "size_bytes", "wal_bytes"):
        mine.pop(key)
        theirs.pop(key, None)
    assert theirs == mine
    refused = runner.invoke(main, ["--db", pair.url, "prune", "--older-than", "2020-01-01"])
    assert refused.exit_code != 0
    assert "OTLP" in refused.stderr or "prune" in refused.stderr


def test_a_client_on_the_url_reads_and_refuses_to_record(pair: Pair) -> None:
    with DecisionTraceClient(db_path=pair.url) as client:
        assert client.db_path == pair.url
        assert client.query(limit=None) == pair.local.query(EventFilters(), limit=None)
        assert client.query(tags="burst", order="asc", limit=3, offset=1) == pair.local.query(
            EventFilters.build(tags="burst"), order="asc", limit=3, offset=1
        )
        assert client.search("parcel") == pair.local.search("parcel")
        created = pair.shop.ids["created"]
        assert client.get_event(created) == pair.local.get_event(created)
        assert client.get_chain(created) == pair.local.get_chain(created)
        assert client.get_object_history("ord/1", "order") == pair.local.object_history(
            "ord/1", "order"
        )
        with pytest.raises(StoreError, match="otlp_endpoint"):
            client.trace("order.created")
        with pytest.raises(StoreError, match="cannot record"):
            client.span("report.generation")
    assert pair.local.count(EventFilters()) == len(pair.shop.ids) + len(pair.shop.burst_ids)


@pytest.mark.sqlite_only
def test_reading_the_service_never_imports_a_web_framework(ledger_target: str) -> None:
    """storage/http.py is a plain stdlib client: opening and reading through it loads
    neither starlette nor uvicorn (the [server] extra is for the service only), nor
    OpenTelemetry."""
    import subprocess

    script = (
        "import sys\n"
        "from decision_trace.storage import open_ledger\n"
        "ledger = open_ledger('http://127.0.0.1:9')\n"
        "try:\n"
        "    ledger.count(__import__('decision_trace.storage').storage.EventFilters())\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__)\n"
        "heavy = ('starlette', 'uvicorn', 'opentelemetry')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy"
        " or m.startswith('decision_trace.server')))\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["StoreError", "[]"]
