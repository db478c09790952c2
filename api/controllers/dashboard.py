"""The dashboard: ``GET /dashboard``, its script modules and style sheet (``api/dashboard/``).

The files are a static shell that holds no data: the page reads everything through the
admin API's own endpoints, sending the API key the operator types (kept in the tab's memory).
So the shell is served without the key (a browser cannot attach a header to a page load), and
every data call still needs it. The files are package data, read from disk once per request;
nothing is fetched from the network and there is no build step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio.to_thread
from litestar import Controller, Request, Response, get
from lmcache_native.api.security import PUBLIC_ROUTE_OPT

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard"
"""Where ``index.html``, the ``*.js`` modules and ``dashboard.css`` are installed."""

SCRIPTS = (
    "dashboard.js",
    "format.js",
    "api.js",
    "charts.js",
    "metrics.js",
    "panels.js",
    "checksum.js",
)
"""The page's ES modules: ``dashboard.js`` is the entry, it imports the others."""

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
"""No inline script or style, no third-party origin, no framing."""

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

_OPT = {PUBLIC_ROUTE_OPT: True}


def _asset(name: str, media_type: str) -> Response[bytes]:
    return Response(
        (DASHBOARD_DIR / name).read_bytes(), media_type=media_type, headers=SECURITY_HEADERS
    )


class DashboardController(Controller):
    """A one-page web dashboard over the admin API (not part of the OpenAPI document)."""

    path = "/dashboard"
    include_in_schema = False

    @get("/", sync_to_thread=True, opt=_OPT)
    def page(self) -> Response[bytes]:
        """The page (HTML)."""
        return _asset("index.html", "text/html")

    # NOTE: async with an explicit thread, as Litestar 2.25 wraps a sync handler once per path
    # and a handler with several paths then returns an un-awaited coroutine.
    @get([f"/{name}" for name in SCRIPTS], opt=_OPT)
    async def script(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """One of the page's script modules (only the names in ``SCRIPTS`` are routed)."""
        name = request.url.path.rsplit("/", 1)[1]
        return await anyio.to_thread.run_sync(_asset, name, "text/javascript")

    @get("/dashboard.css", sync_to_thread=True, opt=_OPT)
    def style(self) -> Response[bytes]:
        """The page's style sheet."""
        return _asset("dashboard.css", "text/css")
