"""The read API (``decision_trace.server.api``) served by a real uvicorn server on a free
port, on both ledger backends: every answer is compared with what the local ledger
itself returns for the same question, and hostile requests get a JSON 4xx, never a 500.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import pytest
from read_api_support import BASE, Shop, get, record_shop, serve

from decision_trace import DecisionTraceClient
from decision_trace.models import Outcome, TraceEvent
from decision_trace.record import ns_from_datetime
from decision_trace.serialize import chain_to_json, event_to_json, summary_to_json
from decision_trace.storage import EventFilters, Ledger, open_ledger

TOKEN = "s3cret-token"


def as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def events_json(events: list[Any]) -> list[Any]:
    return as_json([event_to_json(event) for event in events])


@dataclass
class Served:
    url: str
    ledger: Ledger
    shop: Shop
    target: str


@pytest.fixture
def served(ledger_target: str) -> Iterator[Served]:
    """The shop's events in a fresh ledger of each backend, served with a token."""
    shop = record_shop(ledger_target)
    ledger = open_ledger(ledger_target)
    try:
        with serve(ledger, token=TOKEN) as url:
            yield Served(url, ledger, shop, ledger_target)
    finally:
        ledger.close()


def api(served: Served, path: str, params: Any = None) -> tuple[int, Any]:
    status, body, _ = get(served.url, path, params, token=TOKEN)
    return status, body


def all_pages(served: Served, path: str, params: dict[str, Any], limit: int) -> list[Any]:
    """Every event of a paged answer, following next_cursor."""
    seen: list[Any] = []
    cursor = None
    for _ in range(1000):
        query = {**params, "limit": limit}
        if cursor is not None:
            query["cursor"] = cursor
        status, body = api(served, path, query)
        assert status == 200, body
        assert len(body["events"]) <= limit
        seen += body["events"]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
        assert body["events"], "a page with a cursor to more holds events"
    raise AssertionError("the pages never ended")


# The same question asked through the API's parameters and of the ledger's query().
FILTERS: list[tuple[dict[str, Any], EventFilters]] = [
    ({}, EventFilters()),
    ({"event_type": "order.refunded"}, EventFilters.build(event_types="order.refunded")),
    (
        {"actor_type": ["ai_agent", "compute"]},
        EventFilters.build(actor_types=["ai_agent", "compute"]),
    ),
    ({"actor_id": "agent-7"}, EventFilters.build(actor_ids="agent-7")),
    (
        {"object_type": "order", "object_id": "ord/1"},
        EventFilters.build(object_types="order", object_ids="ord/1"),
    ),
    ({"object_id": "sku-9"}, EventFilters.build(object_ids="sku-9")),
    ({"tag": ["eu", "burst"]}, EventFilters.build(tags=["eu", "burst"])),
    ({"outcome": "failure"}, EventFilters.build(outcome="failure")),
    (
        {"start": "2026-03-01T12:01:00Z", "end": "2026-03-04T12:00:00+00:00"},
        EventFilters.build(start=BASE + timedelta(minutes=1), end=BASE + timedelta(days=3)),
    ),
    (
        {
            "start_ns": ns_from_datetime(BASE + timedelta(days=1), "x"),
            "end_ns": ns_from_datetime(BASE + timedelta(days=6), "x"),
        },
        EventFilters.build(start=BASE + timedelta(days=1), end=BASE + timedelta(days=6)),
    ),
    ({"start": "2026-03-06"}, EventFilters.build(start=BASE.replace(day=6, hour=0))),
]


def test_events_in_pages_are_the_ledgers_events(served: Served) -> None:
    # One ledger for every question (filling one costs seconds on PostgreSQL).
    for params, filters in FILTERS:
        for order in ("desc", "asc"):
            expected = events_json(served.ledger.query(filters, limit=None, order=order))
            for limit in (1, 3, 1000):
                pages = all_pages(served, "/api/v1/events", {**params, "order": order}, limit)
                assert pages == expected, (params, order, limit)
        status, body = api(served, "/api/v1/events/count", params)
        assert (status, body) == (200, {"count": len(expected)}), params
    assert any(len(served.ledger.query(f, limit=None)) > 3 for _, f in FILTERS[1:])


def test_events_default_to_newest_first_and_a_page_of_100(served: Served) -> None:
    status, body = api(served, "/api/v1/events")
    assert status == 200
    assert body["events"] == events_json(served.ledger.query(EventFilters(), limit=100))
    assert body["next_cursor"] is None
    trace = served.ledger.get_event(served.shop.ids["created"])
    assert trace is not None
    status, body = api(served, "/api/v1/events", {"correlation_id": trace.correlation_id.upper()})
    assert [e["id"] for e in body["events"]] == [
        e.id for e in served.ledger.query(EventFilters.build(correlation_id=trace.correlation_id))
    ]


def test_offset_then_cursor(served: Served) -> None:
    everything = events_json(served.ledger.query(EventFilters(), limit=None))
    for offset in (1, 5, 7):
        status, body = api(served, "/api/v1/events", {"offset": offset, "limit": 2})
        assert status == 200
        seen = body["events"]
        cursor = body["next_cursor"]
        while cursor is not None:
            _, body = api(served, "/api/v1/events", {"limit": 2, "cursor": cursor})
            seen += body["events"]
            cursor = body["next_cursor"]
        assert seen == everything[offset:]


def test_one_event_its_chain_and_the_object_lookups(served: Served) -> None:
    ledger, ids = served.ledger, served.shop.ids
    for name, event_id in ids.items():
        event = ledger.get_event(event_id)
        assert event is not None
        assert api(served, f"/api/v1/events/{event_id}") == (200, as_json(event_to_json(event)))
        assert api(served, f"/api/v1/events/{event_id.upper()}")[1]["id"] == event_id, name
        status, body = api(served, f"/api/v1/events/{event_id}/chain")
        assert status == 200
        assert body == {"events": as_json(chain_to_json(ledger.get_chain(event_id)))}
        prefix = event_id[:3]
        assert api(served, "/api/v1/event-ids", {"prefix": prefix, "limit": 1000}) == (
            200,
            {"ids": ledger.event_ids_with_prefix(prefix, limit=1000)},
        )
    status, body = api(served, f"/api/v1/events/{ids['refund']}/chain")
    assert [(row["depth"], row["id"]) for row in body["events"]] == [
        (0, ids["created"]),
        (1, ids["fraud"]),
        (1, ids["refund"]),
    ]
    for external_id in ("ord/1", "sku-9", "weird id/../%2F?#", "two\nlines", "nowhere"):
        assert api(served, "/api/v1/objects", {"id": external_id}) == (
            200,
            {
                "external_id": external_id,
                "types": [t.value for t in ledger.object_types_of(external_id)],
            },
        )


def test_object_history_in_pages(served: Served) -> None:
    for object_type, external_id in (
        ("order", "ord/1"),
        ("product", "sku-9"),
        ("order", "weird id/../%2F?#"),
        ("product", "two\nlines"),
        ("order", "none"),
    ):
        expected = events_json(served.ledger.object_history(external_id, object_type))
        path = f"/api/v1/objects/{object_type}/{quote(external_id, safe='')}/history"
        for limit in (1, 2, 1000):
            assert all_pages(served, path, {}, limit) == expected, (external_id, limit)
        status, body = api(served, path)
        assert status == 200
        assert (body["object_type"], body["external_id"]) == (object_type, external_id)
    assert len(served.ledger.object_history("ord/1", "order")) > 3


def test_search_in_pages(served: Served) -> None:
    for text in ("burst", "parcel crushed", "Remboursé", '"unbalanced AND (', ""):
        expected = events_json(served.ledger.search(text, limit=None))
        for limit in (1, 3, 1000):
            assert all_pages(served, "/api/v1/search", {"q": text}, limit) == expected, text
        status, body = api(served, "/api/v1/search", {"q": text})
        assert status == 200
        assert body["events"] == events_json(served.ledger.search(text))
    assert len(served.ledger.search("burst", limit=None)) == len(served.shop.burst_ids)


def test_stats_are_the_ledgers_summary(served: Served) -> None:
    for params, days in (({}, None), ({"days": 1}, 1), ({"days": 0}, 0)):
        status, body = api(served, "/api/v1/stats", params)
        assert status == 200
        size, wal = served.ledger.size_bytes()
        expected = as_json(
            summary_to_json(
                served.ledger.summary(days=days),
                location=served.ledger.location,
                size_bytes=size,
                wal_bytes=wal,
            )
        )
        for key in ("size_bytes", "wal_bytes"):
            assert isinstance(body.pop(key), int)
            expected.pop(key)
        assert body == expected


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_paging_while_events_are_recorded_never_repeats_one(served: Served, order: str) -> None:
    """Events stored in the very microsecond a client is paging through shift the rows
    after it; the cursor finds its place again."""
    burst = served.shop.burst
    seen: list[str] = []
    cursor = None
    client = DecisionTraceClient(db_path=served.target, durability="sync")
    try:
        for round_ in range(50):
            query: dict[str, Any] = {"tag": "burst", "order": order, "limit": 2}
            if cursor is not None:
                query["cursor"] = cursor
            status, body = api(served, "/api/v1/events", query)
            assert status == 200, body
            seen += [event["id"] for event in body["events"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
            # Two more in the same microsecond, stored after the ones being paged.
            for n in range(2):
                client.trace("burst.event", f"late {round_}.{n}").with_tags("burst").at(
                    burst
                ).record()
    finally:
        client.close()
    assert len(seen) == len(set(seen)), "an event was returned twice"
    assert set(served.shop.burst_ids) <= set(seen)


def test_errors_are_json_with_the_status_and_the_parameter(served: Served) -> None:
    cases: list[tuple[str, dict[str, Any], int, str | None]] = [
        ("/api/v1/events", {"limit": 1001}, 400, "limit"),
        ("/api/v1/events", {"limit": 10**30}, 400, "limit"),
        ("/api/v1/events", {"limit": -1}, 400, "limit"),
        ("/api/v1/events", {"limit": "1e3"}, 400, "limit"),
        ("/api/v1/events", {"offset": -1}, 400, "offset"),
        ("/api/v1/events", {"start": "yesterday"}, 400, "start"),
        ("/api/v1/events", {"start": "2026-02-30"}, 400, "start"),
        ("/api/v1/events", {"end": "2026-03-01T25:00:00Z"}, 400, "end"),
        ("/api/v1/events", {"start": "2026-03-01", "start_ns": 5}, 400, "start_ns"),
        ("/api/v1/events", {"end_ns": "1e9"}, 400, "end_ns"),
        ("/api/v1/events", {"end_ns": "9" * 31}, 400, "end_ns"),
        ("/api/v1/events", {"actor_type": "robot"}, 400, "actor_type"),
        ("/api/v1/events", {"object_type": "spaceship"}, 400, "object_type"),
        ("/api/v1/events", {"outcome": "maybe"}, 400, "outcome"),
        ("/api/v1/events", {"outcome": ["success", "failure"]}, 400, "outcome"),
        ("/api/v1/events", {"order": "sideways"}, 400, "order"),
        ("/api/v1/events", {"cursor": "garbage"}, 400, "cursor"),
        ("/api/v1/events", {"cursor": "x" * 10_000}, 400, "cursor"),
        ("/api/v1/events", {"event_types": "order.created"}, 400, "event_types"),
        ("/api/v1/events/count", {"limit": 5}, 400, "limit"),
        ("/api/v1/events/0000000000000000", {}, 404, None),
        ("/api/v1/events/0000000000000000/chain", {}, 404, None),
        ("/api/v1/events/..%2F..%2Fetc%2Fpasswd", {}, 404, None),
        ("/api/v1/events/%2e%2e/chain", {}, 404, None),
        ("/api/v1/events/%00", {}, 404, None),
        ("/api/v1/events/%FF%FE", {}, 404, None),
        ("/api/v1/events/" + "a" * 4000, {}, 404, None),
        ("/api/v1/events/x", {"verbose": 1}, 400, "verbose"),
        ("/api/v1/event-ids", {}, 400, "prefix"),
        ("/api/v1/event-ids", {"prefix": "xyz"}, 400, "prefix"),
        ("/api/v1/event-ids", {"prefix": "%"}, 400, "prefix"),
        ("/api/v1/event-ids", {"prefix": "a", "limit": 5000}, 400, "limit"),
        ("/api/v1/objects", {}, 400, "id"),
        ("/api/v1/objects", {"id": ""}, 400, "external_id"),
        ("/api/v1/objects/spaceship/x/history", {}, 400, "object_type"),
        ("/api/v1/objects/order//history", {}, 400, "external_id"),
        ("/api/v1/search", {}, 400, "q"),
        ("/api/v1/search", {"q": "x", "limit": 99999}, 400, "limit"),
        ("/api/v1/search", {"q": "x", "cursor": "eyJ4IjoxfQ"}, 400, "cursor"),
        ("/api/v1/stats", {"days": -1}, 400, "days"),
        ("/api/v1/nothing/here", {}, 404, None),
        ("/api/v1/nothing%0Ahere", {}, 404, None),
        ("/api/v1/events/abc%0A/chain", {}, 404, None),
        ("/api/v1/objects/%0A/x%0Ay/history", {}, 400, "object_type"),
        ("/api/v1/", {}, 404, None),
        ("/api/v1", {}, 404, None),
    ]
    for path, params, status, field in cases:
        got, body = api(served, path, params)
        assert (got, body.get("status")) == (status, status), (path, params, body)
        assert isinstance(body["error"], str) and body["error"]
        assert body.get("field") == field, (path, params, body)


def test_a_cursor_only_fits_the_question_it_was_made_for(served: Served) -> None:
    _, body = api(served, "/api/v1/events", {"tag": "burst", "limit": 1})
    cursor = body["next_cursor"]
    assert cursor
    for params in ({"tag": "eu"}, {"tag": "burst", "order": "asc"}, {}):
        status, body = api(served, "/api/v1/events", {**params, "cursor": cursor})
        assert (status, body["field"]) == (400, "cursor")
    status, body = api(served, "/api/v1/events", {"tag": "burst", "cursor": cursor, "offset": 2})
    assert (status, body["field"]) == (400, "offset")
    _, body = api(served, "/api/v1/search", {"q": "burst", "limit": 1})
    status, body = api(served, "/api/v1/search", {"q": "other", "cursor": body["next_cursor"]})
    assert (status, body["field"]) == (400, "cursor")


def test_odd_but_harmless_values_are_answered(served: Served) -> None:
    """Values no event has (NUL, undecodable bytes, path tricks) find nothing; they are
    not errors."""
    for path in (
        "/api/v1/events?event_type=%FF%FE",
        "/api/v1/events?tag=%00",
        "/api/v1/events?actor_id=..%2F..%2Fetc%2Fpasswd",
        "/api/v1/search?q=%FF%00%C3",
        "/api/v1/objects?id=%C3%28",
        "/api/v1/objects/order/..%2F..%2Fetc%2Fpasswd/history",
        "/api/v1/objects/order/%00/history",
    ):
        status, body, _ = get(served.url, path, token=TOKEN)
        assert status == 200, (path, body)
        assert body.get("events", body.get("types")) == []


def raw_request(url: str, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (no client library cleaning them); the status and body."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_raw_hostile_requests_never_get_a_500(served: Served) -> None:
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    for target in (
        b"/api/v1/events?event_type=\xff\xfe",  # not UTF-8, not even percent-encoded
        b"/api/v1/search?q=caf\xe9",
        b"/api/v1/events/../../etc/passwd",
        b"/api/v1/events/%ff/chain",
        b"/api/v1/objects/order/\xc3\x28/history",
        b"/api/v1/events?limit=5&limit=6",
    ):
        status, body = raw_request(
            served.url,
            b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"Connection: close\r\n\r\n",
        )
        assert 200 <= status < 500, (target, status, body)
        assert b"root:" not in body
    status, body = raw_request(
        served.url,
        b"DELETE /api/v1/events HTTP/1.1\r\nHost: x\r\n" + auth + b"Connection: close\r\n\r\n",
    )
    assert status == 405
    assert json.loads(body)["status"] == 405


def test_every_read_needs_the_token_the_probes_do_not(served: Served) -> None:
    for path in ("/api/v1/events", "/api/v1/stats", "/openapi.json", "/api/v1/nothing"):
        for token in (None, "wrong", TOKEN + "x", ""):
            status, body, headers = get(served.url, path, token=token)
            assert (status, body["status"]) == (401, 401), (path, token)
            assert headers["www-authenticate"] == "Bearer"
        assert get(served.url, path, token=TOKEN)[0] in (200, 404)
    assert get(served.url, "/healthz")[:2] == (200, {"ok": True})
    assert get(served.url, "/readyz")[:2] == (200, {"ready": True})


def test_an_unreadable_ledger_is_503_and_not_ready(served: Served) -> None:
    served.ledger.close()  # every read of it now raises StoreError
    status, body = api(served, "/api/v1/events")
    assert (status, body["status"]) == (503, 503)
    assert "cannot be read" in body["error"]
    assert api(served, "/readyz")[0] == 503
    assert api(served, "/healthz") == (200, {"ok": True})


class _Blocking:
    """A ledger whose ``query`` waits for ``release``: a read that takes its time."""

    def __init__(self, inner: Ledger) -> None:
        self.inner = inner
        self.entered = threading.Event()
        self.release = threading.Event()

    def query(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        self.release.wait(30)
        return self.inner.query(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.sqlite_only
def test_reads_run_off_the_event_loop(ledger_target: str) -> None:
    record_shop(ledger_target)
    ledger = open_ledger(ledger_target)
    blocking = _Blocking(ledger)
    try:
        with serve(blocking) as url:  # type: ignore[arg-type]
            slow: list[int] = []
            thread = threading.Thread(target=lambda: slow.append(get(url, "/api/v1/events")[0]))
            thread.start()
            assert blocking.entered.wait(30)
            started = time.monotonic()
            assert get(url, "/api/v1/stats")[0] == 200  # answered while the query waits
            assert time.monotonic() - started < 10
            assert not slow
            blocking.release.set()
            thread.join(30)
            assert slow == [200]
    finally:
        blocking.release.set()
        ledger.close()


def test_answers_are_strict_json_even_for_a_nan_a_foreign_span_carried() -> None:
    from decision_trace.server.api import JSONAnswer, json_error

    answer = JSONAnswer({"metadata": {"ratio": float("nan"), "x": [float("-inf"), 1.5]}})
    assert json.loads(answer.body, parse_constant=lambda name: pytest.fail(name)) == {
        "metadata": {"ratio": "nan", "x": ["-inf", 1.5]}
    }
    assert answer.headers["cache-control"] == "no-store"
    error = json_error(400, "limit: too big", field="limit")
    assert (error.status_code, json.loads(error.body)) == (
        400,
        {"status": 400, "error": "limit: too big", "field": "limit"},
    )


def test_a_cursor_finds_its_place_again_after_inserts_and_deletes() -> None:
    from read_api_support import BASE as when

    from decision_trace.server import _paging as api_module

    def events(*names: str) -> list[Any]:
        return [
            TraceEvent(
                name.ljust(16, "0"),
                when,
                timedelta(0),
                "t",
                "",
                None,
                None,
                (),
                Outcome.SUCCESS,
                None,
                (),
                {},
                "0" * 32,
                None,
            )
            for name in names
        ]

    stream = "abcdefgh"
    # In place: the event after "c" (the 3rd) comes next.
    page, before = api_module._resume(iter(events(*stream)), "c".ljust(16, "0"), 3, 2)
    assert ([e.id[0] for e in page], before) == (["d", "e"], 3)
    # Two stored in front of it meanwhile: found further on.
    page, before = api_module._resume(iter(events("x", "y", *stream)), "c".ljust(16, "0"), 3, 2)
    assert ([e.id[0] for e in page], before) == (["d", "e"], 5)
    # Deleted: the page starts after the position it had.
    page, before = api_module._resume(
        iter(events("a", "b", "d", "e", "f")), "c".ljust(16, "0"), 3, 5
    )
    assert ([e.id[0] for e in page], before) == (["e", "f"], 3)
    # A page as long as the window still fills when the event is gone.
    many = [format(n, "x") for n in range(3000)]
    page, _ = api_module._resume(iter(events(*many)), "z".ljust(16, "0"), 10, 1001)
    assert len(page) == 1001
