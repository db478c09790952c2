"""The worker starts the lower-tier reads of a step's later synchronous loads before the first.

A real engine over vLLM-shaped CPU caches and a real disk tier, no vLLM engine: two requests
whose prompts only the disk tier holds load in one step. Both requests' disk reads are started,
in load order, before the first request loads; both land exactly the stored KV, and no chunk is
read from disk twice.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
import vllm_testlib as vt

pytest.importorskip("vllm")

from lmcache_native.engine import CacheEngine, transfer
from lmcache_native.integration.vllm.metadata import (
    LMCacheNativeConnectorMetadata,
    LoadSpec,
    SaveSpec,
)
from lmcache_native.integration.vllm.worker import WorkerSide

pytestmark = pytest.mark.vllm

NUM_BLOCKS, BLOCK = 40, vt.BLOCK_SIZE
PROMPTS = {"a": list(range(1000, 1192)), "b": list(range(3000, 3192))}  # 3 chunks each


def _worker(tmp_path: Path) -> WorkerSide:
    worker, _ = vt.unit_worker(
        "prefetch", NUM_BLOCKS, 11, local_disk=str(tmp_path / "disk"), max_local_disk_size=0.1
    )
    return worker  # type: ignore[no-any-return]


def _sums(engine: CacheEngine, first_block: int, n: int) -> Any:
    start = first_block * BLOCK
    return engine.kv_checksums(torch.arange(start, start + n), n, False)


def test_later_loads_of_a_step_start_their_disk_reads_before_the_first_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = _worker(tmp_path)
    engine = worker.engine
    assert engine is not None
    saves = [
        SaveSpec("sa", PROMPTS["a"], [1, 2, 3, 4, 5, 6], num_prompt_tokens=192),
        SaveSpec("sb", PROMPTS["b"], [7, 8, 9, 10, 11, 12], num_prompt_tokens=192),
    ]
    worker.wait_for_save(LMCacheNativeConnectorMetadata(saves=saves))
    assert engine.flush(timeout=30)
    engine.clear(["LocalCPUBackend"])
    owner = {k: name for name, p in PROMPTS.items() for k in engine.chunk_keys(p)}

    events: list[str] = []
    lock = threading.Lock()
    disk = engine.storage.backend("LocalDiskBackend")
    real_get, real_scatter = disk.get, transfer.ops.paged_kv_scatter_chunks

    def get(key: str) -> Any:
        with lock:
            events.append(f"read {owner[key]}")
        return real_get(key)

    def scatter(*args: Any, **kwargs: Any) -> Any:
        with lock:
            events.append("copy")
        return real_scatter(*args, **kwargs)

    def prefetch(tokens: Any, *args: Any) -> int:
        with lock:
            events.append(f"prefetch {owner[engine.chunk_keys(tokens)[0]]}")
        return real_prefetch(tokens, *args)

    real_prefetch = engine.prefetch
    monkeypatch.setattr(disk, "get", get)
    monkeypatch.setattr(transfer.ops, "paged_kv_scatter_chunks", scatter)
    monkeypatch.setattr(engine, "prefetch", prefetch)
    loads = [
        LoadSpec("ra", PROMPTS["a"], [20, 21, 22, 23, 24, 25], start=0, end=191),
        LoadSpec("rb", PROMPTS["b"], [30, 31, 32, 33, 34, 35], start=0, end=191),
    ]
    worker.start_load_kv(LMCacheNativeConnectorMetadata(loads=loads))

    assert worker.take_load_errors() == set()
    assert worker.stats.loaded_tokens == 2 * 191
    assert _sums(engine, 20, 191) == _sums(engine, 1, 191)
    assert _sums(engine, 30, 191) == _sums(engine, 7, 191)
    # Both requests' reads were started, in load order, before a's copy...
    before_copy = [e for e in events[: events.index("copy")] if e.startswith("prefetch")]
    assert before_copy == ["prefetch a", "prefetch b"], events
    assert events.count("prefetch a") == events.count("prefetch b") == 1, events
    # ...and each chunk was read from disk once: b's load took them from the CPU tier.
    reads = sorted(e for e in events if e.startswith("read"))
    assert reads == ["read a"] * 3 + ["read b"] * 3, events
    worker.close()
