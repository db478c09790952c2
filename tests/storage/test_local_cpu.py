"""LocalCPUBackend: capacity, eviction order per policy, referenced buffers, hot cache."""

from __future__ import annotations

import pytest
from lmcache_native.storage import LocalCPUBackend

from tests.storage.conftest import MakeChunk, key_of

CHUNK_BYTES = 2 * 2 * 16 * 32 * 2  # CHUNK_SHAPE in bf16


def fill(tier: LocalCPUBackend, make_chunk: MakeChunk, ids: list[int]) -> None:
    for i in ids:
        b = make_chunk(i)
        assert tier.put(key_of(i), b)
        b.unref()


def stored(tier: LocalCPUBackend, ids: range) -> list[int]:
    return [i for i in ids if tier.contains(key_of(i))]


def touch(tier: LocalCPUBackend, i: int) -> None:
    b = tier.get(key_of(i))
    assert b is not None
    b.unref()


def test_capacity_in_bytes_is_never_exceeded(make_chunk: MakeChunk) -> None:
    tier = LocalCPUBackend(3 * CHUNK_BYTES)
    fill(tier, make_chunk, list(range(10)))
    st = tier.stats()
    assert st["num_chunks"] == 3
    assert st["used_bytes"] == 3 * CHUNK_BYTES
    assert st["evictions"] == 7


def test_lru_evicts_least_recently_used(make_chunk: MakeChunk) -> None:
    tier = LocalCPUBackend(3 * CHUNK_BYTES, "LRU")
    fill(tier, make_chunk, [0, 1, 2])
    touch(tier, 0)  # order now 1, 2, 0
    fill(tier, make_chunk, [3])
    assert stored(tier, range(4)) == [0, 2, 3]
    fill(tier, make_chunk, [4])
    assert stored(tier, range(5)) == [0, 3, 4]


def test_fifo_ignores_reads(make_chunk: MakeChunk) -> None:
    tier = LocalCPUBackend(3 * CHUNK_BYTES, "FIFO")
    fill(tier, make_chunk, [0, 1, 2])
    touch(tier, 0)
    fill(tier, make_chunk, [3])
    assert stored(tier, range(4)) == [1, 2, 3]


def test_lfu_evicts_least_frequently_used_then_oldest(make_chunk: MakeChunk) -> None:
    tier = LocalCPUBackend(3 * CHUNK_BYTES, "LFU")
    fill(tier, make_chunk, [0, 1, 2])
    for _ in range(3):
        touch(tier, 0)
    touch(tier, 1)
    fill(tier, make_chunk, [3])  # 2 has freq 1 and is the only one -> evicted
    assert stored(tier, range(4)) == [0, 1, 3]
    fill(tier, make_chunk, [4])  # 3 (freq 1) goes before 1 (freq 2)
    assert stored(tier, range(5)) == [0, 1, 4]


def test_referenced_buffers_are_never_evicted(make_chunk: MakeChunk) -> None:
    tier = LocalCPUBackend(2 * CHUNK_BYTES)
    fill(tier, make_chunk, [0, 1])
    reader = tier.get(key_of(0))  # being read: refcount 2
    assert reader is not None
    fill(tier, make_chunk, [2])
    assert stored(tier, range(3)) == [0, 2]
    # Everything left is referenced: a put that needs room is refused, nothing is evicted.
    reader2 = tier.get(key_of(2))
    assert reader2 is not None
    b = make_chunk(3)
    assert tier.put(key_of(3), b) is False
    b.unref()
    assert stored(tier, range(4)) == [0, 2]
    assert tier.stats()["rejected_puts"] == 1
    reader.unref()
    reader2.unref()


def test_chunk_larger_than_capacity_is_refused(make_chunk: MakeChunk) -> None:
    tier = LocalCPUBackend(CHUNK_BYTES - 1)
    b = make_chunk(0)
    assert tier.put(key_of(0), b) is False
    b.unref()


def test_evicted_buffer_returns_to_the_pool(make_chunk: MakeChunk, pool) -> None:
    tier = LocalCPUBackend(CHUNK_BYTES)
    fill(tier, make_chunk, [0])
    assert pool.used_bytes == CHUNK_BYTES
    fill(tier, make_chunk, [1])
    assert pool.used_bytes == CHUNK_BYTES  # chunk 0 went back to the pool
    tier.clear()
    assert pool.used_bytes == 0


def test_hot_cache_off_clears_and_keeps_nothing_new(make_chunk: MakeChunk) -> None:
    tier = LocalCPUBackend(4 * CHUNK_BYTES)
    fill(tier, make_chunk, [0, 1])
    assert tier.set_hot_cache(False) == 2
    assert tier.keys() == []
    b = make_chunk(2)
    assert tier.put(key_of(2), b) is False
    assert tier.get(key_of(2)) is None
    tier.set_hot_cache(True)
    assert tier.put(key_of(2), b) is True
    b.unref()


@pytest.mark.parametrize("policy", ["LRU", "LFU", "FIFO"])
def test_set_capacity_evicts_down(make_chunk: MakeChunk, policy: str) -> None:
    tier = LocalCPUBackend(4 * CHUNK_BYTES, policy)
    fill(tier, make_chunk, [0, 1, 2, 3])
    assert tier.set_capacity(CHUNK_BYTES) == 3
    assert stored(tier, range(4)) == [3]
    assert tier.stats()["capacity_bytes"] == CHUNK_BYTES
