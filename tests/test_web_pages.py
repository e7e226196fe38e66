"""The web view (``decision_trace.server.web``) served by ``create_app`` under a real
uvicorn server: every page, its filters and cursors, the search box's jumps, hostile
values, the security headers, the token (header and login cookie), read-only routes,
and ``decision-trace ui`` as a real process."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

import pytest
from read_api_support import BASE, Shop, record_shop
from web_support import Page, fetch, serve_app

from decision_trace import DecisionTraceClient
from decision_trace.server import create_app
from decision_trace.storage import EventFilters, open_ledger

TOKEN = "s3cret-Token_42"

_WHEN_LINK = re.compile(r'<a href="/events/([0-9a-f]{16})"><time ')
"""The first cell of a timeline row: each event's link around its time, once a row."""


def _row_ids(page: Page) -> list[str]:
    return _WHEN_LINK.findall(page.body)


def _next_href(page: Page) -> str | None:
    match = re.search(r'<a rel="next" href="([^"]+)"', page.body)
    return None if match is None else match.group(1).replace("&amp;", "&")


@pytest.fixture
def shop_site(ledger_target: str) -> Iterator[tuple[str, Shop]]:
    """The small shop of read_api_support in the ledger (SQLite, then PostgreSQL),
    served by create_app with no token."""
    shop = record_shop(ledger_target)
    with serve_app(create_app(ledger_target)) as base:
        yield base, shop


def test_every_page_answers_with_what_it_is_for(shop_site: tuple[str, Shop]) -> None:
    base, shop = shop_site
    timeline = fetch(base, "/")
    assert timeline.status == 200
    assert timeline.header("content-type") == "text/html; charset=utf-8"
    assert "order.refunded" in timeline.body and "price.changed" in timeline.body
    assert 'class="badge badge-ai_agent"' in timeline.body
    assert "Parcel arrived crushed" in timeline.body  # the first line of why
    # Newest first.
    assert timeline.body.index("price.changed") < timeline.body.index("order.created")
    # Times in UTC for the script to show in the viewer's zone, UTC kept on hover.
    assert (
        '<time datetime="2026-03-01T12:00:00.000000Z" title="2026-03-01 12:00:00 UTC">'
        "2026-03-01 12:00:00 UTC</time>"
    ) in timeline.body
    assert '<script src="/static/app.js" defer></script>' in timeline.body
    assert 'href="#main"' in timeline.body and '<main id="main"' in timeline.body

    event = fetch(base, f"/events/{shop.ids['fraud']}")
    assert event.status == 200
    for text in (
        "Velocity and address checks are clean",
        "hold for review",
        "score far below threshold",
        "97 %",
        "gpt-x",
        f'href="/events/{shop.ids["created"]}"',  # the parent
        f'href="/events/{shop.ids["fraud"]}/chain"',
    ):
        assert text in event.body, text

    chain = fetch(base, f"/events/{shop.ids['refund']}/chain")
    assert chain.status == 200
    assert "order.created" in chain.body and "fraud.checked" in chain.body
    assert chain.body.count('<rect class="bar-') == 3
    assert 'class="focus" aria-current="true"' in chain.body

    story = fetch(base, "/objects/order/" + quote("ord/1", safe=""))
    assert story.status == 200
    assert story.body.index("order.created") < story.body.index("order.refunded")
    assert re.search(r'<tr class="changed">\s*<th scope="row"><bdi>status</bdi>', story.body)
    assert "paid" in story.body and "refunded" in story.body

    search = fetch(base, "/search?q=crushed")
    assert search.status == 200
    assert "<mark>crushed</mark>" in search.body

    stats = fetch(base, "/stats?days=3660")
    assert stats.status == 200
    assert "<svg" in stats.body and "order.refunded" in stats.body


def test_filters_narrow_the_timeline(shop_site: tuple[str, Shop]) -> None:
    base, shop = shop_site
    ids = shop.ids
    cases = {
        "actor_type=ai_agent": {ids["fraud"]},
        "outcome=failure": {ids["restock"]},
        "tag=eu": {ids["created"], ids["price"]},
        "object_type=product&object_id=sku-9": {ids["restock"], ids["price"]},
        "actor_id=agent-7": {ids["refund"]},
        "event_type=order.created": {ids["created"]},
        # An HTML form sends its empty fields: they filter nothing.
        "event_type=order.created&tag=&actor_type=&start=": {ids["created"]},
        "start=2026-03-02&end=2026-03-05T00:00": {ids["refund"], ids["restock"]},
    }
    for query, expected in cases.items():
        page = fetch(base, "/?" + query)
        assert page.status == 200, query
        assert set(_row_ids(page)) == expected, query
    bad = fetch(base, "/?outcome=maybe")
    assert bad.status == 400
    assert "outcome" in bad.body


def test_cursor_paging_reaches_every_event_exactly_once(ledger_target: str) -> None:
    shop = record_shop(ledger_target, burst=60)  # one microsecond spanning two pages
    with DecisionTraceClient(db_path=ledger_target, service_name="more") as client:
        for n in range(45):
            client.trace("note.added", f"note {n}").by_system("notes").at(
                BASE + timedelta(days=10, seconds=n)
            ).record()
    ledger = open_ledger(ledger_target)
    try:
        everything = {e.id for e in ledger.query(EventFilters(), limit=None)}
    finally:
        ledger.close()
    with serve_app(create_app(ledger_target)) as base:
        seen: list[str] = []
        href: str | None = "/"
        pages = 0
        while href is not None:
            page = fetch(base, href)
            assert page.status == 200
            seen.extend(_row_ids(page))
            href = _next_href(page)
            pages += 1
        assert pages == 3
        assert len(seen) == len(set(seen)) == len(everything)
        assert set(seen) == everything
        # The same with a filter: the burst alone (60 events in one microsecond).
        seen = []
        href = "/?tag=burst"
        while href is not None:
            page = fetch(base, href)
            seen.extend(_row_ids(page))
            href = _next_href(page)
        assert sorted(seen) == sorted(shop.burst_ids)


def test_an_object_story_pages_back_from_its_latest_events(
    ledger_target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from decision_trace.server.web import pages

    monkeypatch.setattr(pages, "HISTORY_PAGE", 5)
    ids = []
    with DecisionTraceClient(db_path=ledger_target) as client:
        for n in range(12):
            ids.append(
                client.trace("order.touched", f"touch {n}")
                .by_user("u")
                .affecting_order("hot-1")
                .at(BASE + timedelta(minutes=n))
                .record()
            )
        client.trace("order.touched", "another order").affecting_order("cold").record()
    with serve_app(create_app(ledger_target)) as base:
        seen: list[list[str]] = []
        href: str | None = "/objects/order/hot-1"
        while href is not None:
            page = fetch(base, href)
            assert page.status == 200
            assert "12 events touched it" in page.body
            seen.append(re.findall(r'<h2><a href="/events/([0-9a-f]{16})">', page.body))
            match = re.search(r'<a rel="prev" href="([^"]+)"', page.body)
            href = None if match is None else match.group(1).replace("&amp;", "&")
            if len(seen) > 1:
                assert 'href="/objects/order/hot-1">Latest events</a>' in page.body
    assert seen == [ids[7:12], ids[2:7], ids[0:2]]


def test_the_search_box_goes_straight_to_an_object_or_an_event(
    shop_site: tuple[str, Shop],
) -> None:
    base, shop = shop_site
    for q in ("order:ord/1", "order ord/1", "  ORDER: ord/1 "):
        page = fetch(base, "/search?q=" + quote(q))
        assert page.status == 303, q
        assert page.header("location") == "/objects/order/ord%2F1", q
    assert fetch(base, "/objects/order/ord%2F1").status == 200
    page = fetch(base, "/search?q=" + shop.ids["refund"].upper())
    assert (page.status, page.header("location")) == (303, f"/events/{shop.ids['refund']}")
    # The start of an id, as `decision-trace show 3f2a` takes it, when only one matches.
    page = fetch(base, "/search?q=" + shop.ids["refund"][:10])
    assert (page.status, page.header("location")) == (303, f"/events/{shop.ids['refund']}")
    page = fetch(base, "/events/" + shop.ids["fraud"][:12])
    assert (page.status, page.header("location")) == (303, f"/events/{shop.ids['fraud']}")
    assert fetch(base, "/events/" + shop.ids["fraud"][:3]).status == 404
    # Words that are not an object type are a full-text search; so is "order WORD"
    # when no order has that id (but "order:WORD" asks for the object).
    assert fetch(base, "/search?q=" + quote("parcel crushed")).status == 200
    page = fetch(base, "/search?q=" + quote("order crushed"))
    assert page.status == 200 and "Nothing matches" in page.body
    page = fetch(base, "/search?q=" + quote("order:crushed"))
    assert (page.status, page.header("location")) == (303, "/objects/order/crushed")
    assert fetch(base, "/objects/order/crushed").status == 404


HOSTILE_REASONING = (
    "<script>alert('reasoning')</script> click <a href=\"javascript:alert(1)\">here</a> "
    "\u202egnp.exe\u202c and \u2066isolate\u2069 end"
)
HUGE = "A" * (10 * 1024 * 1024)


@pytest.fixture
def hostile_site(db_path: Path) -> Iterator[tuple[str, str]]:
    with DecisionTraceClient(db_path=str(db_path), service_name="<script>svc</script>") as client:
        event_id = (
            client.trace("<script>alert('type')</script>", "\u202eevil description <img src=x>")
            .by_user("javascript:alert(1)", "<img src=x onerror=alert(1)>")
            .affecting_order(
                "javascript:alert('id')",
                state_before={"<script>k</script>": "\u202ebefore"},
                state_after={"<script>k</script>": HUGE},
            )
            .because(
                HOSTILE_REASONING + HUGE,
                context={"url": "javascript:alert(2)", "huge": HUGE, "<b>key</b>": 1},
                alternatives=[{"action": "<script>alt</script>"}],
                rejection_reasons={"<script>alt</script>": "<script>why</script>" + HUGE},
            )
            .with_tags('"><script>alert(3)</script>')
            .failed("<script>error</script>" + HUGE)
            .record()
        )
    with serve_app(create_app(db_path)) as base:
        yield base, event_id


def _assert_inert(page: Page, limit: int = 400_000) -> None:
    body = page.body
    assert len(body) < limit, len(body)
    scripts = re.findall(r"<script\b[^>]*>", body, re.IGNORECASE)
    assert scripts == ['<script src="/static/app.js" defer>'], scripts
    assert not re.search(r"""\b(href|src|action)\s*=\s*["']?\s*javascript:""", body, re.I)
    assert not re.search(r"<img\b", body, re.IGNORECASE)
    assert not re.search(r"\son\w+\s*=", body.replace("onerror=alert(1)&gt;", ""))
    for char in "\u202e\u202c\u2066\u2069":
        assert char not in body


def test_hostile_values_render_inert_and_bounded(hostile_site: tuple[str, str]) -> None:
    base, event_id = hostile_site
    pages = {
        "event": fetch(base, f"/events/{event_id}"),
        "timeline": fetch(base, "/"),
        "story": fetch(base, "/objects/order/" + quote("javascript:alert('id')", safe="")),
        "chain": fetch(base, f"/events/{event_id}/chain"),
        "search": fetch(base, "/search?q=reasoning"),
        "stats": fetch(base, "/stats"),
    }
    for name, page in pages.items():
        assert page.status == 200, name
        _assert_inert(page)
    event = pages["event"].body
    assert "&lt;script&gt;alert(&#39;reasoning&#39;)&lt;/script&gt;" in event
    assert "[U+202E]gnp.exe[U+202C]" in event
    assert '<details class="more"><summary>show more' in event
    assert "more characters not shown" in event
    # The story links to the object with its id percent-encoded, never as a URL.
    assert 'href="/objects/order/javascript%3Aalert%28%27id%27%29"' in event
    assert "[U+202E]before" in pages["story"].body


def test_every_page_sends_the_security_headers_and_no_inline_code(
    shop_site: tuple[str, Shop],
) -> None:
    base, shop = shop_site
    for path in (
        "/",
        f"/events/{shop.ids['fraud']}",
        f"/events/{shop.ids['fraud']}/chain",
        "/objects/order/ord%2F1",
        "/search?q=parcel",
        "/stats",
        "/events/0000000000000000",
        "/static/style.css",
        "/static/app.js",
    ):
        page = fetch(base, path)
        assert page.status in (200, 404), path
        csp = page.header("content-security-policy") or ""
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["script-src"] == "'self'", path
        assert directives["style-src"] == "'self'", path
        assert directives["frame-ancestors"] == "'none'", path
        assert directives["default-src"] == "'none'", path
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert page.header("x-content-type-options") == "nosniff", path
        assert page.header("referrer-policy") == "no-referrer", path
        if path.startswith("/static/"):
            continue
        assert page.header("cache-control") == "no-store", path
        assert " style=" not in page.body and "<style" not in page.body, path
        assert not re.search(r"<script(?![^>]*\bsrc=)", page.body), path
        assert "http://" not in page.body and "https://" not in page.body, path


def test_unknown_events_and_objects_are_escaped_html_404s(shop_site: tuple[str, Shop]) -> None:
    base, _ = shop_site
    for path, shown in (
        ("/events/" + quote("<script>x</script>", safe=""), "&lt;script&gt;x&lt;/script&gt;"),
        ("/events/%3Cb%3E/chain", "&lt;b&gt;"),
        ("/objects/order/" + quote("<i>nope</i>", safe=""), "&lt;i&gt;nope&lt;/i&gt;"),
        ("/objects/spaceship/1", "spaceship"),
    ):
        page = fetch(base, path)
        assert page.status in (400, 404), path
        assert page.header("content-type") == "text/html; charset=utf-8", path
        assert shown in page.body, path
        assert "<script>x" not in page.body and "<i>nope" not in page.body


def test_only_login_and_logout_take_a_post(shop_site: tuple[str, Shop]) -> None:
    base, shop = shop_site
    paths = (
        "/",
        f"/events/{shop.ids['fraud']}",
        f"/events/{shop.ids['fraud']}/chain",
        "/objects/order/ord%2F1",
        "/search?q=x",
        "/stats",
        "/static/style.css",
    )
    for path in paths:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            page = fetch(base, path, method=method, body=b"x=1")
            assert page.status == 405, (path, method)
        assert fetch(base, path, method="HEAD").status == 200, path
    assert fetch(base, "/login", method="POST", form={}).status == 303
    assert fetch(base, "/logout", method="POST").status == 303


@pytest.fixture
def guarded_site(db_path: Path) -> Iterator[tuple[str, Shop]]:
    shop = record_shop(str(db_path))
    with serve_app(create_app(db_path, token=TOKEN)) as base:
        yield base, shop


def test_the_token_guards_every_page(guarded_site: tuple[str, Shop]) -> None:
    base, shop = guarded_site
    event_path = f"/events/{shop.ids['fraud']}"
    page = fetch(base, event_path)
    assert page.status == 303
    assert page.header("location") == "/login?next=" + quote(event_path, safe="")
    assert "Velocity" not in page.body
    assert fetch(base, "/stats").status == 303
    for wrong in ("Bearer nope", f"Bearer {TOKEN}x", "Basic " + TOKEN, ""):
        page = fetch(base, event_path, headers={"Authorization": wrong})
        assert page.status == 401, wrong
        assert page.header("www-authenticate") == "Bearer"
        assert "Velocity" not in page.body
    page = fetch(base, event_path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert page.status == 200 and "Velocity" in page.body
    # The login form and the static files are open.
    assert fetch(base, "/login").status == 200
    assert fetch(base, "/static/style.css").status == 200
    # The read API still answers its JSON 401.
    api = fetch(base, "/api/v1/events")
    assert api.status == 401 and api.body.startswith("{")


def test_the_login_form_sets_a_cookie_that_is_not_the_token(
    guarded_site: tuple[str, Shop],
) -> None:
    base, _ = guarded_site
    wrong = fetch(base, "/login", method="POST", form={"token": "guess", "next": "/stats"})
    assert wrong.status == 401
    assert wrong.header("set-cookie") is None
    assert "That is not the token" in wrong.body

    page = fetch(base, "/login", method="POST", form={"token": TOKEN, "next": "/stats"})
    assert page.status == 303
    assert page.header("location") == "/stats"
    cookie = page.header("set-cookie") or ""
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "samesite", "path", "max-age"} <= attributes
    assert "samesite=strict" in cookie.lower()
    assert TOKEN not in cookie
    pair = cookie.split(";", 1)[0]
    assert fetch(base, "/stats", headers={"Cookie": pair}).status == 200

    name, value = pair.split("=", 1)
    expires, mac = value.split(".")
    for forged in (
        f"{name}={int(expires) + 1}.{mac}",  # a later expiry with the old MAC
        f"{name}={expires}.{mac[:-2]}{'00' if mac[-2:] != '00' else '11'}",
        f"{name}={TOKEN}",
        f"{name}=",
    ):
        assert fetch(base, "/stats", headers={"Cookie": forged}).status == 303, forged

    # An open redirect is refused: next goes to same-site paths only.
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        page = fetch(base, "/login", method="POST", form={"token": TOKEN, "next": target})
        assert page.header("location") == "/", target

    out = fetch(base, "/logout", method="POST", headers={"Cookie": pair})
    assert out.status == 303
    assert "max-age=0" in (out.header("set-cookie") or "").lower()


def test_without_a_token_the_pages_are_open_and_login_goes_home(
    shop_site: tuple[str, Shop],
) -> None:
    base, _ = shop_site
    assert fetch(base, "/").status == 200
    page = fetch(base, "/login")
    assert (page.status, page.header("location")) == (303, "/")
    assert "Sign out" not in fetch(base, "/").body


def test_the_overview_counts_the_days_asked_for(db_path: Path) -> None:
    now = datetime.now(timezone.utc)
    with DecisionTraceClient(db_path=str(db_path)) as client:
        for n in range(3):
            client.trace("order.created", f"today {n}").by_user("u1").at(now).record()
        for n in range(2):
            client.trace("price.changed", f"days ago {n}").by_ai_agent("p").failed("no").at(
                now - timedelta(days=3)
            ).record()
        client.trace("old.event", "long ago").by_system("s").at(now - timedelta(days=40)).record()
    with serve_app(create_app(db_path)) as base:
        page = fetch(base, "/stats?days=7")
        assert page.status == 200
        assert page.body.count('class="bar-day"') == 7
        assert "5 events in the last 7 days" in page.body
        assert f"<title>{now.date().isoformat()}: 3</title>" in page.body
        assert "order.created" in page.body and "price.changed" in page.body
        assert "old.event" not in page.body
        assert 'href="/?outcome=failure">failure</a></th><td>2</td>' in page.body
        default = fetch(base, "/stats")
        assert default.body.count('class="bar-day"') == 30
        assert "6 events in the last 90 days" in fetch(base, "/stats?days=90").body
        assert fetch(base, "/stats?days=0").status == 400
        assert fetch(base, "/stats?days=abc").status == 400


# --- decision-trace ui ------------------------------------------------------------------


def _browser_env(opened: Path) -> dict[str, str]:
    """An environment whose "browser" (``$BROWSER``, which :mod:`webbrowser` honours)
    writes the URL it is asked to open into ``opened``."""
    script = f"import sys, pathlib; pathlib.Path({str(opened)!r}).write_text(sys.argv[1])"
    env = {**os.environ, "BROWSER": f"{sys.executable} -c {shlex.quote(script)} %s"}
    env.pop("DECISION_TRACE_TOKEN", None)
    return env


def _start_ui(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    if env is None:
        env = {**os.environ, "BROWSER": "false"}
        env.pop("DECISION_TRACE_TOKEN", None)
    return subprocess.Popen(
        [sys.executable, "-m", "decision_trace", "ui", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _first_line(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    assert proc.stdout is not None
    found: list[str] = []
    reader = threading.Thread(target=lambda: found.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    assert found, "decision-trace ui printed no URL in time"
    return found[0].strip()


def test_ui_serves_the_pages_read_only_and_prints_its_url(db_path: Path, tmp_path: Path) -> None:
    shop = record_shop(str(db_path))
    size_before = db_path.stat().st_size
    opened = tmp_path / "opened.txt"
    proc = _start_ui("--db", str(db_path), "--no-browser", "--port", "0", env=_browser_env(opened))
    try:
        url = _first_line(proc)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), url
        base = url.rstrip("/")
        page = fetch(base, "/")
        assert page.status == 200 and "order.refunded" in page.body
        assert fetch(base, f"/events/{shop.ids['refund']}").status == 200
        assert fetch(base, "/api/v1/events").status == 200
        ingest = fetch(
            base,
            "/v1/traces",
            method="POST",
            body=b"\x00",
            headers={"Content-Type": "application/x-protobuf"},
        )
        assert ingest.status in (404, 405)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    assert proc.returncode == 0, err
    assert "read-only" in err
    assert db_path.stat().st_size == size_before
    assert not opened.exists()  # --no-browser


def test_ui_opens_the_browser_on_its_url(db_path: Path, tmp_path: Path) -> None:
    record_shop(str(db_path))
    opened = tmp_path / "opened.txt"
    proc = _start_ui("--db", str(db_path), env=_browser_env(opened))
    try:
        url = _first_line(proc)
        deadline = time.monotonic() + 60
        while not (opened.exists() and opened.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert opened.read_text() == url
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    assert proc.returncode == 0


def test_ui_refuses_a_missing_ledger_without_creating_it(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.db"
    proc = _start_ui("--db", str(missing), "--no-browser")
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1
    assert "no ledger at" in err and "Traceback" not in err
    assert out == ""
    assert not missing.exists()
