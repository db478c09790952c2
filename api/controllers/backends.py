"""LMCache's ``GET /backends``: the storage tiers with their size and health.

LMCache answers ``{tier name: class name}``; here each tier name maps to an object whose
``type`` is that class name, plus capacity, use, entries, health and the tier's counters.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, get
from lmcache_native.api.deps import EngineDep
from lmcache_native.api.schemas import BackendInfo

from ..routes import route


def _tier_healthy(tier: Any, stats: dict[str, int]) -> bool:
    """A tier is unhealthy while it is marked down (e.g. a remote server that did not answer)."""
    down = getattr(tier, "is_down", None)
    if isinstance(down, bool):
        return not down
    return not bool(stats.get("down", 0))


def backend_infos(engine: EngineDep) -> dict[str, BackendInfo]:
    """Each tier of ``engine``, in tier order, by name."""
    storage = engine.storage
    bypassed = set(storage.bypassed())
    out: dict[str, BackendInfo] = {}
    for tier in storage.backends:
        stats = tier.stats()
        capacity = int(stats.get("capacity_bytes", 0))
        used = int(stats.get("used_bytes", 0))
        healthy = _tier_healthy(tier, stats)
        out[tier.name] = BackendInfo(
            name=tier.name,
            type=type(tier).__name__,
            capacity_bytes=capacity,
            used_bytes=used,
            usage=(used / capacity) if capacity > 0 else 0.0,
            entries=int(stats.get("num_chunks", 0)),
            healthy=healthy,
            health="healthy" if healthy else "down",
            bypassed=tier.name in bypassed,
            stats={k: int(v) for k, v in stats.items()},
        )
    return out


class BackendsController(Controller):
    """LMCache's backend listing."""

    tags = ("backends",)

    @route(get, "/backends", "List Storage Backends", 503, error_title="Failed to list backends")
    def list_backends(self, engine: EngineDep) -> dict[str, BackendInfo]:
        """Every storage tier, in lookup order, by name.

        Each has its class (``type``, LMCache's value), capacity and bytes used (0 capacity:
        unbounded or unknown), entries, health, whether it is bypassed, and its counters.
        """
        return backend_infos(engine)
