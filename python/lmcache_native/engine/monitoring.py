"""The engine's background threads and storage gauges, as the health checks and metrics see them.

:func:`start_background_threads` registers the storage writer (a probe of the manager's thread)
and starts the chunk statistics' auto-exit check; :func:`storage_gauges` is the metrics'
callback for the pool and write-queue gauges.
"""

from __future__ import annotations

from collections.abc import Callable

from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine.memory import ChunkBufferPool
from lmcache_native.stats.chunk_statistics import ChunkStatistics
from lmcache_native.stats.periodic import (
    PeriodicThread,
    PeriodicThreadRegistry,
    RunStats,
    ThreadLevel,
)
from lmcache_native.storage import StorageManager

Gauges = dict[str, tuple[float, str, bool]]


def start_background_threads(
    manager: StorageManager, statistics: ChunkStatistics, config: LMCacheEngineConfig
) -> tuple[PeriodicThreadRegistry, PeriodicThread | None]:
    """Registers the storage writer; starts the chunk statistics' auto-exit check.

    Returns:
        The registry, and the auto-exit thread (``None`` without chunk statistics), which the
        caller stops on close.
    """
    registry = PeriodicThreadRegistry()

    def writer_runs() -> RunStats:
        done, failed, last = manager.writer_stats()
        return RunStats(
            total_runs=done,
            failed_runs=failed,
            last_run_time=last,
            message=f"{manager.pending_writes()} writes queued",
        )

    if manager.writer_thread is not None:
        registry.register_probe(
            "lmcache-storage-writer",
            ThreadLevel.HIGH,
            lambda: manager.writer_thread,
            writer_runs,
            stopped=lambda: manager.closed,
        )
    if not statistics.available:
        return registry, None

    def check_auto_exit() -> str:
        return "collecting" if statistics.is_collecting else "not collecting"

    thread = PeriodicThread(
        "chunk-statistics-auto-exit",
        float(config.get("chunk_statistics_auto_exit_check_secs")),
        check_auto_exit,
        ThreadLevel.LOW,
    )
    registry.register(thread)
    thread.start()
    return registry, thread


def storage_gauges(pool: ChunkBufferPool, manager: StorageManager) -> Callable[[], Gauges]:
    """The pool and write-queue gauges: name -> (value, help, is a counter)."""

    def gauges() -> Gauges:
        ps = pool.stats()
        return {
            "pool_used_bytes": (ps["used_bytes"], "Bytes of live chunk buffers", False),
            "pool_capacity_bytes": (ps["capacity_bytes"], "Chunk-buffer pool budget", False),
            "pool_cached_bytes": (ps["cached_bytes"], "Freed buffers kept for reuse", False),
            "write_queue_pending": (
                manager.pending_writes(),
                "Disk/remote writes queued",
                False,
            ),
            "write_queue_dropped": (
                manager.dropped_writes,
                "Disk/remote writes dropped because the queue was full",
                True,
            ),
        }

    return gauges
