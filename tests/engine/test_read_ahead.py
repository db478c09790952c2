"""A retrieve reads its chunks below the CPU tier ahead, on the engine's reader threads.

The reads ahead must change nothing but timing: the same bytes land in the same slots, a chunk
read ahead but not loaded (the prefix broke earlier) gives its buffer back, a closed pool falls
back to reading inline, and a forked child starts its own threads.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import torch
from lmcache_native.engine.fetch import FetchPool, ReadAhead
from lmcache_native.storage.serde import chunk_filename

from tests.engine.conftest import MakeEngine, random_cache, read_rows, same_bytes

TOKENS = list(range(7000, 7064))  # 4 chunks of 16


def _disk_only(make_engine: MakeEngine, tmp_path: Path, seed: int) -> tuple[object, Path]:
    disk = tmp_path / "disk"
    e = make_engine(random_cache(seed), local_cpu=False, local_disk=str(disk))
    assert e.store(TOKENS, torch.arange(64)).num_stored_tokens == 64
    assert e.flush(timeout=30)
    return e, disk


def _spy_reader_threads(e: object) -> list[str]:
    """Records the thread of every disk-tier ``get`` from now on."""
    tier = e.storage.backend("LocalDiskBackend")  # type: ignore[attr-defined]
    names: list[str] = []
    real = tier.get

    def get(key: str) -> object:
        names.append(threading.current_thread().name)
        return real(key)

    tier.get = get
    return names


def test_disk_chunks_are_read_on_reader_threads_and_load_the_same_bytes(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    e, _ = _disk_only(make_engine, tmp_path, 41)
    threads = _spy_reader_threads(e)
    dst = torch.arange(128, 192)
    assert e.retrieve(TOKENS, dst).num_retrieved == 64
    caches = e.registered_kv().caches
    names = e.registered_kv().names
    cache = dict(zip(names, caches, strict=True))
    assert same_bytes(read_rows(cache, dst), read_rows(cache, torch.arange(64)))
    assert len(threads) == 4
    assert all(t.startswith("lmcn-fetch") for t in threads), threads


def test_a_chunk_read_ahead_but_not_loaded_gives_its_buffer_back(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    e, disk = _disk_only(make_engine, tmp_path, 42)
    (disk / chunk_filename(e.chunk_keys(TOKENS)[1])).unlink()  # the prefix breaks at chunk 1
    threads = _spy_reader_threads(e)
    assert e.retrieve(TOKENS, torch.arange(128, 192)).num_retrieved == 16
    assert len(threads) == 4  # chunks 2 and 3 were read ahead too...
    assert e.metrics.value("lmcache_pool_used_bytes") == 0  # ...and nothing is held after it


def test_one_chunk_below_the_cpu_tier_is_read_inline(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    e = make_engine(random_cache(43), local_disk=str(tmp_path / "disk"))
    assert e.store(TOKENS, torch.arange(64)).num_stored_tokens == 64
    assert e.flush(timeout=30)
    e.storage.backend("LocalCPUBackend").remove(e.chunk_keys(TOKENS)[3])
    threads = _spy_reader_threads(e)
    assert e.retrieve(TOKENS, torch.arange(128, 192)).num_retrieved == 64
    assert threads == [threading.current_thread().name]


def test_a_closed_pool_reads_inline(make_engine: MakeEngine, tmp_path: Path) -> None:
    e, _ = _disk_only(make_engine, tmp_path, 44)
    pool = FetchPool()
    pool.close()
    ahead = ReadAhead(e.storage, pool, e.chunk_keys(TOKENS))
    threads = _spy_reader_threads(e)
    got = [ahead.get(k) for k in e.chunk_keys(TOKENS)]
    ahead.close()
    assert all(g is not None and g[1] == "LocalDiskBackend" for g in got)
    assert threads == [threading.current_thread().name] * 4
    for g in got:
        assert g is not None
        g[0].unref()


def test_a_forked_child_starts_its_own_reader_threads(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    e, _ = _disk_only(make_engine, tmp_path, 45)
    assert e.retrieve(TOKENS, torch.arange(128, 192)).num_retrieved == 64  # threads started
    pid = os.fork()
    if pid == 0:  # the child: its retrieve must not wait for the parent's threads
        ok = e.retrieve(TOKENS, torch.arange(192, 256)).num_retrieved == 64
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def _disk_and_cpu(make_engine: MakeEngine, tmp_path: Path, seed: int) -> object:
    e = make_engine(random_cache(seed), local_disk=str(tmp_path / "disk"))
    assert e.store(TOKENS, torch.arange(64)).num_stored_tokens == 64
    assert e.flush(timeout=30)
    e.clear(["LocalCPUBackend"])
    return e


def test_prefetch_promotes_the_chunks_into_the_cpu_tier(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    e = _disk_and_cpu(make_engine, tmp_path, 46)
    keys = e.chunk_keys(TOKENS)
    cpu = e.storage.backend("LocalCPUBackend")
    assert e.prefetch(TOKENS, start=20) == 3  # chunk 0 ends at 16: vLLM holds it
    deadline = time.monotonic() + 30
    while cpu.batched_contains(keys) != [False, True, True, True]:  # the reads run meanwhile
        assert time.monotonic() < deadline, cpu.batched_contains(keys)
        time.sleep(0.01)


def test_a_retrieve_waits_for_a_prefetch_instead_of_reading_again(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    e = _disk_and_cpu(make_engine, tmp_path, 47)
    reads = _spy_reader_threads(e)
    assert e.prefetch(TOKENS) == 4
    dst = torch.arange(128, 192)
    assert e.retrieve(TOKENS, dst).num_retrieved == 64
    assert len(reads) == 4  # each chunk read from disk once
    cache = dict(zip(e.registered_kv().names, e.registered_kv().caches, strict=True))
    assert same_bytes(read_rows(cache, dst), read_rows(cache, torch.arange(64)))


def test_prefetch_without_a_cpu_tier_to_keep_reads_starts_nothing(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    e, _ = _disk_only(make_engine, tmp_path, 48)
    assert e.prefetch(TOKENS) == 0
    e2 = _disk_and_cpu(make_engine, tmp_path / "b", 49)
    e2.set_hot_cache(False)
    assert e2.prefetch(TOKENS) == 0
    e2.set_hot_cache(True)
    assert not e2.bypass_add("LocalCPUBackend")  # (it was not bypassed before)
    assert e2.prefetch(TOKENS) == 0
    assert e2.bypass_remove("LocalCPUBackend")
    assert e2.prefetch(TOKENS) == 4
