"""Freeze Mode: ``PUT /freeze/enable``, ``PUT /freeze/disable``, ``GET /freeze/status``."""

from __future__ import annotations

from litestar import Controller, get, put
from lmcache_native.api.deps import EngineDep
from lmcache_native.api.errors import error_responses
from lmcache_native.api.schemas import FreezeStatus


class FreezeController(Controller):
    """While frozen, stores are skipped and lookups/retrieves use the CPU tier only."""

    path = "/freeze"
    tags = ["freeze"]

    @put(
        "/enable",
        summary="Enable Freeze Mode",
        status_code=200,
        sync_to_thread=True,
        responses=error_responses(503),
        opt={"error_title": "Failed to enable freeze mode"},
    )
    def enable(self, engine: EngineDep) -> FreezeStatus:
        """Enables freeze mode."""
        engine.freeze(True)
        return FreezeStatus(
            status="success", freeze=True, message="Freeze mode enabled successfully"
        )

    @put(
        "/disable",
        summary="Disable Freeze Mode",
        status_code=200,
        sync_to_thread=True,
        responses=error_responses(503),
        opt={"error_title": "Failed to disable freeze mode"},
    )
    def disable(self, engine: EngineDep) -> FreezeStatus:
        """Disables freeze mode; stores proceed normally."""
        engine.freeze(False)
        return FreezeStatus(
            status="success", freeze=False, message="Freeze mode disabled successfully"
        )

    @get(
        "/status",
        summary="Freeze Status",
        sync_to_thread=True,
        responses=error_responses(503),
        opt={"error_title": "Failed to get freeze status"},
    )
    def status(self, engine: EngineDep) -> FreezeStatus:
        """Whether freeze mode is on."""
        frozen = bool(engine.is_frozen)
        state = "enabled" if frozen else "disabled"
        return FreezeStatus(status="success", freeze=frozen, message=f"Freeze mode is {state}")
