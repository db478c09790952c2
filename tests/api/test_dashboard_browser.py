"""The dashboard in a real browser.

Playwright driving Debian's Chromium (headless) against real `lmcache-native serve` processes.

Chromium's resolver maps ``attacker.example`` and ``dash.example`` to 127.0.0.1, which is what a
DNS-rebinding attack achieves: the browser then sends those names as ``Host``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from test_serve import Served

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FOREIGN = "attacker.example"
ALLOWED = "dash.example"
KEY = "browser-test-key-5a4b3c"
WAIT_MS = 30_000  # hang guard for waits on the page (it polls every 2 s)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                f"--host-resolver-rules=MAP {FOREIGN} 127.0.0.1, MAP {ALLOWED} 127.0.0.1",
                # NOTE: keep http:// navigations to names as typed (no HTTPS attempt first).
                "--disable-features=HttpsUpgrades",
            ],
        )
        try:
            yield b
        finally:
            b.close()


def _stopped_cleanly(s: Served) -> Iterator[Served]:
    """Yields the running server, then stops it and checks that it exited with status 0."""
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    yield from _stopped_cleanly(Served())


@pytest.fixture(scope="module")
def secured_served() -> Iterator[Served]:
    s = Served(
        env={
            "LMCACHE_INTERNAL_API_SERVER_API_KEY": KEY,
            "LMCACHE_INTERNAL_API_SERVER_ALLOWED_HOSTS": ALLOWED,
        }
    )
    yield from _stopped_cleanly(s)


class Watched:
    """A page with its console errors and uncaught exceptions collected."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        yield Watched(context.new_page())
    finally:
        context.close()


def _api(served: Served, method: str, path: str, **kwargs: Any) -> httpx.Response:
    r = httpx.request(method, served.url + path, timeout=60, **kwargs)
    assert r.status_code == 200, r.text
    return r


def _wait_live(page: Page) -> None:
    """Until the page has polled the API twice (so every panel and one chart sample is drawn).

    Wait predicates are arrow functions: the page's CSP forbids eval of plain expressions.
    """
    page.wait_for_function(
        "() => document.getElementById('conn-status').textContent === 'live' && "
        "Number(document.getElementById('throughput-chart').dataset.samples || 0) >= 1",
        timeout=WAIT_MS,
    )


def _text(page: Page, selector: str) -> str:
    return page.locator(selector).inner_text().strip()


def test_page_loads_without_errors_and_shows_the_tiers(served: Served, watched: Watched):
    page = watched.page
    response = page.goto(served.url + "/dashboard")
    assert response is not None
    assert response.status == 200
    _wait_live(page)
    backends = _api(served, "GET", "/backends").json()
    rows = page.locator("#tiers-body tr[data-tier]")
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.tier)") == list(backends)
    for name, tier in backends.items():
        row = page.locator(f'#tiers-body tr[data-tier="{name}"]')
        assert row.locator(".tier-name").inner_text() == name
        assert row.locator(".health").inner_text() == tier["health"]
    version = _api(served, "GET", "/lmc_version").text
    assert _text(page, "#version").startswith("v" + version)
    assert _text(page, "#model") == _api(served, "GET", "/meta").json()["model_name"]
    assert _text(page, "#chunk-stats-panel dl") != ""
    assert watched.errors == []


def test_freeze_switch_changes_the_server(served: Served, watched: Watched):
    page = watched.page
    page.goto(served.url + "/dashboard")
    _wait_live(page)
    try:
        assert _text(page, "#freeze-state") == "off"
        page.click("#freeze-toggle")
        page.wait_for_function(
            "() => document.getElementById('freeze-state').textContent === 'on'", timeout=WAIT_MS
        )
        assert _api(served, "GET", "/freeze/status").json()["freeze"] is True
        page.click("#freeze-toggle")
        page.wait_for_function(
            "() => document.getElementById('freeze-state').textContent === 'off'", timeout=WAIT_MS
        )
        assert _api(served, "GET", "/freeze/status").json()["freeze"] is False
    finally:
        _api(served, "PUT", "/freeze/disable")
    assert watched.errors == []


def test_a_store_shows_up_in_the_traffic_panel(served: Served, watched: Watched):
    page = watched.page
    page.goto(served.url + "/dashboard")
    _wait_live(page)
    before = int(_text(page, "#stored-tokens").replace(",", ""))
    stored = _api(served, "POST", "/cache/store?tokens_mock=5000,5512").json()
    assert stored["num_stored_tokens"] == 512
    page.wait_for_function(
        "() => Number(document.getElementById('stored-tokens').textContent.replace(/,/g, '')) === "
        f"{before + 512} && Number(document.getElementById('throughput-chart').dataset.peakStore)"
        " > 0",
        timeout=WAIT_MS,
    )
    assert (
        _api(served, "POST", "/cache/retrieve?tokens_mock=5000,5512").json()["num_retrieved"] == 512
    )
    page.wait_for_function(
        "() => document.getElementById('hit-rate').textContent === '100%' && "
        "Number(document.getElementById('hit-chart').dataset.peakHit) === 1 && "
        "Number(document.getElementById('throughput-chart').dataset.peakRetrieve) > 0",
        timeout=WAIT_MS,
    )
    assert "store: peak" in (page.get_attribute("#throughput-chart", "aria-label") or "")
    assert watched.errors == []


def test_checksum_form_matches_the_api(served: Served, watched: Watched):
    page = watched.page
    page.goto(served.url + "/dashboard")
    _wait_live(page)
    page.fill("#slot-first", "0")
    page.fill("#slot-last", "63")
    page.fill("#checksum-chunk", "32")
    page.click("#checksum-submit")
    page.wait_for_selector("#checksum-body td", timeout=WAIT_MS)
    expected = _api(served, "GET", "/cache/kvcache/check?slot_mapping=[0,63]&chunk_size=32").json()[
        "chunk_checksums"
    ]
    shown = page.locator("#checksum-body tr td:last-child").all_inner_texts()
    assert shown == expected
    assert len(shown) == 2
    page.fill("#slot-first", "10")
    page.fill("#slot-last", "5")
    page.click("#checksum-submit")
    page.wait_for_function(
        "() => document.getElementById('checksum-error').textContent.includes('first')",
        timeout=WAIT_MS,
    )
    assert page.locator("#checksum-body td").count() == 0
    assert watched.errors == []


def test_api_key_is_asked_once_and_a_wrong_key_shows_the_401_message(
    secured_served: Served, watched: Watched
):
    page = watched.page
    # The configured name works like the loopback address.
    response = page.goto(f"http://{ALLOWED}:{secured_served.port}/dashboard")
    assert response is not None
    assert response.status == 200
    page.wait_for_selector("#auth:not([hidden])", timeout=WAIT_MS)
    assert "401" in _text(page, "#auth-message")
    page.fill("#api-key", "not-the-key")
    page.click("#auth-submit")
    page.wait_for_function(
        "() => document.getElementById('auth-message').textContent.includes('refused')",
        timeout=WAIT_MS,
    )
    message = _text(page, "#auth-message")
    assert "401" in message
    assert "Authorization: Bearer" in message
    assert page.locator("#main").is_hidden()
    page.fill("#api-key", KEY)
    page.click("#auth-submit")
    _wait_live(page)
    assert page.locator("#tiers-body tr[data-tier]").count() >= 1
    kept = page.evaluate("[localStorage.length, sessionStorage.length, document.cookie]")
    assert kept == [0, 0, ""]
    assert KEY not in page.content()


def test_a_foreign_host_is_refused(served: Served, watched: Watched):
    page = watched.page
    response = page.goto(f"http://{FOREIGN}:{served.port}/dashboard")
    assert response is not None
    assert response.status == 400
    assert response.json()["error"] == "Invalid Host header"
    # A script on the rebound origin cannot change the server either.
    status = page.evaluate("fetch('/freeze/enable', {method: 'PUT'}).then(r => r.status)")
    assert status == 400
    assert _api(served, "GET", "/freeze/status").json()["freeze"] is False
