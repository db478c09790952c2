"""The tier factory: the storage tiers a configuration names, in lookup order.

``local_cpu`` gives the CPU tier, ``local_disk`` the disk tier (one directory per worker when
several workers share the path), ``remote_url`` the remote tier. Each tier reads its own keys
here and reacts to runtime changes of them itself (:meth:`StorageBackend.apply_config`).
"""

from __future__ import annotations

from pathlib import Path

from lmcache_native.config import LMCacheEngineConfig, size_bytes
from lmcache_native.storage.base import Allocator, StorageBackend
from lmcache_native.storage.local_cpu import LocalCPUBackend
from lmcache_native.storage.local_disk import LocalDiskBackend
from lmcache_native.storage.remote import RemoteBackend


def build_tiers(
    config: LMCacheEngineConfig,
    allocator: Allocator,
    *,
    namespace: str,
    worker_id: int = 0,
    world_size: int = 1,
) -> list[StorageBackend]:
    """The tiers ``config`` names: CPU, disk, remote (those configured, in that order).

    Args:
        config: the engine configuration.
        allocator: where the disk and remote tiers copy the chunks they read.
        namespace: the key prefix this engine owns (the remote tier clears only these keys).
        worker_id: this worker's rank.
        world_size: the number of workers (above 1, each gets its own disk directory).

    Raises:
        ValueError: a malformed ``remote_url`` (the message never holds the password).
        OSError: the disk directory cannot be created.
    """
    policy = str(config.get("cache_policy"))
    tiers: list[StorageBackend] = []
    if config.get("local_cpu"):
        tiers.append(LocalCPUBackend(size_bytes(config.get("max_local_cpu_size")), policy))
    disk = config.get("local_disk")
    if disk:
        path = Path(disk)
        if world_size > 1:
            # NOTE: one directory per worker; a disk tier's index belongs to one engine.
            path = path / f"worker{worker_id}"
        tiers.append(
            LocalDiskBackend(
                path,
                size_bytes(config.get("max_local_disk_size")),
                allocator,
                policy,
                fsync=bool(config.get("local_disk_fsync")),
            )
        )
    url = config.get("remote_url")
    if url:
        tiers.append(
            RemoteBackend(
                url,
                allocator,
                timeout_secs=float(config.get("blocking_timeout_secs")),
                namespace=namespace,
                retry_interval_secs=float(config.get("remote_retry_interval_secs")),
                extra_config=config.get("extra_config"),
            )
        )
    return tiers
