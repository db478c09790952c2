"""CacheEngine's batched copies: one native gather per store and one scatter per retrieve.

The results are the same as one chunk at a time, also when the pool cannot hold the whole
request, when the chunks to copy are not adjacent, and when the copy fails (no buffer reference
leaks).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lmcache_native import ops
from lmcache_native.engine import CacheEngine

from tests.engine.conftest import CHUNK_SIZE, MakeEngine, random_cache, read_rows, same_bytes

GB = 1024**3
TOKENS = list(range(7000, 7000 + 8 * CHUNK_SIZE))  # 8 chunks


def chunk_bytes(e: CacheEngine) -> int:
    return int(e.metadata_dict()["chunk_bytes"])


def cpu_refcounts(e: CacheEngine) -> list[int]:
    """Reference counts of the CPU tier's buffers, minus the one this probe takes."""
    cpu = e.storage.cpu
    assert cpu is not None
    out = []
    stored = cpu.keys()  # a list copy (the tier is not a dict)
    for key in stored:
        buf = cpu.get(key)
        assert buf is not None
        out.append(buf.refcount - 1)
        buf.unref()
    return out


def shuffled_slots(n: int, seed: int, base: int = 0) -> torch.Tensor:
    """``n`` distinct slots from ``[base, base + n)`` in a random order."""
    g = torch.Generator().manual_seed(seed)
    return base + torch.randperm(n, generator=g)


def test_one_native_call_per_store_and_retrieve(make_engine: MakeEngine) -> None:
    caches = random_cache(41)
    e = make_engine(caches)
    src = shuffled_slots(len(TOKENS), 1)
    expected = read_rows(caches, src)
    assert e.store(TOKENS, src).num_stored_tokens == len(TOKENS)
    dst = shuffled_slots(len(TOKENS), 2, base=256)
    assert e.retrieve(TOKENS, dst).num_retrieved == len(TOKENS)
    assert same_bytes(read_rows(caches, dst), expected)
    m = e.metrics
    assert m.value("lmcache_copy_seconds_count", {"direction": "gather"}) == 1
    assert m.value("lmcache_copy_seconds_count", {"direction": "scatter"}) == 1
    assert m.value("lmcache_copy_bytes_total", {"direction": "gather"}) == 8 * chunk_bytes(e)
    assert m.value("lmcache_copy_bytes_total", {"direction": "scatter"}) == 8 * chunk_bytes(e)
    assert m.value("lmcache_stored_bytes_total") == 8 * chunk_bytes(e)
    assert m.value("lmcache_hit_chunks_total", {"tier": "LocalCPUBackend"}) == 8
    assert m.value("lmcache_retrieved_bytes_total", {"tier": "LocalCPUBackend"}) == 8 * chunk_bytes(
        e
    )
    assert cpu_refcounts(e) == [1] * 8  # only the tier's own reference is left


def test_store_larger_than_the_pool_keeps_going_like_one_chunk_at_a_time(
    make_engine: MakeEngine,
) -> None:
    """A pool of 3 chunks and a request of 8: every chunk is copied and stored.

    Older ones are evicted to make room; the tier ends with the last 3, and their bytes are right.
    """
    caches = random_cache(42)
    probe = make_engine(caches)
    size = chunk_bytes(probe)
    e = make_engine(caches, max_local_cpu_size=3 * size / GB)
    assert e.pool.capacity_bytes == 3 * size
    src = shuffled_slots(len(TOKENS), 3)
    r = e.store(TOKENS, src)
    assert (r.num_stored_tokens, r.num_skipped_chunks, r.reason) == (len(TOKENS), 0, None)
    keys = e.chunk_keys(TOKENS)
    cpu = e.storage.cpu
    assert cpu is not None
    assert sorted(cpu.keys()) == sorted(keys[5:])
    for i in range(5, 8):
        buf = cpu.get(keys[i])
        assert buf is not None
        try:
            want = read_rows(caches, src[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE])
            assert same_bytes(buf.tensor, want)
        finally:
            buf.unref()
    assert e.pool.used_bytes == 3 * size
    assert cpu_refcounts(e) == [1, 1, 1]


def test_retrieve_from_disk_through_a_small_pool_loads_everything(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    """Disk tier only; after the store the pool shrinks to 3 chunks.

    Each chunk read from disk needs a pooled buffer, so the batch is scattered and released
    whenever the pool runs dry; all 8 chunks still load, bit for bit.
    """
    caches = random_cache(43)
    e = make_engine(caches, local_cpu=False, local_disk=str(tmp_path / "disk"))
    src = shuffled_slots(len(TOKENS), 4)
    expected = read_rows(caches, src)
    assert e.store(TOKENS, src).num_stored_tokens == len(TOKENS)
    assert e.flush(timeout=30)
    e.config.update({"max_local_cpu_size": 3 * chunk_bytes(e) / GB})
    assert e.pool.capacity_bytes == 3 * chunk_bytes(e)
    dst = shuffled_slots(len(TOKENS), 5, base=256)
    rr = e.retrieve(TOKENS, dst)
    assert rr.num_retrieved == len(TOKENS)
    assert same_bytes(read_rows(caches, dst), expected)
    assert e.metrics.value("lmcache_hit_chunks_total", {"tier": "LocalDiskBackend"}) == 8
    assert e.pool.used_bytes == 0


def test_store_of_chunks_that_are_not_adjacent(make_engine: MakeEngine) -> None:
    """Chunks 1 and 3 are still stored, 0 and 2 were removed.

    The store copies 0 and 2 in one call (their slots concatenated); a retrieve restores all four.
    """
    caches = random_cache(44)
    e = make_engine(caches)
    tokens = TOKENS[: 4 * CHUNK_SIZE]
    src = shuffled_slots(len(tokens), 6)
    expected = read_rows(caches, src)
    assert e.store(tokens, src).num_stored_tokens == len(tokens)
    keys = e.chunk_keys(tokens)
    for i in (0, 2):
        assert e.storage.remove(keys[i]) == 1
    gathered = e.metrics.value("lmcache_copy_bytes_total", {"direction": "gather"})
    r = e.store(tokens, src)
    assert (r.num_stored_tokens, r.num_skipped_chunks, r.reason) == (2 * CHUNK_SIZE, 2, None)
    assert e.metrics.value("lmcache_copy_seconds_count", {"direction": "gather"}) == 2
    assert e.metrics.value("lmcache_copy_bytes_total", {"direction": "gather"}) == (
        gathered + 2 * chunk_bytes(e)
    )
    dst = shuffled_slots(len(tokens), 7, base=256)
    assert e.retrieve(tokens, dst).num_retrieved == len(tokens)
    assert same_bytes(read_rows(caches, dst), expected)


def test_retrieve_around_an_all_padding_chunk(make_engine: MakeEngine) -> None:
    """Chunk 1's slots are all -1 (vLLM already holds it).

    Chunks 0, 2 and 3 are scattered in one call with their slots concatenated; nothing else in
    the cache changes.
    """
    caches = random_cache(45)
    e = make_engine(caches)
    tokens = TOKENS[: 4 * CHUNK_SIZE]
    src = shuffled_slots(len(tokens), 8)
    assert e.store(tokens, src).num_stored_tokens == len(tokens)
    rows = read_rows(caches, src)
    dst = shuffled_slots(len(tokens), 9, base=256)
    dst[CHUNK_SIZE : 2 * CHUNK_SIZE] = -1
    before = [c.clone() for c in caches.values()]
    expected = [c.clone() for c in before]
    keep = dst != -1
    ops.paged_kv_scatter(rows[:, :, keep].contiguous(), expected, dst[keep], "flash_attn")
    rr = e.retrieve(tokens, dst)
    assert rr.num_retrieved == len(tokens)
    assert e.metrics.value("lmcache_hit_chunks_total", {"tier": "LocalCPUBackend"}) == 3
    for got, want in zip(caches.values(), expected, strict=True):
        assert same_bytes(got, want)


@pytest.mark.parametrize("op", ["store", "retrieve"])
def test_failed_copy_releases_every_buffer(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch, op: str
) -> None:
    caches = random_cache(46)
    e = make_engine(caches)
    src = torch.arange(len(TOKENS))
    if op == "retrieve":
        assert e.store(TOKENS, src).num_stored_tokens == len(TOKENS)
    used = e.pool.used_bytes

    def boom(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("copy failed")

    name = "paged_kv_gather_chunks" if op == "store" else "paged_kv_scatter_chunks"
    monkeypatch.setattr(ops, name, boom)
    with pytest.raises(RuntimeError, match="copy failed"):
        getattr(e, op)(TOKENS, src)
    assert e.pool.used_bytes == used
    assert cpu_refcounts(e) == [1] * (8 if op == "retrieve" else 0)
    monkeypatch.undo()
    # The engine still works afterwards.
    assert e.store(TOKENS, src).num_stored_tokens == (len(TOKENS) if op == "store" else 0)
    assert e.retrieve(TOKENS, torch.arange(256, 256 + len(TOKENS))).num_retrieved == len(TOKENS)
