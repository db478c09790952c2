"""The app factory: ``create_app(engine, config) -> Litestar``.

Each call builds an independent app; there is no module-level app or state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from litestar import Litestar, Request
from litestar.datastructures import State
from litestar.exceptions import ClientException, SerializationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin
from lmcache_native import VERSION
from lmcache_native.api.controllers import CONTROLLERS
from lmcache_native.api.deps import InferenceInfoProvider, dependencies
from lmcache_native.api.errors import EXCEPTION_HANDLERS
from lmcache_native.api.host_check import ALLOWED_HOSTS_CONFIG, HostAllowList, HostCheckMiddleware
from lmcache_native.api.security import (
    API_KEY_CONFIG,
    AUTH_STATE_KEY,
    MAX_BODY_BYTES,
    MAX_QUERY_BYTES,
    QueryLimitMiddleware,
    make_api_key_check,
    make_api_key_guard,
)
from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine import CacheEngine

OPENAPI_PATH = "/schema"
"""The OpenAPI document is served at ``/schema/openapi.json`` (rendered page at ``/schema``)."""


def is_json_media_type(content_type: str | None) -> bool:
    """Whether a Content-Type header names JSON (``application/json`` or ``*/*+json``)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class AdminRequest(Request[Any, Any, Any]):
    """Litestar's request, stricter about bodies.

    A JSON body must say it is JSON, and every body that cannot be decoded is reported as bad
    JSON.
    """

    async def json(self) -> Any:
        """The decoded JSON body.

        Raises:
            ClientException: 415 when a non-empty body is not labelled ``application/json``.
            SerializationException: the body is not JSON (Litestar answers 400).
        """
        # NOTE: a web page can send text/plain, form or multipart POSTs to 127.0.0.1 without a
        # CORS preflight, but not application/json; requiring the JSON type keeps pages the
        # operator visits from changing the configuration or loading files (CSRF).
        if await self.body() and not is_json_media_type(self.headers.get("content-type")):
            raise ClientException(
                status_code=415,
                detail="The request body must be JSON, sent with 'Content-Type: application/json'.",
            )
        try:
            return await super().json()
        # NOTE: Litestar converts msgspec.DecodeError only; msgspec raises UnicodeDecodeError
        # for bytes that are not UTF-8 and RecursionError for nesting beyond the recursion
        # limit, which would otherwise be answered 500.
        except UnicodeDecodeError:
            raise SerializationException("the body is not UTF-8") from None
        except RecursionError:
            raise SerializationException("the body is nested too deeply") from None


def openapi_config() -> OpenAPIConfig:
    """The OpenAPI settings (title, version, path) of every app this module builds."""
    return OpenAPIConfig(
        title="lmcache-native admin API",
        version=VERSION,
        description=(
            "Cache management, configuration, freeze, hot cache, chunk statistics and bypass "
            "endpoints of an lmcache-native engine. Every error body is "
            '{"error": ..., "message": ...}.'
        ),
        path=OPENAPI_PATH,
        render_plugins=[ScalarRenderPlugin()],
        create_examples=False,
    )


def create_app(
    engine: CacheEngine | None,
    config: LMCacheEngineConfig | None = None,
    *,
    inference_info: InferenceInfoProvider | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_query_bytes: int = MAX_QUERY_BYTES,
    bind_host: str | None = None,
    allowed_hosts: Sequence[str] = (),
) -> Litestar:
    """Builds the admin API for one engine.

    Args:
        engine: the engine behind the API, or ``None`` (engine endpoints then answer 503).
        config: the configuration ``/conf`` reads and updates and the API key comes from;
            defaults to ``engine.config`` when the engine has one, else to the defaults.
        inference_info: called by ``/inference_info`` for host details (e.g. the vLLM
            worker's model and parallel config); must return a JSON-able dict.
        max_body_bytes: largest request body (413 beyond).
        max_query_bytes: largest query string (414 beyond).
        bind_host: the address the server listens on; its name (for ``0.0.0.0``/``::``: the
            machine's names and addresses) joins the Host allow-list (``api/host_check.py``).
            ``None``: loopback names and the address each connection arrived on only.
        allowed_hosts: more Host names to answer to, beside ``internal_api_server_allowed_hosts``.

    Returns:
        A Litestar ASGI app; serve it with uvicorn or ``lmcache_native.api.server.start``.
    """
    if config is None:
        config = getattr(engine, "config", None) or LMCacheEngineConfig.from_defaults()
    cfg = config

    def api_key() -> str | None:
        value: Any = cfg.get(API_KEY_CONFIG)
        return str(value) if value else None

    authorized = make_api_key_check(api_key)
    hosts = HostAllowList.build(bind_host, [*(cfg.get(ALLOWED_HOSTS_CONFIG) or ()), *allowed_hosts])

    return Litestar(
        route_handlers=list(CONTROLLERS),
        dependencies=dependencies(engine, cfg, inference_info),
        exception_handlers=dict(EXCEPTION_HANDLERS),
        guards=[make_api_key_guard(authorized)],
        state=State({AUTH_STATE_KEY: authorized}),
        # The Host check comes first: a foreign Host is refused before anything else runs.
        middleware=[HostCheckMiddleware(hosts), QueryLimitMiddleware(max_query_bytes)],
        request_max_body_size=max_body_bytes,
        request_class=AdminRequest,
        openapi_config=openapi_config(),
        # NOTE: Litestar's default LoggingConfig reconfigures the root logger; inside a vLLM
        # worker that would change the host's logging. Errors are logged by api/errors.py.
        logging_config=None,
        debug=False,
    )
