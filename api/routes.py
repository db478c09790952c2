"""The one route decorator of the controllers: status, worker thread, error docs, error title.

Every handler of this API answers 200 on success, documents its error answers with
``error_responses`` and, when it touches the engine, runs on a worker thread so that copies and
checksums never block the event loop. ``route`` sets all of that from one line.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter
from lmcache_native.api.errors import error_responses

F = TypeVar("F", bound=Callable[..., Any])


def route(
    method: type[HTTPRouteHandler],
    path: str,
    summary: str,
    *codes: int,
    error_title: str | None = None,
    responses: Mapping[int, ResponseSpec] | None = None,
    **kwargs: Any,
) -> Callable[[F], HTTPRouteHandler]:
    """A Litestar route decorator with this API's defaults.

    Args:
        method: ``get``, ``post``, ``put`` or ``delete`` (Litestar's decorator classes).
        path: the route's path, relative to the controller's.
        summary: the OpenAPI summary.
        *codes: status codes answered with the standard error body (401 and 500 always are).
        error_title: the ``error`` field of a 500 answer for an unexpected failure.
        responses: the full OpenAPI ``responses`` instead of ``error_responses(*codes)``.
        **kwargs: further arguments of the Litestar decorator (``media_type``, ``tags``, ...).

    Returns:
        A decorator; synchronous handlers run on a worker thread, coroutines on the loop.
    """

    def decorate(fn: F) -> HTTPRouteHandler:
        handler = method(
            path,
            summary=summary,
            status_code=200,
            sync_to_thread=None if inspect.iscoroutinefunction(fn) else True,
            responses=dict(responses) if responses is not None else error_responses(*codes),
            opt={"error_title": error_title} if error_title else None,
            **kwargs,
        )
        return handler(fn)

    return decorate


def optional(description: str, **schema_extra: Any) -> Any:
    """An optional query parameter (default ``None``) with its OpenAPI description.

    Args:
        description: the parameter's description.
        **schema_extra: extra JSON Schema keywords (``pattern``, ``items``, ...).

    Returns:
        Litestar's ``Parameter``, to be used as the handler argument's default.
    """
    return Parameter(
        default=None,
        required=False,
        description=description,
        schema_extra=schema_extra or None,
    )
