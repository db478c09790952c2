"""The engine's runtime switches and tier management: freeze, hot cache, bypass, slot logging.

The admin API flips these while vLLM stores and retrieves; each takes effect for the next call.
:class:`EngineSwitches` is a base of :class:`~lmcache_native.engine.CacheEngine`.
"""

from __future__ import annotations

import logging
import threading

from lmcache_native.storage import StorageBackend, StorageManager

logger = logging.getLogger(__name__)


class EngineSwitches:
    """Freeze, hot cache, bypass, slot logging, clear and flush over the engine's tiers."""

    _manager: StorageManager
    _lock: threading.RLock
    _record_slot: bool

    # -- tiers ---------------------------------------------------------------------------------

    def all_backends(self) -> list[str]:
        """All tier names, in tier order."""
        return self._manager.backend_names()

    def backend(self, name: str) -> StorageBackend:
        """The tier called ``name``.

        Raises:
            UnknownBackendError: no such tier.
        """
        return self._manager.backend(name)

    def store_tier(self) -> StorageBackend | None:
        """The first tier a store writes, or ``None`` when no tier would take a chunk.

        Bypassed tiers are skipped, and so is the CPU tier while its hot cache is off.
        """
        manager = self._manager
        for tier in manager.backends:
            if manager.is_bypassed(tier.name):
                continue
            if tier is manager.cpu and not manager.cpu.hot_cache_enabled:
                continue
            return tier
        return None

    def clear(self, locations: list[str] | None = None) -> dict[str, int]:
        """Removes cached chunks from the named tiers (all when ``None``).

        Returns:
            Tier name -> chunks removed.

        Raises:
            UnknownBackendError: a name is not one of this engine's tiers (nothing cleared).
        """
        return self._manager.clear(locations)

    def flush(self, timeout: float | None = None) -> bool:
        """Waits for queued disk/remote writes; ``False`` on timeout."""
        return self._manager.flush(timeout)

    # -- switches ------------------------------------------------------------------------------

    def freeze(self, enabled: bool) -> None:
        """Freeze on: stores are skipped; lookups and retrieves use the CPU tier only."""
        self._manager.set_frozen(enabled)
        logger.info("CacheEngine: freeze %s", "enabled" if enabled else "disabled")

    @property
    def is_frozen(self) -> bool:
        """Whether freeze mode is on."""
        return self._manager.frozen

    def set_hot_cache(self, enabled: bool) -> None:
        """Hot cache off clears the CPU tier, which then keeps nothing new; on restores it."""
        cpu = self._manager.cpu
        if cpu is None:
            logger.warning("CacheEngine: no LocalCPUBackend; hot cache switch ignored")
            return
        removed = cpu.set_hot_cache(enabled)
        logger.info(
            "CacheEngine: hot cache %s%s",
            "enabled" if enabled else "disabled",
            "" if enabled else f" ({removed} chunks cleared)",
        )

    @property
    def hot_cache_enabled(self) -> bool:
        """Whether the CPU tier keeps chunks (``False`` when there is no CPU tier)."""
        cpu = self._manager.cpu
        return cpu is not None and cpu.hot_cache_enabled

    def bypass_add(self, name: str) -> bool:
        """Bypasses tier ``name``; returns whether it already was (raises UnknownBackendError)."""
        return self._manager.bypass_add(name)

    def bypass_remove(self, name: str) -> bool:
        """Restores tier ``name``; returns whether it was bypassed (raises UnknownBackendError)."""
        return self._manager.bypass_remove(name)

    def bypassed_backends(self) -> list[str]:
        """Bypassed tier names, in tier order."""
        return self._manager.bypassed()

    def set_record_slot(self, enabled: bool) -> None:
        """While on, store and retrieve log their compressed slot mapping."""
        with self._lock:
            self._record_slot = bool(enabled)

    @property
    def record_slot_enabled(self) -> bool:
        """Whether slot logging is on."""
        return self._record_slot
