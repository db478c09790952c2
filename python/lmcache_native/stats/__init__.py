"""Engine observability: chunk statistics (Bloom-filter unique counting) and Prometheus metrics."""

from __future__ import annotations

from lmcache_native.stats.chunk_statistics import ChunkStatistics
from lmcache_native.stats.metrics import EngineMetrics

__all__ = ["ChunkStatistics", "EngineMetrics"]
