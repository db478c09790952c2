"""Bypass Mode: ``GET /bypass/list``, ``PUT /bypass/add``, ``PUT /bypass/remove``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from litestar import Controller, get, put
from litestar.params import Parameter
from lmcache_native.api.deps import EngineDep
from lmcache_native.api.errors import bad_request
from lmcache_native.api.schemas import BypassAddResult, BypassList, BypassRemoveResult

from ..routes import route

BackendName = Annotated[
    str, Parameter(description="A backend name from /bypass/list.", schema_extra={"minLength": 1})
]


def _change(
    engine: EngineDep, change: Callable[[str], object], backend_name: str
) -> tuple[str, bool, list[str]]:
    """Adds or removes ``backend_name``: the name, whether it was bypassed, the bypassed now.

    Raises:
        ApiError: 400 when ``backend_name`` is empty.
    """
    if not backend_name:
        raise bad_request("Missing parameter", "backend_name is required")
    was = bool(change(backend_name))
    return backend_name, was, list(engine.bypassed_backends())


def _change_route(path: str, summary: str, error_title: str) -> Callable[[Any], Any]:
    """The route of ``/bypass/add`` and ``/bypass/remove``.

    They answer 400 without a name and 503 without an engine.
    """
    return route(put, path, summary, 400, 503, error_title=error_title)


class BypassController(Controller):
    """A bypassed storage backend is skipped by contains/put/get."""

    path = "/bypass"
    tags = ("bypass",)

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

    @_change_route("/add", "Add a Backend to Bypass List", "Failed to add bypass backend")
    def add(self, engine: EngineDep, backend_name: BackendName) -> BypassAddResult:
        """Bypasses a backend."""
        name, was, after = _change(engine, engine.bypass_add, backend_name)
        return BypassAddResult("success", name, True, was, after)

    @_change_route(
        "/remove", "Remove a Backend from Bypass List", "Failed to remove bypass backend"
    )
    def remove(self, engine: EngineDep, backend_name: BackendName) -> BypassRemoveResult:
        """Restores a bypassed backend."""
        name, was, after = _change(engine, engine.bypass_remove, backend_name)
        return BypassRemoveResult("success", name, False, was, after)
