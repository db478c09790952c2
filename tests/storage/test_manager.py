"""StorageManager: tier order, promotion, longest prefix, bypass, freeze, clear, writer queue."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from lmcache_native.engine.memory import ChunkBufferPool
from lmcache_native.errors import UnknownBackendError
from lmcache_native.storage import (
    LocalCPUBackend,
    LocalDiskBackend,
    RemoteBackend,
    StorageBackend,
    StorageManager,
)
from lmcache_native.storage.base import ChunkBufferLike

from tests.storage.conftest import CHUNK_SHAPE, MakeChunk, key_of, random_bits, same_bytes

CHUNK_BYTES = 2 * 2 * 16 * 32 * 2


@pytest.fixture
def tiers(tmp_path: Path, pool: ChunkBufferPool):
    cpu = LocalCPUBackend(8 * CHUNK_BYTES)
    disk = LocalDiskBackend(tmp_path / "disk", 1 << 20, pool.allocate)
    remote = RemoteBackend(f"fs://{tmp_path / 'fs'}", pool.allocate)
    return cpu, disk, remote


@pytest.fixture
def manager(tiers, pool: ChunkBufferPool):
    m = StorageManager(list(tiers), pool)
    yield m
    m.close()


def store(m: StorageManager, make_chunk: MakeChunk, i: int) -> list[str]:
    b = make_chunk(i)
    out = m.put(key_of(i), b)
    b.unref()
    return out


def test_put_writes_every_tier_and_get_stops_at_the_first(
    manager: StorageManager, tiers, make_chunk: MakeChunk
) -> None:
    assert store(manager, make_chunk, 1) == ["LocalCPUBackend", "LocalDiskBackend", "RemoteBackend"]
    assert manager.flush(timeout=10)
    assert all(t.contains(key_of(1)) for t in tiers)
    hit = manager.get(key_of(1))
    assert hit is not None
    assert hit[1] == "LocalCPUBackend"
    hit[0].unref()
    assert tiers[1].stats()["hits"] == 0
    assert tiers[2].stats()["hits"] == 0


def test_lower_tier_hit_is_promoted_into_cpu(
    manager: StorageManager, tiers, make_chunk: MakeChunk
) -> None:
    cpu, disk, remote = tiers
    b = make_chunk(2)
    remote.put(key_of(2), b)
    b.unref()
    hit = manager.get(key_of(2))
    assert hit is not None
    assert hit[1] == "RemoteBackend"
    assert same_bytes(hit[0].tensor, random_bits(CHUNK_SHAPE, torch.bfloat16, 2))
    hit[0].unref()
    assert cpu.contains(key_of(2))
    assert not disk.contains(key_of(2))
    again = manager.get(key_of(2))
    assert again is not None
    assert again[1] == "LocalCPUBackend"
    again[0].unref()


def test_lookup_prefix_spans_tiers(manager: StorageManager, tiers, make_chunk: MakeChunk) -> None:
    cpu, disk, remote = tiers
    for tier, i in ((cpu, 0), (disk, 1), (remote, 2), (cpu, 4)):
        b = make_chunk(i)
        tier.put(key_of(i), b)
        b.unref()
    keys = [key_of(i) for i in range(6)]
    assert manager.lookup_prefix(keys) == 3
    assert manager.lookup_prefix(keys[:2]) == 2
    assert manager.lookup_prefix([]) == 0
    assert manager.lookup_prefix([key_of(9), key_of(0)]) == 0


def test_bypass_skips_contains_put_get(
    manager: StorageManager, tiers, make_chunk: MakeChunk
) -> None:
    cpu, disk, _ = tiers
    assert manager.bypass_add("LocalCPUBackend") is False
    assert manager.bypass_add("LocalCPUBackend") is True
    assert manager.bypassed() == ["LocalCPUBackend"]
    assert store(manager, make_chunk, 3) == ["LocalDiskBackend", "RemoteBackend"]
    manager.flush()
    assert not cpu.contains(key_of(3))
    assert disk.contains(key_of(3))
    hit = manager.get(key_of(3))
    assert hit is not None
    assert hit[1] == "LocalDiskBackend"
    hit[0].unref()
    assert not cpu.contains(key_of(3))  # no promotion into a bypassed tier
    assert manager.bypass_add("LocalDiskBackend") is False
    b = make_chunk(4)
    cpu.put(key_of(4), b)  # only in a bypassed tier
    b.unref()
    assert manager.contains(key_of(4)) is False
    assert manager.get(key_of(4)) is None
    hit = manager.get(key_of(3))  # disk bypassed too: found in the remote tier
    assert hit is not None
    assert hit[1] == "RemoteBackend"
    hit[0].unref()
    assert manager.bypass_remove("LocalCPUBackend") is True
    assert manager.bypass_remove("LocalCPUBackend") is False
    assert manager.contains(key_of(4)) is True


def test_unknown_backend_lists_the_available_ones(manager: StorageManager) -> None:
    with pytest.raises(UnknownBackendError) as ei:
        manager.bypass_add("FooBackend")
    assert str(ei.value) == (
        "Backend 'FooBackend' not found. Available: "
        "['LocalCPUBackend', 'LocalDiskBackend', 'RemoteBackend']"
    )
    with pytest.raises(UnknownBackendError):
        manager.clear(["LocalCPUBackend", "FooBackend"])


def test_freeze_skips_stores_and_reads_cpu_only(
    manager: StorageManager, tiers, make_chunk: MakeChunk
) -> None:
    _cpu, disk, _ = tiers
    store(manager, make_chunk, 1)
    manager.flush()
    b = make_chunk(2)
    disk.put(key_of(2), b)
    b.unref()
    manager.set_frozen(True)
    assert store(manager, make_chunk, 3) == []
    manager.flush()
    assert not any(t.contains(key_of(3)) for t in tiers)
    assert manager.contains(key_of(2)) is False
    assert manager.get(key_of(2)) is None
    assert manager.lookup_prefix([key_of(1), key_of(2)]) == 1
    hit = manager.get(key_of(1))
    assert hit is not None
    assert hit[1] == "LocalCPUBackend"
    hit[0].unref()
    manager.set_frozen(False)
    assert manager.lookup_prefix([key_of(1), key_of(2)]) == 2


def test_clear_by_location(manager: StorageManager, tiers, make_chunk: MakeChunk) -> None:
    for i in range(3):
        store(manager, make_chunk, i)
    assert manager.clear(["LocalDiskBackend"]) == {"LocalDiskBackend": 3}
    assert tiers[0].contains(key_of(0))
    assert not tiers[1].contains(key_of(0))
    assert manager.clear() == {"LocalCPUBackend": 3, "LocalDiskBackend": 0, "RemoteBackend": 3}


def test_hot_cache_off_cpu_keeps_nothing_and_no_promotion(
    manager: StorageManager, tiers, make_chunk: MakeChunk
) -> None:
    cpu = tiers[0]
    store(manager, make_chunk, 1)
    manager.flush()
    cpu.set_hot_cache(False)
    assert cpu.keys() == []
    hit = manager.get(key_of(1))
    assert hit is not None
    assert hit[1] == "LocalDiskBackend"
    hit[0].unref()
    assert cpu.keys() == []
    assert "LocalCPUBackend" not in store(manager, make_chunk, 2)


def test_allocate_evicts_cpu_when_the_pool_is_full() -> None:
    pool = ChunkBufferPool(2 * CHUNK_BYTES)
    cpu = LocalCPUBackend(2 * CHUNK_BYTES)
    m = StorageManager([cpu], pool)
    for i in range(2):
        b = m.allocate(CHUNK_SHAPE, torch.bfloat16)
        assert b is not None
        m.put(key_of(i), b)
        b.unref()
    b = m.allocate(CHUNK_SHAPE, torch.bfloat16)  # evicts key 0 (LRU)
    assert b is not None
    assert cpu.keys() == [key_of(1)]
    reader = cpu.get(key_of(1))  # referenced: cannot be evicted
    assert m.allocate(CHUNK_SHAPE, torch.bfloat16) is None
    assert m.failed_allocations == 1
    reader.unref()
    b.unref()
    m.close()


class _BlockingTier(StorageBackend):
    name = "RemoteBackend"

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.keys_written: list[str] = []

    def contains(self, key: str) -> bool:
        return key in self.keys_written

    def get(self, key: str) -> ChunkBufferLike | None:  # noqa: ARG002 - the interface's
        return None

    def put(self, key: str, buf: ChunkBufferLike) -> bool:  # noqa: ARG002 - the interface's
        self.release.wait(10)
        self.keys_written.append(key)
        return True

    def remove(self, key: str) -> bool:  # noqa: ARG002 - the interface's
        return False

    def clear(self) -> int:
        return 0


def test_full_writer_queue_drops_instead_of_blocking(
    pool: ChunkBufferPool, make_chunk: MakeChunk
) -> None:
    slow = _BlockingTier()
    m = StorageManager([LocalCPUBackend(1 << 20), slow], pool, writer_queue_size=2)
    for i in range(6):
        store(m, make_chunk, i)  # returns at once although the tier is stuck
    assert m.dropped_writes >= 3
    slow.release.set()
    assert m.flush(timeout=10)
    assert len(slow.keys_written) == 6 - m.dropped_writes
    m.close()
    assert pool.used_bytes == 0  # every queued reference was dropped
