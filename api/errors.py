"""The one place where errors become HTTP answers.

Every error the admin API sends is ``{"error": <title>, "message": <detail>}`` (plus the few
documented extra fields, such as ``config_path``): domain errors (``LMCacheError`` subclasses),
the handlers' own ``ApiError``, Litestar's validation errors (bad query values, bad JSON
bodies), 401/404/405/413, and any unexpected exception (500, logged with its traceback on the
server, never sent to the client).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    SerializationException,
    ValidationException,
)
from litestar.openapi.datastructures import ResponseSpec
from lmcache_native.api.schemas import ErrorBody
from lmcache_native.errors import (
    ConfigError,
    InvalidSlotsError,
    LMCacheError,
    NoKVCacheError,
    StatisticsUnavailableError,
    UnknownBackendError,
)

logger = logging.getLogger("lmcache_native.api")

UNAVAILABLE = "LMCache API is unavailable"
NO_ENGINE_MESSAGE = "LMCache engine not configured."
NO_KV_CACHE_MESSAGE = "No KV cache is registered with the LMCache engine."
UNAUTHORIZED_MESSAGE = "This server requires 'Authorization: Bearer <internal_api_server_api_key>'."

AUTH_STATE_KEY = "lmcache_native_authorized"
"""``app.state`` entry holding the API-key check ``authorized(headers) -> bool``."""


class ApiError(Exception):
    """An error answer chosen by a handler."""

    def __init__(self, status_code: int, error: str, message: str, **extra: Any) -> None:
        """Keeps the settings.

        Args:
            status_code: the HTTP status.
            error: the short title (the ``error`` field).
            message: the detail (the ``message`` field).
            **extra: documented extra fields of the body (e.g. ``config_path``).
        """
        super().__init__(f"{error}: {message}")
        self.status_code = status_code
        self.error = error
        self.message = message
        self.extra = extra


def bad_request(error: str, message: str, **extra: Any) -> ApiError:
    """A 400 ``ApiError``."""
    return ApiError(400, error, message, **extra)


def _body(
    status_code: int, error: str, message: str, extra: dict[str, Any] | None = None
) -> Response[dict[str, Any]]:
    content: dict[str, Any] = {"error": error, "message": message}
    if extra:
        content.update(extra)
    return Response(content, status_code=status_code, media_type=MediaType.JSON)


def _api_error(_: Request[Any, Any, Any], exc: ApiError) -> Response[dict[str, Any]]:
    return _body(exc.status_code, exc.error, exc.message, exc.extra)


_MISSING_TITLES = {"backend_name": ("Missing parameter", "backend_name is required")}
_MISSING_RE = re.compile(r"Missing required (?:\w+ )?parameter '([^']+)'")


def _missing(key: str) -> Response[dict[str, Any]]:
    title, message = _MISSING_TITLES.get(
        key, ("Missing parameters", f"{key} parameter is required")
    )
    return _body(400, title, message)


def _validation_error(
    request: Request[Any, Any, Any], exc: ValidationException
) -> Response[dict[str, Any]]:
    items = [i for i in (exc.extra if isinstance(exc.extra, list) else []) if isinstance(i, dict)]
    body_items = [i for i in items if str(i.get("source")) == "body"]
    if body_items:
        if not request.headers.get("content-length", "0").strip("0") and (
            "transfer-encoding" not in request.headers
        ):
            return _body(400, "Invalid request body", "A JSON request body is required.")
        detail = "; ".join(f"{i.get('key')}: {i.get('message')}" for i in body_items)
        return _body(400, "Invalid request body", detail)
    missing = _MISSING_RE.search(str(exc.detail))
    if missing:
        return _missing(missing.group(1))
    if items:
        key = str(items[0].get("key"))
        parts = [f"{i.get('key')}: {i.get('message')}" for i in items if i.get("key") is not None]
        return _body(400, f"Invalid {key}", "; ".join(parts) or str(exc.detail))
    return _body(400, "Invalid parameters", str(exc.detail))


def _unauthorized(detail: str) -> Response[dict[str, Any]]:
    response = _body(401, "Unauthorized", detail)
    response.headers["www-authenticate"] = "Bearer"
    return response


def _routing_authorized(request: Request[Any, Any, Any]) -> bool:
    # Routing errors (404/405) happen before guards run; check the API key here too so that
    # an unauthenticated client learns nothing about which paths or methods exist.
    authorized = request.app.state.get(AUTH_STATE_KEY)
    return authorized is None or bool(authorized(request.headers))


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    status_code = exc.status_code
    detail = str(exc.detail)
    if isinstance(exc, NotFoundException | MethodNotAllowedException) and not (
        _routing_authorized(request)
    ):
        return _unauthorized(UNAUTHORIZED_MESSAGE)
    if isinstance(exc, NotFoundException):
        return _body(404, "Not found", f"No endpoint at {request.url.path}")
    if isinstance(exc, MethodNotAllowedException):
        raw = exc.headers.get("allow", "") if exc.headers else ""
        allow = ", ".join(sorted(m.strip() for m in raw.split(",") if m.strip()))
        message = f"{request.method} is not allowed on {request.url.path}"
        response = _body(405, "Method not allowed", f"{message}; allowed: {allow}".rstrip(": "))
        if allow:
            response.headers["allow"] = allow
        return response
    if isinstance(exc, NotAuthorizedException):
        return _unauthorized(detail)
    if status_code == 413:
        return _body(413, "Request too large", "The request body exceeds the server's limit.")
    if status_code == 400 and isinstance(exc.__cause__, SerializationException):
        # Litestar wraps body decoding failures (and only those) in a ClientException.
        return _body(400, "Invalid JSON body", f"The request body is not valid JSON: {detail}")
    if status_code >= 500:
        logger.error("HTTP %d on %s: %s", status_code, request.url.path, detail)
        return _body(status_code, HTTPStatus(status_code).phrase, "Internal server error")
    try:
        title = HTTPStatus(status_code).phrase
    except ValueError:
        title = "Error"
    return _body(status_code, title, detail)


_DOMAIN_ERRORS: tuple[tuple[type[LMCacheError], int, str], ...] = (
    (UnknownBackendError, 400, "Unknown backend"),
    (InvalidSlotsError, 400, "Invalid slot indices"),
    (StatisticsUnavailableError, 400, "Not available"),
    (NoKVCacheError, 503, UNAVAILABLE),
    (ConfigError, 400, "Invalid configuration"),
)


def _domain_error(request: Request[Any, Any, Any], exc: LMCacheError) -> Response[dict[str, Any]]:
    for cls, status_code, title in _DOMAIN_ERRORS:
        if isinstance(exc, cls):
            message = str(exc) or title
            if isinstance(exc, NoKVCacheError):
                message = NO_KV_CACHE_MESSAGE
            return _body(status_code, title, message)
    # NOTE: an LMCacheError without a specific mapping is still a domain error with a
    # human-written message (e.g. a tier that cannot be opened), so it is safe to return.
    title = _handler_title(request) or "LMCache error"
    return _body(500, title, str(exc) or type(exc).__name__)


def _handler_title(request: Request[Any, Any, Any]) -> str | None:
    handler = request.scope.get("route_handler")
    opt = getattr(handler, "opt", None) or {}
    title = opt.get("error_title")
    return str(title) if title else None


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    title = _handler_title(request) or "Internal server error"
    return _body(500, title, f"Unexpected {type(exc).__name__}; details are in the server log.")


ExceptionHandler = Callable[[Request[Any, Any, Any], Any], Response[Any]]

EXCEPTION_HANDLERS: dict[type[Exception] | int, ExceptionHandler] = {
    ApiError: _api_error,
    ValidationException: _validation_error,
    HTTPException: _http_error,
    LMCacheError: _domain_error,
    Exception: _unexpected,
}
"""Pass to ``Litestar(exception_handlers=...)``; covers every exception class."""


def error_responses(*codes: int, **overrides: ResponseSpec) -> dict[int, ResponseSpec]:
    """OpenAPI ``responses`` for a handler: each code answers an ``ErrorBody``.

    Args:
        *codes: HTTP status codes that answer the standard error body.
        **overrides: ``s<code>=ResponseSpec(...)`` for codes with a different body.

    Returns:
        A mapping for the route decorator's ``responses`` argument.
    """
    out: dict[int, ResponseSpec] = {}
    for code in (*codes, 401, 500):
        out[code] = ResponseSpec(
            data_container=ErrorBody,
            description=_DESCRIPTIONS.get(code, HTTPStatus(code).phrase),
            generate_examples=False,
        )
    for key, spec in overrides.items():
        out[int(key.lstrip("s"))] = spec
    return out


_DESCRIPTIONS = {
    400: "Bad request: a parameter or the body is invalid",
    401: "Missing or wrong API key (only when an API key is configured)",
    413: "Request body too large",
    414: "Query string too long",
    415: "The request body is not sent as application/json",
    500: "Unexpected server error (details only in the server log)",
    503: "No engine, or no registered KV cache, behind this server",
}
