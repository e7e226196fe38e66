"""The web view in a real browser: the system's headless Chromium (Playwright) against a
real ``decision-trace serve`` on the demo's ledger.

The ledger: ``examples/ecommerce_demo.py`` run as a user runs it, plus hostile events
written with the library (markup in the reasoning, a ``javascript:`` URL in the context,
a right-to-left override, a 10 MB value) and one event at a known instant for the time
zone check. One server (with ``--token``; the pages are opened with the token as a
bearer header, except by the login test) and one browser serve the whole module.

Every page visit checks the answer is 200, the console has no errors and no
Content-Security-Policy violation was reported, and saves a screenshot under
``test-artifacts/web/`` (``$DECISION_TRACE_TEST_ARTIFACTS/web/``). With
``$DECISION_TRACE_DOCS_IMG`` set (``make screenshots``), the docs' pictures of the object
story and the event page are written there too.

Which browser, and what happens without one: tests/browser_support.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from browser_support import artifacts_dir, launch
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page
from server_support import Server, running_server

from decision_trace import DecisionTraceClient, TraceEvent
from decision_trace.storage import EventFilters, open_ledger

# One worker runs every test here (make test runs pytest with --dist loadgroup), so the
# module's server and browser start once, not once per worker.
pytestmark = pytest.mark.xdist_group("browser")

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "browser-test-token-5f1c"
TIMEZONE = "Asia/Kolkata"
"""The browser's time zone: UTC+05:30 all year, so local and UTC times always differ."""

SCRIPT_REASONING = "<script>window.__pwned=1</script>"
IMG_REASONING = '<img src=x onerror="window.__pwned=2">'
JS_URL = "javascript:window.__pwned=3"
RLO_TEXT = "Invoice for \u202egnp.exe"
BIG_CHARS = 10_000_000
FILLER = 60
"""Events tagged ``filler``: more than one timeline page."""
ENV_DOCS_IMG = "DECISION_TRACE_DOCS_IMG"
"""Where ``make screenshots`` wants the docs' pictures (docs/img)."""
KNOWN_INSTANT = datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
"""An event's start: 05:06:07 UTC, 10:36:07 in Asia/Kolkata."""

WATCH_CSP = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__csp.push(e.violatedDirective + ' ' + e.blockedURI);
});
"""
"""Runs before any page script: collects Content-Security-Policy violations."""


@dataclass(frozen=True)
class Demo:
    """The ledger the module serves, and the ids the tests ask about."""

    path: Path
    refunded_order: str
    refund: TraceEvent
    chain_event: str
    hostile: dict[str, str]
    """Event ids: script, img, js_url, rlo, big, known_time."""


def _record_hostile(path: Path) -> dict[str, str]:
    ids: dict[str, str] = {}
    with DecisionTraceClient(db_path=path, service_name="hostile-input") as client:

        def hostile(name: str, description: str, reasoning: str, **context: Any) -> None:
            ids[name] = (
                client.trace("fraud.reviewed", description)
                .by_user("mallory", "Mallory <b>Bold</b>")
                .affecting(
                    "order",
                    f"hostile-{name}",
                    state_before={"note": "a"},
                    state_after={"note": reasoning[:40]},
                )
                .because(reasoning, context=context or None)
                .with_tags("hostile")
                .record()
            )

        hostile("script", "Script in the reasoning", SCRIPT_REASONING)
        hostile("img", "Image with onerror in the reasoning", IMG_REASONING)
        hostile("js_url", "A javascript: URL in the context", "Link given", link=JS_URL)
        hostile("rlo", RLO_TEXT, f"Attachment {RLO_TEXT}")
        hostile("big", "A 10 MB value in the context", "Huge context", blob="A" * BIG_CHARS)
        ids["known_time"] = (
            client.trace("price.changed", "Price changed at a known instant")
            .by_system("pricing-job")
            .affecting("product", "SKU-TIME", state_before={"price": 10}, state_after={"price": 12})
            .because("Known instant")
            .at(KNOWN_INSTANT)
            .record()
        )
        for n in range(FILLER):
            client.trace("inventory.adjusted", f"Cycle count {n}").by_compute(
                "count-job", "Cycle count"
            ).affecting("inventory", f"bin-{n}", {"qty": n}).with_tags("filler").at(
                datetime(2026, 2, 1, tzinfo=timezone.utc) + timedelta(minutes=n)
            ).record()
    return ids


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    folder = tmp_path_factory.mktemp("web-demo")
    path = folder / "traces.db"
    env = {**os.environ, "DECISION_TRACE_DB": str(path), "HOME": str(folder)}
    env = {k: v for k, v in env.items() if not k.startswith("OTEL_")}
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "ecommerce_demo.py")],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    hostile = _record_hostile(path)
    ledger = open_ledger(path, create=False)
    try:
        (refund,) = ledger.query(EventFilters.build(event_types=["order.refunded"]))
        chain_event = refund.parent_event_id
        assert chain_event is not None
    finally:
        ledger.close()
    (order,) = [o.external_id for o in refund.objects if o.object_type.value == "order"]
    return Demo(path, order, refund, chain_event, hostile)


@pytest.fixture(scope="module")
def server(demo: Demo) -> Iterator[Server]:
    with running_server(str(demo.path), "--token", TOKEN, grpc=False) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch() as browser:
        yield browser


def _new_context(browser: Browser, server: Server, **options: Any) -> BrowserContext:
    settings: dict[str, Any] = {
        "base_url": server.url,
        "timezone_id": TIMEZONE,
        "locale": "en-US",
        "extra_http_headers": {"Authorization": f"Bearer {TOKEN}"},
        **options,
    }
    context = browser.new_context(**settings)
    context.add_init_script(WATCH_CSP)
    context.set_default_timeout(30_000)
    return context


@pytest.fixture
def context(browser: Browser, server: Server) -> Iterator[BrowserContext]:
    context = _new_context(browser, server)
    yield context
    context.close()


@dataclass
class Visit:
    """A page loaded in the browser, and what went wrong while it loaded."""

    page: Page
    status: int
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def csp_violations(self) -> list[str]:
        found: list[str] = self.page.evaluate("window.__csp || []")
        return found

    def assert_clean(self) -> None:
        """200, no console error, no script error, no CSP violation."""
        assert self.status == 200, self.page.url
        assert self.console_errors == [], self.console_errors
        assert self.page_errors == [], self.page_errors
        assert self.csp_violations() == []

    def screenshot(self, name: str) -> Path:
        path = artifacts_dir() / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def open_page(context: BrowserContext, path: str) -> Visit:
    """Load ``path`` in a new tab of ``context``; every console error is kept."""
    page = context.new_page()
    console: list[str] = []
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            console.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(str(error)))
    response = page.goto(path, wait_until="load")
    assert response is not None
    return Visit(page, response.status, console, errors)


ROWS = "table.events tbody tr"
"""The rows of the timeline's table."""


def rows_of(page: Page) -> list[str]:
    return page.locator(ROWS).all_inner_texts()


# --- each page loads -------------------------------------------------------------------

PAGES = ("timeline", "object-story", "event", "chain", "search", "stats")


def page_path(name: str, demo: Demo) -> str:
    return {
        "timeline": "/",
        "object-story": f"/objects/order/{quote(demo.refunded_order, safe='')}",
        "event": f"/events/{demo.refund.id}",
        "chain": f"/events/{demo.refund.id}/chain",
        "search": "/search?q=cracked+lid",
        "stats": "/stats",
    }[name]


@pytest.mark.parametrize("name", PAGES)
def test_each_page_loads_clean(name: str, demo: Demo, context: BrowserContext) -> None:
    visit = open_page(context, page_path(name, demo))
    visit.assert_clean()
    assert visit.page.locator("main#main").count() == 1
    assert visit.page.title().endswith("decision-trace")
    assert visit.screenshot(name).stat().st_size > 0


def test_the_timeline_lists_the_demo_newest_first(demo: Demo, context: BrowserContext) -> None:
    visit = open_page(context, "/")
    visit.assert_clean()
    datetimes = visit.page.locator(f"{ROWS} time").evaluate_all(
        "els => els.map(e => e.getAttribute('datetime'))"
    )
    assert len(datetimes) >= 20
    assert datetimes == sorted(datetimes, reverse=True)


# --- filters, paging, search -------------------------------------------------------------


def _filters(page: Page) -> None:
    """Open the filter form (it is folded when no filter is set)."""
    if not page.locator("details.filters").evaluate("d => d.open"):
        page.locator("details.filters > summary").click()


def test_the_event_type_filter_submitted_with_enter(demo: Demo, context: BrowserContext) -> None:
    visit = open_page(context, "/")
    page = visit.page
    _filters(page)
    page.get_by_label("Event type").fill("order.refunded")
    with page.expect_navigation():
        page.get_by_label("Event type").press("Enter")
    assert "event_type=order.refunded" in page.url
    rows = rows_of(page)
    assert len(rows) == 1
    assert "order.refunded" in rows[0] and demo.refunded_order in rows[0]
    # The form shows what is applied, open.
    assert page.get_by_label("Event type").input_value() == "order.refunded"
    assert page.locator("details.filters").evaluate("d => d.open")
    visit.assert_clean()


def test_actor_object_tag_and_outcome_filters_by_click(demo: Demo, context: BrowserContext) -> None:
    page = open_page(context, "/").page

    def apply(**fields: str) -> list[str]:
        page.goto("/")
        _filters(page)
        for label, value in fields.items():
            control = page.get_by_label(label.replace("_", " ").capitalize(), exact=True)
            if control.evaluate("e => e.tagName") == "SELECT":
                control.select_option(value)
            else:
                control.fill(value)
        with page.expect_navigation():
            page.get_by_role("button", name="Apply").click()
        return rows_of(page)

    agents = apply(actor_type="ai_agent")
    assert agents and all("AI agent" in row or "agent" in row.lower() for row in agents)
    assert page.locator(f"{ROWS} .badge").evaluate_all(
        "els => els.every(e => e.classList.contains('badge-ai_agent'))"
    )
    story = apply(object_type="order", object_id=demo.refunded_order)
    assert len(story) >= 3 and all(demo.refunded_order in row for row in story)
    assert any("order.refunded" in row for row in story)
    by_actor = apply(actor_id="agent-sam")
    assert by_actor and all("Sam Patel" in row for row in by_actor)
    hostile = apply(tag="hostile")
    assert len(hostile) == 5
    failed = apply(outcome="failure")
    assert failed
    assert page.locator(f"{ROWS} .outcome").evaluate_all(
        "els => els.every(e => e.textContent.trim() === 'failure')"
    )


def test_the_time_range_filter(demo: Demo, context: BrowserContext) -> None:
    page = open_page(context, "/").page
    _filters(page)
    page.get_by_label("From (UTC)").fill("2026-03-04T05:06:00")
    page.get_by_label("Until (UTC)").fill("2026-03-04T05:07:00")
    with page.expect_navigation():
        page.get_by_role("button", name="Apply").click()
    rows = rows_of(page)
    assert len(rows) == 1 and "Price changed at a known instant" in rows[0]


def test_cursor_paging_walks_every_event_once(demo: Demo, context: BrowserContext) -> None:
    page = open_page(context, "/?tag=filler").page
    seen: list[str] = []
    pages = 0
    while True:
        pages += 1
        seen += page.locator(f"{ROWS} td[data-label=What] a").evaluate_all(
            "els => els.map(e => e.getAttribute('href'))"
        )
        older = page.locator("a[rel=next]")
        if older.count() == 0:
            break
        with page.expect_navigation():
            older.click()
        assert "cursor=" in page.url and "tag=filler" in page.url
    assert pages == 2  # FILLER events, 50 a page
    assert len(seen) == FILLER and len(set(seen)) == FILLER


def test_search_from_the_header_box_with_the_keyboard(demo: Demo, context: BrowserContext) -> None:
    page = open_page(context, "/stats").page
    box = page.get_by_role("searchbox")
    box.fill("cracked lid")
    with page.expect_navigation():
        box.press("Enter")
    assert "/search?q=cracked+lid" in page.url
    results = page.locator("ol.results > li")
    texts = results.all_inner_texts()
    assert texts and any("order.refunded" in text for text in texts)
    marks = {m.lower() for m in page.locator("ol.results mark").all_inner_texts()}
    assert marks == {"cracked", "lid"}
    assert box.input_value() == "cracked lid"


def test_search_for_an_object_opens_its_story(demo: Demo, context: BrowserContext) -> None:
    page = open_page(context, "/").page
    box = page.get_by_role("searchbox")
    box.fill(f"order:{demo.refunded_order}")
    with page.expect_navigation():
        page.locator("form.search-box button").click()
    assert page.url.endswith(f"/objects/order/{quote(demo.refunded_order, safe='')}")


def test_words_that_name_an_object_type_are_searched_for(
    demo: Demo, context: BrowserContext
) -> None:
    """``refund approved`` (the box's placeholder suggests ``refund damaged``) is a search,
    not the story of a refund called "approved"; ``order <id>`` of a known order jumps."""
    page = open_page(context, "/search?q=refund+approved").page
    assert "/search?q=refund+approved" in page.url
    texts = page.locator("ol.results > li").all_inner_texts()
    assert any("return.approved" in text for text in texts), texts
    visit = open_page(context, f"/search?q=order+{quote(demo.refunded_order)}")
    visit.assert_clean()
    assert visit.page.url.endswith(f"/objects/order/{quote(demo.refunded_order, safe='')}")


# --- the object story, the event, the chain ---------------------------------------------


def test_the_refunded_orders_story_shows_why_and_the_state_change(
    demo: Demo, context: BrowserContext
) -> None:
    visit = open_page(context, page_path("object-story", demo))
    visit.assert_clean()
    page = visit.page
    assert demo.refunded_order in page.locator("h1").inner_text()
    refund = page.locator("li.story-event", has=page.locator("code", has_text="order.refunded"))
    assert refund.count() == 1
    assert demo.refund.decision is not None
    assert demo.refund.decision.reasoning in refund.locator(".why").inner_text()
    changed = refund.locator("table.diff tr.changed")
    assert changed.count() >= 1
    status = refund.locator("table.diff tr", has=page.locator("th", has_text="status"))
    cells = status.locator("td").all_inner_texts()
    (order,) = [o for o in demo.refund.objects if o.external_id == demo.refunded_order]
    assert order.state_before is not None and order.state_after is not None
    assert [c.strip() for c in cells] == [
        str(order.state_before["status"]),
        str(order.state_after["status"]),
    ]
    # Oldest first.
    datetimes = page.locator("li.story-event time").evaluate_all(
        "els => els.map(e => e.getAttribute('datetime'))"
    )
    assert len(datetimes) >= 3 and datetimes == sorted(datetimes)


def test_the_event_page_and_its_chain(demo: Demo, context: BrowserContext) -> None:
    page = open_page(context, page_path("event", demo)).page
    assert demo.refund.id in page.locator("dl.facts").first.inner_text()
    with page.expect_navigation():
        page.get_by_role("link", name="the chain").click()
    assert page.url.endswith(f"/events/{demo.refund.id}/chain")
    rows = page.locator("table.waterfall tbody tr")
    assert rows.count() == 3  # return requested -> approved -> refunded
    assert rows.locator("svg.bar rect").count() == 3
    focus = page.locator("table.waterfall tr[aria-current=true]")
    assert "order.refunded" in focus.inner_text()


# --- hostile values -----------------------------------------------------------------------


@pytest.mark.parametrize("bypass_csp", [False, True], ids=["csp", "escaping-alone"])
@pytest.mark.parametrize("name", ["script", "img"])
def test_markup_in_the_reasoning_is_shown_as_text(
    name: str, bypass_csp: bool, demo: Demo, browser: Browser, server: Server
) -> None:
    """With the page's CSP, and without it (``bypass_csp``): escaping alone must hold."""
    context = _new_context(browser, server, bypass_csp=bypass_csp)
    try:
        expected = SCRIPT_REASONING if name == "script" else IMG_REASONING
        for path in (f"/events/{demo.hostile[name]}", "/?tag=hostile", "/search?q=pwned"):
            visit = open_page(context, path)
            visit.assert_clean()
            page = visit.page
            assert page.evaluate("typeof window.__pwned") == "undefined", path
            assert expected in page.locator("main").inner_text(), path
            assert page.locator("main script, main img").count() == 0, path
            if path.startswith("/events/"):
                visit.screenshot(f"hostile-{name}{'-nocsp' if bypass_csp else ''}")
    finally:
        context.close()


def test_a_javascript_url_is_never_a_link(demo: Demo, context: BrowserContext) -> None:
    visit = open_page(context, f"/events/{demo.hostile['js_url']}")
    visit.assert_clean()
    page = visit.page
    assert JS_URL in page.locator("table.kv").inner_text()
    hrefs = page.locator("a[href]").evaluate_all("els => els.map(e => e.href)")
    assert hrefs and not any(href.lower().startswith("javascript:") for href in hrefs)


def test_a_right_to_left_override_is_shown_not_obeyed(demo: Demo, context: BrowserContext) -> None:
    for path in (f"/events/{demo.hostile['rlo']}", "/?tag=hostile"):
        visit = open_page(context, path)
        visit.assert_clean()
        text = visit.page.locator("main").inner_text()
        assert "\u202e" not in text, path
        assert "Invoice for [U+202E]gnp.exe" in text, path


def test_a_10_mb_value_is_folded(demo: Demo, context: BrowserContext) -> None:
    visit = open_page(context, f"/events/{demo.hostile['big']}")
    visit.assert_clean()
    page = visit.page
    assert len(page.content()) < 200_000
    row = page.locator("table.kv tr", has=page.locator("th", has_text="blob"))
    more = row.locator("details.more")
    assert more.count() == 1
    assert not more.evaluate("d => d.open")
    assert "more characters not shown" in row.inner_text()
    shown = len(row.locator(".value").inner_text())
    assert shown < 1_000  # the head only, while folded
    more.locator("summary").click()
    assert more.evaluate("d => d.open")
    assert 10_000 < len(row.locator(".value").inner_text()) < BIG_CHARS
    visit.screenshot("hostile-big")


# --- time zones, small screens, keyboard ---------------------------------------------------


def test_times_are_local_with_utc_in_the_title(demo: Demo, context: BrowserContext) -> None:
    page = open_page(context, f"/events/{demo.hostile['known_time']}").page
    when = page.locator("dl.facts time").first
    assert when.get_attribute("title") == "2026-03-04 05:06:07 UTC"
    assert when.get_attribute("datetime") == "2026-03-04T05:06:07.000000Z"
    text = when.inner_text()
    assert "10:36:07" in text, text  # Asia/Kolkata is UTC+05:30
    assert "GMT+5:30" in text, text


@pytest.mark.parametrize("name", [*PAGES, "big-value", "login"])
def test_usable_at_360_px_without_horizontal_scrolling(
    name: str, demo: Demo, browser: Browser, server: Server
) -> None:
    headers = {} if name == "login" else None
    options: dict[str, Any] = {"viewport": {"width": 360, "height": 740}}
    if headers is not None:
        options["extra_http_headers"] = headers
    context = _new_context(browser, server, **options)
    try:
        path = {
            "big-value": f"/events/{demo.hostile['big']}",
            "login": "/login",
        }.get(name) or page_path(name, demo)
        visit = open_page(context, path)
        visit.assert_clean()
        page = visit.page
        if name == "timeline":
            _filters(page)
        width = page.evaluate("document.scrollingElement.scrollWidth")
        assert width <= 360, f"{name}: {width} px wide"
        visit.screenshot(f"{name}-360px")
    finally:
        context.close()


def test_tab_reaches_the_skip_link_first_then_the_search_box(
    demo: Demo, context: BrowserContext
) -> None:
    page = open_page(context, "/").page
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.className")
    assert "skip-link" in focused
    assert page.locator(".skip-link").is_visible()  # shown when focused
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    page.goto("/")
    for _ in range(15):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "site-search":
            break
    else:
        raise AssertionError("Tab never reached the search box")
    page.keyboard.type("cracked")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "/search?q=cracked" in page.url


# --- the token ------------------------------------------------------------------------------


def test_the_login_form_sets_an_http_only_cookie(
    demo: Demo, browser: Browser, server: Server
) -> None:
    context = _new_context(browser, server, extra_http_headers={})
    try:
        login = open_page(context, "/stats")  # sent to the login form
        page = login.page
        assert "/login" in page.url
        login.assert_clean()
        login.screenshot("login")
        page.get_by_label("Token").fill("not-the-token")
        with page.expect_navigation():
            page.get_by_label("Token").press("Enter")
        assert page.get_by_role("alert").inner_text() == "That is not the token."
        assert context.cookies() == []
        page.get_by_label("Token").fill(TOKEN)
        with page.expect_navigation():
            page.get_by_role("button", name="Sign in").click()
        assert page.url == f"{server.url}/stats"
        (cookie,) = context.cookies()
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
        assert TOKEN not in cookie["value"]
        assert page.evaluate("document.cookie") == ""
        for name in PAGES:
            visit = open_page(context, page_path(name, demo))
            visit.assert_clean()
            assert "/login" not in visit.page.url
        with page.expect_navigation():
            page.get_by_role("button", name="Sign out").click()
        assert "/login" in open_page(context, "/").page.url
    finally:
        context.close()


# --- the docs' pictures ------------------------------------------------------------------


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_docs_screenshots(demo: Demo, browser: Browser, server: Server) -> None:
    """The object story and the event page, 1000 px wide; also into docs/img/ when
    ``$DECISION_TRACE_DOCS_IMG`` names it (``make screenshots``)."""
    docs = os.environ.get(ENV_DOCS_IMG, "").strip()
    for name, height in (("object-story", 1000), ("event", 760)):
        context = _new_context(
            browser, server, viewport={"width": 1000, "height": height}, timezone_id="UTC"
        )
        try:
            visit = open_page(context, page_path(name, demo))
            visit.assert_clean()
            targets = [artifacts_dir() / f"docs-{name}.png"]
            if docs:
                Path(docs).mkdir(parents=True, exist_ok=True)
                targets.append(Path(docs) / f"{name}.png")
            for target in targets:
                visit.page.screenshot(path=str(target))
                assert _png_size(target) == (1000, height)
        finally:
            context.close()
