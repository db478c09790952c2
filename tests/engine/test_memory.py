"""ChunkBufferPool: budget, reference counts, reuse, resize."""

from __future__ import annotations

import pytest
import torch
from lmcache_native.engine.memory import ChunkBufferPool

SHAPE = (2, 2, 16, 32)
NBYTES = 2 * 2 * 16 * 32 * 2


def test_budget_and_release() -> None:
    pool = ChunkBufferPool(2 * NBYTES)
    a = pool.allocate(SHAPE, torch.bfloat16)
    b = pool.allocate(SHAPE, torch.bfloat16)
    assert a is not None
    assert b is not None
    assert a.tensor.shape == SHAPE
    assert a.tensor.dtype == torch.bfloat16
    assert a.tensor.is_contiguous()
    assert a.num_tokens == 16
    assert a.nbytes == NBYTES
    assert pool.allocate(SHAPE, torch.bfloat16) is None
    assert pool.stats()["failed_allocations"] == 1
    a.unref()
    assert pool.used_bytes == NBYTES
    assert pool.cached_bytes == NBYTES
    c = pool.allocate(SHAPE, torch.float16)  # same size, other dtype: reused
    assert c is not None
    assert pool.stats()["reuses"] == 1
    b.unref()
    c.unref()
    assert pool.used_bytes == 0


def test_refcount_keeps_the_buffer_alive() -> None:
    pool = ChunkBufferPool(NBYTES)
    a = pool.allocate(SHAPE, torch.bfloat16)
    assert a is not None
    a.ref()
    assert a.refcount == 2
    a.unref()
    assert pool.used_bytes == NBYTES  # still referenced
    assert pool.allocate(SHAPE, torch.bfloat16) is None
    a.unref()
    assert a.refcount == 0
    assert pool.used_bytes == 0
    with pytest.raises(RuntimeError):
        a.unref()
    with pytest.raises(RuntimeError):
        a.ref()


def test_cached_buffers_make_room_for_other_sizes() -> None:
    pool = ChunkBufferPool(2 * NBYTES)
    a = pool.allocate(SHAPE, torch.bfloat16)
    b = pool.allocate(SHAPE, torch.bfloat16)
    a.unref()
    b.unref()
    assert pool.cached_bytes == 2 * NBYTES
    big = pool.allocate((2, 2, 32, 32), torch.bfloat16)  # needs both cached buffers dropped
    assert big is not None
    assert pool.cached_bytes == 0
    assert pool.used_bytes == 2 * NBYTES
    big.unref()


def test_set_capacity_trims_cache() -> None:
    pool = ChunkBufferPool(4 * NBYTES)
    bufs = [pool.allocate(SHAPE, torch.bfloat16) for _ in range(3)]
    for b in bufs:
        b.unref()
    assert pool.cached_bytes == 3 * NBYTES
    pool.set_capacity(NBYTES)
    assert pool.cached_bytes == NBYTES
    assert pool.capacity_bytes == NBYTES
    with pytest.raises(ValueError, match="capacity_bytes must be >= 0"):
        pool.set_capacity(-1)


def test_byte_view_aliases_the_tensor() -> None:
    pool = ChunkBufferPool(NBYTES)
    a = pool.allocate(SHAPE, torch.bfloat16)
    a.byte_view()[:] = 0
    a.byte_view()[:2] = [0x80, 0x3F]  # bf16 1.0, little-endian
    assert a.tensor.view(-1)[0].item() == 1.0
    a.unref()
