"""Storage tiers (CPU, disk, remote), their common interface, the chunk format and the manager.

The storage layer never imports the engine; buffers and their allocator are protocols
(``storage.base``) that ``lmcache_native.engine.memory`` implements.
"""

from __future__ import annotations

from lmcache_native.storage.base import StorageBackend, TierStats
from lmcache_native.storage.local_cpu import LocalCPUBackend
from lmcache_native.storage.local_disk import LocalDiskBackend
from lmcache_native.storage.manager import StorageManager
from lmcache_native.storage.remote import RemoteBackend

__all__ = [
    "LocalCPUBackend",
    "LocalDiskBackend",
    "RemoteBackend",
    "StorageBackend",
    "StorageManager",
    "TierStats",
]
