"""The admin API (Litestar), shipped as ``lmcache_native.api``.

``create_app(engine, config)`` builds the app; ``lmcache_native.api.server.start`` serves it
on a background thread. The contract is ``inference_apis.rst``; see ``api/errors.py`` for the
error shape and ``api/controllers/`` for one controller per endpoint group.
"""

from __future__ import annotations

from lmcache_native.api.app import create_app, openapi_config

__all__ = ["create_app", "openapi_config"]
