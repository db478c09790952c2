"""One store repairs a prefix whose lower-tier copies are corrupt or missing.

A store skips a chunk only when the hot tier (the CPU tier) holds it. A chunk that only the disk
tier lists is taken by the CPU tier again and its disk copy rewritten: the store happens because
the chunk was not loaded from there, so the listed copy may be corrupt or gone.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lmcache_native.storage.serde import chunk_filename, parse_header, read_chunk_file

from tests.engine.conftest import MakeEngine, random_cache, read_rows, same_bytes

TOKENS = list(range(5000, 5064))  # 4 chunks of 16


def _flip_payload_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    header = parse_header(bytes(data))
    data[header.header_len + 5] ^= 0x5A
    path.write_bytes(bytes(data))


def test_one_store_repairs_a_prefix_corrupt_on_disk(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    caches = random_cache(21)
    disk = tmp_path / "disk"
    e = make_engine(caches, local_disk=str(disk))
    src = torch.arange(64)
    assert e.store(TOKENS, src).num_stored_tokens == 64
    assert e.flush(timeout=30)
    keys = e.chunk_keys(TOKENS)
    paths = [disk / chunk_filename(k) for k in keys]
    for p in paths:
        _flip_payload_byte(p)
    e.clear(["LocalCPUBackend"])
    dst = torch.arange(128, 192)
    assert e.retrieve(TOKENS, dst).num_retrieved == 0  # chunk 0 fails its checksum: a miss
    assert not paths[0].exists()
    # The reads ahead of chunk 0 checked the later chunks too: damaged, deleted, not loaded...
    assert e.storage.backend("LocalDiskBackend").batched_contains(keys) == [False] * 4
    assert not any(p.exists() for p in paths)
    assert e.storage.backend("LocalCPUBackend").batched_contains(keys) == [False] * 4
    # ...and one store takes all four again: the CPU tier holds them, the disk copies are new.
    result = e.store(TOKENS, src)
    assert result.num_stored_tokens == 64
    assert result.num_skipped_chunks == 0
    assert e.flush(timeout=30)
    for k, p in zip(keys, paths, strict=True):
        buf, header = read_chunk_file(p, k, e.storage.allocate)  # header and checksum checked
        assert header.key == k
        assert buf is not None
        buf.unref()
    e.clear(["LocalCPUBackend"])
    rr = e.retrieve(TOKENS, dst)
    assert rr.num_retrieved == 64  # all 4 chunks load from the disk tier
    assert same_bytes(read_rows(caches, dst), read_rows(caches, src))
    assert e.metrics.value("lmcache_hit_chunks_total", {"tier": "LocalDiskBackend"}) == 4


def test_deleted_disk_files_are_written_again(make_engine: MakeEngine, tmp_path: Path) -> None:
    caches = random_cache(22)
    disk = tmp_path / "disk"
    e = make_engine(caches, local_disk=str(disk))
    e.store(TOKENS, torch.arange(64))
    assert e.flush(timeout=30)
    paths = [disk / chunk_filename(k) for k in e.chunk_keys(TOKENS)]
    for p in paths[1:]:
        p.unlink()
    e.clear(["LocalCPUBackend"])
    assert e.store(TOKENS, torch.arange(64)).num_stored_tokens == 64
    assert e.flush(timeout=30)
    assert all(p.is_file() for p in paths)
    e.clear(["LocalCPUBackend"])
    assert e.retrieve(TOKENS, torch.arange(200, 264)).num_retrieved == 64


def test_chunks_the_cpu_tier_holds_are_still_skipped(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    e = make_engine(random_cache(23), local_disk=str(tmp_path / "disk"))
    assert e.store(TOKENS, torch.arange(64)).num_stored_tokens == 64
    again = e.store(TOKENS, torch.arange(64))
    assert again.num_stored_tokens == 0
    assert again.num_skipped_chunks == 4
    assert again.reason == "already stored"
    # Without a CPU tier the disk tier is the hot tier: what it lists is skipped.
    d = make_engine(random_cache(24), local_cpu=False, local_disk=str(tmp_path / "disk2"))
    assert d.store(TOKENS, torch.arange(64)).num_stored_tokens == 64
    assert d.flush(timeout=30)
    assert d.store(TOKENS, torch.arange(64)).num_skipped_chunks == 4


def test_without_a_cpu_tier_the_read_failure_marks_the_rest_of_the_prefix(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    caches = random_cache(25)
    disk = tmp_path / "disk"
    e = make_engine(caches, local_cpu=False, local_disk=str(disk))
    src = torch.arange(64)
    e.store(TOKENS, src)
    assert e.flush(timeout=30)
    paths = [disk / chunk_filename(k) for k in e.chunk_keys(TOKENS)]
    for p in paths:
        _flip_payload_byte(p)
    dst = torch.arange(128, 192)
    assert e.retrieve(TOKENS, dst).num_retrieved == 0
    # Chunk 0 was deleted; chunks 1-3 are still listed, but marked: the store rewrites them.
    result = e.store(TOKENS, src)
    assert result.num_stored_tokens == 64
    assert result.num_skipped_chunks == 0
    assert e.flush(timeout=30)
    assert e.retrieve(TOKENS, dst).num_retrieved == 64
    assert same_bytes(read_rows(caches, dst), read_rows(caches, src))
    # Repaired chunks are no longer marked: the next store skips all of them.
    assert e.store(TOKENS, src).num_skipped_chunks == 4
