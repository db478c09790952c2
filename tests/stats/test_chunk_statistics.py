"""ChunkStatistics: counts, reuse rate, start/stop/reset, auto-exit, bounded memory."""

from __future__ import annotations

import time

import pytest
import torch
from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine import CacheEngine, EngineMetadata
from lmcache_native.errors import StatisticsUnavailableError
from lmcache_native.stats import ChunkStatistics


def stats(**cfg: object) -> ChunkStatistics:
    return ChunkStatistics(
        LMCacheEngineConfig.from_defaults(enable_chunk_statistics=True, **cfg),
        expected_items=10_000,
    )


def test_unavailable_when_disabled() -> None:
    s = ChunkStatistics(LMCacheEngineConfig.from_defaults())
    assert s.available is False
    for call in (s.start, s.stop, s.reset, s.status):
        with pytest.raises(StatisticsUnavailableError, match="does not support statistics"):
            call()
    s.record(["aa"])  # silently ignored


def test_counts_only_while_collecting() -> None:
    s = stats()
    s.record(["01", "02"])
    assert s.status()["total_chunks"] == 0
    assert s.status()["is_collecting"] is False
    s.start()
    s.record(["01", "02", "03"])
    s.record(["01", "02", "04"])
    s.record([5])
    st = s.status()
    assert (st["requests"], st["total_chunks"], st["unique_chunks"], st["duplicate_chunks"]) == (
        3,
        7,
        5,
        2,
    )
    assert st["reuse_rate"] == pytest.approx(2 / 7)
    assert st["is_collecting"] is True
    assert st["auto_exit_enabled"] is False
    s.stop()
    s.record(["09"])
    st = s.status()
    assert st["is_collecting"] is False
    assert st["total_chunks"] == 7
    assert st["stop_reason"] == "stopped"
    s.reset()
    st = s.status()
    assert (st["requests"], st["total_chunks"], st["unique_chunks"]) == (0, 0, 0)
    s.start()
    s.record(["01"])  # forgotten by reset: unique again
    assert s.status()["unique_chunks"] == 1


def test_auto_start_and_auto_exit_on_target() -> None:
    s = stats(
        chunk_statistics_auto_start_statistics=True,
        chunk_statistics_auto_exit_target_unique_chunks=3,
    )
    assert s.is_collecting
    s.record(["a1", "a2"])
    assert s.is_collecting
    s.record(["a3", "a4"])
    st = s.status()
    assert st["is_collecting"] is False
    assert st["stop_reason"] == "auto_exit_target_unique_chunks"
    assert st["auto_exit_enabled"] is True
    assert st["auto_exit_target_unique_chunks"] == 3
    s.record(["a5"])
    assert s.status()["unique_chunks"] == 4


def test_auto_exit_on_timeout_read_live_from_config() -> None:
    cfg = LMCacheEngineConfig.from_defaults(enable_chunk_statistics=True)
    s = ChunkStatistics(cfg, expected_items=1000)
    s.start()
    s.record(["b1"])
    assert s.is_collecting
    cfg.update({"chunk_statistics_auto_exit_timeout_hours": 1e-7})  # 0.36 ms
    time.sleep(0.01)
    st = s.status()
    assert st["is_collecting"] is False
    assert st["stop_reason"] == "auto_exit_timeout"
    assert st["auto_exit_timeout_hours"] == 1e-7


def test_memory_is_bounded_by_the_bloom_filter() -> None:
    s = stats()
    s.start()
    size = s.status()["bloom_filter_bytes"]
    assert 0 < size < 64 * 1024
    for i in range(20):
        s.record([format(i * 1000 + j, "x") for j in range(1000)])
    st = s.status()
    assert st["bloom_filter_bytes"] == size
    assert st["total_chunks"] == 20_000
    # beyond its sizing the filter saturates: the count is a lower bound, memory stays put
    assert 10_000 <= st["unique_chunks"] <= 20_000


def test_engine_records_requests_on_store() -> None:
    cfg = LMCacheEngineConfig.from_defaults(
        enable_chunk_statistics=True, chunk_size=16, max_local_cpu_size=0.01
    )
    e = CacheEngine(cfg, EngineMetadata("m"))
    e.register_kv_caches({"l0": torch.zeros(2, 8, 16, 1, 16)}, "flash_attn")
    e.statistics.start()
    e.store(list(range(64)), torch.arange(64))
    e.store(list(range(48)) + [7] * 16, torch.arange(64))
    e.freeze(True)
    e.store(list(range(32)), torch.arange(32))  # frozen: not stored, still seen
    st = e.statistics.status()
    assert (st["requests"], st["total_chunks"], st["unique_chunks"]) == (3, 10, 5)
    e.close()
