"""One contract, every tier: LocalCPUBackend, LocalDiskBackend, RemoteBackend (Redis, fs://)."""

from __future__ import annotations

import threading

import pytest
import torch
from lmcache_native.storage import StorageBackend

from tests.storage.conftest import CHUNK_SHAPE, MakeChunk, key_of, random_bits, same_bytes


def test_miss_is_none(tier: StorageBackend) -> None:
    assert tier.get(key_of(1)) is None
    assert tier.contains(key_of(1)) is False
    assert tier.stats()["misses"] == 1


def test_put_get_round_trip_is_bit_identical(tier: StorageBackend, make_chunk: MakeChunk) -> None:
    buf = make_chunk(7)
    expected = buf.tensor.clone()
    assert tier.put(key_of(7), buf) is True
    buf.unref()  # the tier keeps what it needs
    assert tier.contains(key_of(7))
    got = tier.get(key_of(7))
    assert got is not None
    assert same_bytes(got.tensor, expected)
    got.unref()
    st = tier.stats()
    assert st["hits"] == 1
    assert st["puts"] == 1
    assert st["put_bytes"] == expected.numel() * 2
    assert st["put_tokens"] == CHUNK_SHAPE[2]
    assert st["get_bytes"] == expected.numel() * 2
    assert st["get_tokens"] == CHUNK_SHAPE[2]


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.uint8]
)
def test_dtypes_and_short_tail_chunk(
    tier: StorageBackend, make_chunk: MakeChunk, dtype: torch.dtype
) -> None:
    shape = (2, 2, 5, 32)  # a 5-token tail chunk
    buf = make_chunk(3, shape=shape, dtype=dtype)
    expected = buf.tensor.clone()
    assert tier.put(key_of(3), buf)
    buf.unref()
    got = tier.get(key_of(3))
    assert got is not None
    assert got.tensor.dtype == dtype
    assert tuple(got.tensor.shape) == shape
    assert same_bytes(got.tensor, expected)
    got.unref()


def test_each_get_returns_a_reference_for_the_caller(
    tier: StorageBackend, make_chunk: MakeChunk
) -> None:
    buf = make_chunk(1)
    tier.put(key_of(1), buf)
    buf.unref()
    a = tier.get(key_of(1))
    b = tier.get(key_of(1))
    assert a is not None
    assert b is not None
    a.unref()
    # b stays valid after a is dropped
    assert same_bytes(b.tensor, random_bits(CHUNK_SHAPE, torch.bfloat16, 1))
    b.unref()


def test_put_existing_key_keeps_the_stored_chunk(
    tier: StorageBackend, make_chunk: MakeChunk
) -> None:
    first, second = make_chunk(1), make_chunk(2)
    assert tier.put(key_of(1), first)
    assert tier.put(key_of(1), first)
    got = tier.get(key_of(1))
    assert got is not None
    assert same_bytes(got.tensor, first.tensor)
    for b in (got, first, second):
        b.unref()


def test_remove(tier: StorageBackend, make_chunk: MakeChunk) -> None:
    buf = make_chunk(5)
    tier.put(key_of(5), buf)
    buf.unref()
    assert tier.remove(key_of(5)) is True
    assert tier.contains(key_of(5)) is False
    assert tier.get(key_of(5)) is None
    assert tier.remove(key_of(5)) is False


def test_clear_counts_and_empties(tier: StorageBackend, make_chunk: MakeChunk) -> None:
    for i in range(4):
        b = make_chunk(i)
        tier.put(key_of(i), b)
        b.unref()
    assert sorted(tier.keys()) == sorted(key_of(i) for i in range(4))
    assert tier.clear() == 4
    assert tier.keys() == []
    assert not any(tier.batched_contains([key_of(i) for i in range(4)]))
    assert tier.clear() == 0


def test_batched_variants(tier: StorageBackend, make_chunk: MakeChunk) -> None:
    bufs = [make_chunk(i) for i in range(3)]
    assert tier.batched_put([(key_of(i), b) for i, b in enumerate(bufs)]) == [True] * 3
    assert tier.batched_contains([key_of(0), key_of(9), key_of(2)]) == [True, False, True]
    got = tier.batched_get([key_of(2), key_of(9), key_of(0)])
    assert got[1] is None
    assert got[0] is not None
    assert same_bytes(got[0].tensor, bufs[2].tensor)
    assert got[2] is not None
    assert same_bytes(got[2].tensor, bufs[0].tensor)
    for b in [*bufs, got[0], got[2]]:
        b.unref()


@pytest.mark.usefixtures("pool")
def test_concurrent_put_get_are_byte_identical(tier: StorageBackend, make_chunk: MakeChunk) -> None:
    expected = {i: random_bits(CHUNK_SHAPE, torch.bfloat16, i) for i in range(8)}
    errors: list[str] = []

    def worker(offset: int) -> None:
        for r in range(12):
            i = (offset + r) % 8
            if r % 3 == 0:
                b = make_chunk(i)
                tier.put(key_of(i), b)
                b.unref()
            else:
                got = tier.get(key_of(i))
                if got is not None:
                    if not same_bytes(got.tensor, expected[i]):
                        errors.append(f"chunk {i} differs")
                    got.unref()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert tier.stats()["hits"] > 0


def test_stats_have_the_common_counters(tier: StorageBackend) -> None:
    st = tier.stats()
    for name in ("hits", "misses", "puts", "put_bytes", "evictions", "checksum_failures", "errors"):
        assert st[name] == 0
