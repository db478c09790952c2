"""Hot Cache: ``PUT /hot_cache/enable``, ``PUT /hot_cache/disable``, ``GET /hot_cache/status``."""

from __future__ import annotations

from litestar import Controller, get, put
from lmcache_native.api.deps import EngineDep
from lmcache_native.api.errors import error_responses
from lmcache_native.api.schemas import HotCacheStatus


class HotCacheController(Controller):
    """The LocalCPUBackend hot cache; disabling it clears the CPU tier and keeps nothing new."""

    path = "/hot_cache"
    tags = ["hot-cache"]

    @put(
        "/enable",
        summary="Enable Hot Cache",
        status_code=200,
        sync_to_thread=True,
        responses=error_responses(503),
        opt={"error_title": "Failed to enable hot cache"},
    )
    def enable(self, engine: EngineDep) -> HotCacheStatus:
        """Enables the hot cache."""
        engine.set_hot_cache(True)
        return HotCacheStatus(
            status="success", hot_cache=True, message="Hot cache enabled successfully"
        )

    @put(
        "/disable",
        summary="Disable Hot Cache",
        status_code=200,
        sync_to_thread=True,
        responses=error_responses(503),
        opt={"error_title": "Failed to disable hot cache"},
    )
    def disable(self, engine: EngineDep) -> HotCacheStatus:
        """Disables the hot cache; its entries are cleared."""
        engine.set_hot_cache(False)
        return HotCacheStatus(
            status="success", hot_cache=False, message="Hot cache disabled successfully"
        )

    @get(
        "/status",
        summary="Hot Cache Status",
        sync_to_thread=True,
        responses=error_responses(503),
        opt={"error_title": "Failed to get hot cache status"},
    )
    def status(self, engine: EngineDep) -> HotCacheStatus:
        """Whether the hot cache is on."""
        on = bool(engine.hot_cache_enabled)
        state = "enabled" if on else "disabled"
        return HotCacheStatus(status="success", hot_cache=on, message=f"Hot cache is {state}")
