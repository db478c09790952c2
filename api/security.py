"""Request guards and limits: the API-key guard and the query-string bound.

Bodies are bounded by Litestar's ``request_max_body_size`` (413); query strings by
``QueryLimitMiddleware`` (414); slot counts by the KV cache size (in the cache controller).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send
from lmcache_native.api.errors import AUTH_STATE_KEY, UNAUTHORIZED_MESSAGE, ApiError

__all__ = [
    "API_KEY_CONFIG",
    "AUTH_STATE_KEY",
    "MAX_BODY_BYTES",
    "MAX_QUERY_BYTES",
    "PUBLIC_ROUTE_OPT",
    "QueryLimitMiddleware",
    "make_api_key_check",
    "make_api_key_guard",
]

MAX_BODY_BYTES = 1 << 20
"""Largest request body accepted (bytes); larger answers 413."""

MAX_QUERY_BYTES = 8 << 20
"""Largest query string accepted (bytes); larger answers 414. Large enough for a
``slot_mapping`` listing every slot of a big cache one by one."""

_CACHE_CLEAR_THRESHOLD = 4096

API_KEY_CONFIG = "internal_api_server_api_key"

PUBLIC_ROUTE_OPT = "lmcache_native_public"
"""Route ``opt`` flag of the few routes served without the API key: the dashboard's static
shell (HTML, script, style sheet), which holds no data and which a browser loads without an
``Authorization`` header. Every data endpoint still needs the key."""


def make_api_key_check(get_key: Callable[[], str | None]) -> Callable[[Any], bool]:
    """Builds ``authorized(headers) -> bool`` for ``Authorization: Bearer <key>``.

    Args:
        get_key: returns the configured key (read on every request, so a configuration
            change applies at once); ``None`` or ``""`` means no authentication.

    Returns:
        A function of the request headers; the key comparison is ``hmac.compare_digest`` over
        bytes (constant time).
    """

    def authorized(headers: Any) -> bool:
        key = get_key()
        if not key:
            return True
        header = str(headers.get("authorization", ""))
        scheme, _sep, token = header.partition(" ")
        expected = key.encode("utf-8")
        given = token.strip().encode("utf-8", "surrogateescape")
        ok = hmac.compare_digest(given, expected)
        return scheme.lower() == "bearer" and ok

    return authorized


def make_api_key_guard(
    authorized: Callable[[Any], bool],
) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], None]:
    """The Litestar guard over ``authorized``: 401 (``NotAuthorizedException``) when it fails.

    Routes flagged with ``opt={PUBLIC_ROUTE_OPT: True}`` are not checked.
    """

    def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        if handler.opt.get(PUBLIC_ROUTE_OPT) is True:
            return
        if not authorized(connection.headers):
            raise NotAuthorizedException(detail=UNAUTHORIZED_MESSAGE)

    return guard


class QueryLimitMiddleware(ASGIMiddleware):
    """Answers 414 for query strings over ``max_query_bytes``, before anything parses them."""

    def __init__(self, max_query_bytes: int = MAX_QUERY_BYTES) -> None:
        """Keeps the settings.

        Args:
            max_query_bytes: the bound in bytes.
        """
        self.max_query_bytes = max_query_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        """Checks the query length, runs the route, then drops cached parses of big queries."""
        size = len(scope.get("query_string", b""))
        if size > self.max_query_bytes:
            raise ApiError(
                414,
                "Query string too long",
                f"The query string has {size} bytes; the limit is {self.max_query_bytes}.",
            )
        try:
            await next_app(scope, receive, send)
        finally:
            if size > _CACHE_CLEAR_THRESHOLD:
                _clear_query_parse_cache()


def _clear_query_parse_cache() -> None:
    # NOTE: Litestar memoises parsed query strings (lru_cache of 1024 entries). With queries of
    # up to MAX_QUERY_BYTES that cache alone could pin gigabytes, so after a large query we
    # empty it; memory then stays bounded by the requests in flight.
    from litestar import _parsers

    clear = getattr(_parsers.parse_query_string, "cache_clear", None)
    if clear is not None:
        clear()
