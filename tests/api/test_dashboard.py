"""The dashboard's static files.

Served without the key, strict headers, no inline code, no external resources, no unsafe DOM sinks,
not in the OpenAPI document.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from html.parser import HTMLParser

import pytest
from api_testlib import assert_error, make_config
from litestar import Litestar
from litestar.testing import TestClient
from lmcache_native.api.controllers.dashboard import (
    CONTENT_SECURITY_POLICY,
    DASHBOARD_DIR,
    SCRIPTS,
)
from lmcache_native.api.openapi import openapi_document
from lmcache_native.engine import CacheEngine

ASSETS = {
    "/dashboard": "text/html; charset=utf-8",
    "/dashboard/dashboard.css": "text/css; charset=utf-8",
    **{f"/dashboard/{name}": "text/javascript; charset=utf-8" for name in SCRIPTS},
}
KEY = "dashboard-test-key"


@pytest.fixture
def secured(
    make_client: Callable[..., TestClient[Litestar]], engine: CacheEngine
) -> TestClient[Litestar]:
    return make_client(engine, make_config(internal_api_server_api_key=KEY))


@pytest.mark.parametrize(("path", "content_type"), sorted(ASSETS.items()))
def test_assets_served_without_the_key_with_strict_headers(secured, path, content_type):
    r = secured.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"] == content_type
    assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    name = "index.html" if path == "/dashboard" else path.rsplit("/", 1)[1]
    assert r.content == (DASHBOARD_DIR / name).read_bytes()


def test_csp_allows_only_same_origin_and_no_inline_code():
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY


def test_data_endpoints_still_need_the_key(secured):
    for path in ("/backends", "/metrics", "/meta", "/freeze/status", "/dashboard/other.js"):
        assert_error(secured.get(path), 401, "Unauthorized")
    ok = secured.get("/backends", headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200
    assert "LocalCPUBackend" in ok.json()


def test_dashboard_is_not_in_the_openapi_document():
    assert not [p for p in openapi_document()["paths"] if p.startswith("/dashboard")]


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.script_text = ""
        self.in_script = False
        self.urls: list[str] = []
        self.bad_attrs: list[tuple[str, str]] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script":
            self.scripts.append(values)
            self.in_script = True
        for name, value in attrs:
            if name.startswith("on") or name == "style":
                self.bad_attrs.append((tag, name))
            if name in ("src", "href", "action") and value is not None:
                self.urls.append(value)
            if name == "id" and value:
                self.ids.add(value)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self.in_script = False

    def handle_data(self, data: str) -> None:
        if self.in_script:
            self.script_text += data.strip()


def _script(name: str) -> str:
    return (DASHBOARD_DIR / name).read_text(encoding="utf-8")


def test_every_module_is_served_and_imported():
    assert sorted(p.name for p in DASHBOARD_DIR.glob("*.js")) == sorted(SCRIPTS)
    imported = {"dashboard.js"}
    for name in SCRIPTS:
        for target in re.findall(r'^import (?:.* from )?"([^"]+)";$', _script(name), flags=re.M):
            assert target.startswith("./"), (name, target)
            assert target[2:] in SCRIPTS, (name, target)
            imported.add(target[2:])
    assert imported == set(SCRIPTS)


def test_page_has_no_inline_code_and_only_local_urls():
    page = _Page()
    page.feed((DASHBOARD_DIR / "index.html").read_text(encoding="utf-8"))
    assert page.scripts == [{"type": "module", "src": "/dashboard/dashboard.js"}]
    assert page.script_text == ""
    assert page.bad_attrs == []
    assert "<style" not in (DASHBOARD_DIR / "index.html").read_text(encoding="utf-8")
    for url in page.urls:
        assert url.startswith("/dashboard/") or url == "data:,", url
    # Every element the scripts look up exists in the page.
    script = "\n".join(_script(name) for name in SCRIPTS)
    for name in set(re.findall(r'\$\("([a-z0-9-]+)"\)', script)):
        assert name in page.ids, name


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_uses_no_html_sinks_no_storage_and_no_remote_urls(name):
    code = re.sub(r"/\*.*?\*/", "", _script(name), flags=re.S)  # header comments name them
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "localStorage",
        "sessionStorage",
        "document.cookie",
        "indexedDB",
    ):
        assert sink not in code, sink
    for asset in (name, "dashboard.css", "index.html"):
        text = (DASHBOARD_DIR / asset).read_text(encoding="utf-8")
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|@import|url\(", text), asset
