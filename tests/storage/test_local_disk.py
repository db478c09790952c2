"""LocalDiskBackend: restart rebuilds the index, corruption is a miss, capacity eviction."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from lmcache_native.engine.memory import ChunkBufferPool
from lmcache_native.storage import LocalDiskBackend
from lmcache_native.storage.serde import chunk_filename

from tests.storage.conftest import (
    CHUNK_SHAPE,
    MakeChunk,
    key_of,
    put_chunks,
    random_bits,
    same_bytes,
)


@pytest.fixture
def three_on_disk(tmp_path: Path, pool: ChunkBufferPool, make_chunk: MakeChunk) -> LocalDiskBackend:
    """A disk tier in ``tmp_path/disk`` holding chunks 0, 1 and 2."""
    tier = LocalDiskBackend(tmp_path / "disk", 1 << 20, pool.allocate)
    put_chunks(tier, make_chunk, 0, 1, 2)
    return tier


def test_index_survives_restart(three_on_disk: LocalDiskBackend, pool: ChunkBufferPool) -> None:
    d = three_on_disk.path
    three_on_disk.close()
    again = LocalDiskBackend(d, 1 << 20, pool.allocate)
    assert sorted(again.keys()) == sorted(key_of(i) for i in range(3))
    assert again.stats()["used_bytes"] == sum(p.stat().st_size for p in d.iterdir())
    for i in range(3):
        got = again.get(key_of(i))
        assert got is not None
        assert same_bytes(got.tensor, random_bits(CHUNK_SHAPE, torch.bfloat16, i))
        got.unref()


def test_restart_drops_temp_files_and_bad_files(
    three_on_disk: LocalDiskBackend, pool: ChunkBufferPool
) -> None:
    d = three_on_disk.path
    # a write interrupted by a crash, a truncated chunk, a chunk copied under another key's name,
    # and an unrelated file that is not ours
    (d / f".{chunk_filename(key_of(7))}.tmp.123.abcd").write_bytes(b"partial")
    f1 = d / chunk_filename(key_of(1))
    f1.write_bytes(f1.read_bytes()[:-10])
    shutil.copy(d / chunk_filename(key_of(0)), d / chunk_filename(key_of(5)))
    (d / "README.txt").write_text("not a chunk")
    again = LocalDiskBackend(d, 1 << 20, pool.allocate)
    assert sorted(again.keys()) == sorted([key_of(0), key_of(2)])
    assert again.stats()["checksum_failures"] == 2
    names = sorted(p.name for p in d.iterdir())
    assert names == sorted([chunk_filename(key_of(0)), chunk_filename(key_of(2)), "README.txt"])


def test_flipped_byte_on_disk_is_a_miss_and_a_counter(
    tmp_path: Path, pool: ChunkBufferPool, make_chunk: MakeChunk
) -> None:
    tier = LocalDiskBackend(tmp_path, 1 << 20, pool.allocate)
    put_chunks(tier, make_chunk, 3)
    path = tmp_path / chunk_filename(key_of(3))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    used_before = pool.used_bytes
    assert tier.get(key_of(3)) is None
    st = tier.stats()
    assert st["checksum_failures"] == 1
    assert st["misses"] == 1
    assert st["hits"] == 0
    assert not path.exists()
    assert not tier.contains(key_of(3))
    assert st["used_bytes"] == 0
    assert pool.used_bytes == used_before  # the rejected buffer went back


def test_file_deleted_behind_the_index_is_a_miss(
    tmp_path: Path, pool: ChunkBufferPool, make_chunk: MakeChunk
) -> None:
    tier = LocalDiskBackend(tmp_path, 1 << 20, pool.allocate)
    put_chunks(tier, make_chunk, 4)
    os.unlink(tmp_path / chunk_filename(key_of(4)))
    assert tier.get(key_of(4)) is None
    assert not tier.contains(key_of(4))
    assert tier.stats()["checksum_failures"] == 0


def test_capacity_eviction_lru(
    tmp_path: Path, pool: ChunkBufferPool, make_chunk: MakeChunk
) -> None:
    probe = LocalDiskBackend(tmp_path / "probe", 1 << 20, pool.allocate)
    put_chunks(probe, make_chunk, 0)
    size = probe.stats()["used_bytes"]
    tier = LocalDiskBackend(tmp_path / "d", 3 * size, pool.allocate)
    put_chunks(tier, make_chunk, 0, 1, 2)
    got = tier.get(key_of(0))
    assert got is not None
    got.unref()
    put_chunks(tier, make_chunk, 3)
    assert sorted(tier.keys()) == sorted([key_of(0), key_of(2), key_of(3)])
    assert len(list((tmp_path / "d").iterdir())) == 3
    st = tier.stats()
    assert st["evictions"] == 1
    assert st["used_bytes"] == 3 * size
    assert tier.set_capacity(size) == 2
    assert tier.keys() == [key_of(3)]
    assert len(list((tmp_path / "d").iterdir())) == 1


def test_restart_over_capacity_evicts_oldest(
    three_on_disk: LocalDiskBackend, pool: ChunkBufferPool
) -> None:
    d = three_on_disk.path
    size = three_on_disk.stats()["used_bytes"] // 3
    for age, i in enumerate([2, 0, 1]):  # 2 oldest, then 0, then 1
        os.utime(d / chunk_filename(key_of(i)), (1_000_000 + age, 1_000_000 + age))
    again = LocalDiskBackend(d, 2 * size, pool.allocate)
    assert sorted(again.keys()) == sorted([key_of(0), key_of(1)])


def test_write_failure_is_counted_not_raised(
    tmp_path: Path, pool: ChunkBufferPool, make_chunk: MakeChunk
) -> None:
    d = tmp_path / "disk"
    tier = LocalDiskBackend(d, 1 << 20, pool.allocate)
    shutil.rmtree(d)  # the directory vanishes under the tier
    b = make_chunk(0)
    assert tier.put(key_of(0), b) is False
    b.unref()
    st = tier.stats()
    assert st["errors"] == 1
    assert st["used_bytes"] == 0
