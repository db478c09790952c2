"""Bypass Mode: ``GET /bypass/list``, ``PUT /bypass/add``, ``PUT /bypass/remove``."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, put
from litestar.params import Parameter
from lmcache_native.api.deps import EngineDep
from lmcache_native.api.errors import bad_request
from lmcache_native.api.routes import route
from lmcache_native.api.schemas import BypassAddResult, BypassList, BypassRemoveResult

BackendName = Annotated[
    str, Parameter(description="A backend name from /bypass/list.", schema_extra={"minLength": 1})
]


def _require_name(backend_name: str) -> str:
    if not backend_name:
        raise bad_request("Missing parameter", "backend_name is required")
    return backend_name


class BypassController(Controller):
    """A bypassed storage backend is skipped by contains/put/get."""

    path = "/bypass"
    tags = ["bypass"]

    @route(
        get, "/list", "List Bypassed Backends", 503, error_title="Failed to list bypassed backends"
    )
    def list_backends(self, engine: EngineDep) -> BypassList:
        """Bypassed backends and every backend name."""
        return BypassList(
            status="success",
            bypassed_backends=list(engine.bypassed_backends()),
            all_backends=list(engine.all_backends()),
        )

    @route(
        put,
        "/add",
        "Add a Backend to Bypass List",
        400,
        503,
        error_title="Failed to add bypass backend",
    )
    def add(self, engine: EngineDep, backend_name: BackendName) -> BypassAddResult:
        """Bypasses a backend."""
        name = _require_name(backend_name)
        was = bool(engine.bypass_add(name))
        after = list(engine.bypassed_backends())
        return BypassAddResult("success", name, True, was, after)

    @route(
        put,
        "/remove",
        "Remove a Backend from Bypass List",
        400,
        503,
        error_title="Failed to remove bypass backend",
    )
    def remove(self, engine: EngineDep, backend_name: BackendName) -> BypassRemoveResult:
        """Restores a bypassed backend."""
        name = _require_name(backend_name)
        was = bool(engine.bypass_remove(name))
        after = list(engine.bypassed_backends())
        return BypassRemoveResult("success", name, False, was, after)
