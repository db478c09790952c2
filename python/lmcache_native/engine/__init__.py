"""The KV-cache engine: chunk keys, chunk buffers, store/retrieve/lookup over storage tiers."""

from __future__ import annotations

from lmcache_native.engine.cache_engine import CacheEngine
from lmcache_native.engine.keys import CacheKey, ChunkHasher, ChunkSpan
from lmcache_native.engine.memory import ChunkBuffer, ChunkBufferPool
from lmcache_native.engine.metadata import EngineMetadata, RetrieveResult, StoreResult

__all__ = [
    "CacheEngine",
    "CacheKey",
    "ChunkBuffer",
    "ChunkBufferPool",
    "ChunkHasher",
    "ChunkSpan",
    "EngineMetadata",
    "RetrieveResult",
    "StoreResult",
]
