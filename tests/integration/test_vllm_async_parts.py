"""Async loads and saves of the connector, side by side, on a real engine without a vLLM engine.

Worker side (a real engine over vLLM-shaped CPU caches and a real disk tier): a background load
of chunks only the disk tier holds fills exactly the planned blocks and names its request once in
``get_finished``'s second set; one that fails names it too and reports the blocks it could not
fill; a background store is counted once done, a request whose blocks vLLM held for it is named
once in ``get_finished``'s first set once its stores are copied out, and ``close`` finishes the
stores still queued. An async save copies its chunks out in ``wait_for_save`` (the blocks may be
overwritten right after; the commit on the background thread stores the KV as it was), and one
that finds the pool full skips its chunks instead of waiting. Scheduler side: a hit below the CPU
tier is claimed as an async load, sent to the workers although vLLM does not schedule the
request, and a finished request with stores gets a delayed free that the next metadata carries
only where the copy may outlive ``wait_for_save`` (CUDA), not on the CPU.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import vllm_testlib as vt

pytest.importorskip("vllm")

from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine import CacheEngine
from lmcache_native.integration.vllm.lookup import LookupServer
from lmcache_native.integration.vllm.metadata import (
    LMCacheNativeConnectorMetadata,
    LoadSpec,
    SaveSpec,
)
from lmcache_native.integration.vllm.saving import copies_outlive_save
from lmcache_native.integration.vllm.scheduler import SchedulerSide
from lmcache_native.integration.vllm.worker import WorkerSide

pytestmark = pytest.mark.vllm

NUM_BLOCKS, BLOCK, CHUNK = 40, vt.BLOCK_SIZE, vt.CHUNK_SIZE
PROMPT = list(range(7000, 7192))  # 3 chunks
CPU = "LocalCPUBackend"
DISK = "LocalDiskBackend"
WAIT_SECS = 60.0  # an upper bound on a background job, never a timing assertion


def _worker(tmp_path: Path, **cfg: Any) -> WorkerSide:
    worker, _ = vt.unit_worker(
        "async", NUM_BLOCKS, 7, local_disk=str(tmp_path / "disk"), max_local_disk_size=0.1, **cfg
    )
    return worker  # type: ignore[no-any-return]


def _until(poll: Any) -> Any:
    """Calls ``poll`` until it returns something truthy (at most WAIT_SECS)."""
    deadline = time.monotonic() + WAIT_SECS
    while True:
        got = poll()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.01)


def _sums(worker: WorkerSide, first_block: int, n: int) -> Any:
    engine = worker.engine
    assert engine is not None
    return engine.kv_checksums(torch.arange(first_block * BLOCK, first_block * BLOCK + n), n, False)


def _store_on_disk_only(worker: WorkerSide) -> CacheEngine:
    engine = worker.engine
    assert engine is not None
    save = SaveSpec("s", PROMPT, [1, 2, 3, 4, 5, 6], num_prompt_tokens=len(PROMPT))
    worker.wait_for_save(LMCacheNativeConnectorMetadata(saves=[save]))
    assert engine.flush(timeout=30)
    engine.clear([CPU])
    assert worker.lookup_tiers("probe", PROMPT) == (192, 0, True)
    worker.release(["probe"])
    return engine


def test_background_load_fills_the_blocks_and_is_reported_once(tmp_path: Path) -> None:
    worker = _worker(tmp_path)
    _store_on_disk_only(worker)
    spec = LoadSpec("r", PROMPT, [20, 21, 22, 23, 24, 25], start=0, end=191, async_load=True)
    worker.start_load_kv(LMCacheNativeConnectorMetadata(loads=[spec]))
    recving = _until(lambda: worker.get_finished(set())[1])
    assert recving == {"r"}
    assert worker.take_load_errors() == set()
    assert (worker.stats.loaded_tokens, worker.stats.async_loads) == (191, 1)
    assert _sums(worker, 20, 191) == _sums(worker, 1, 191)  # the stored KV, in the new blocks
    assert worker.get_finished(set()) == (set(), set())  # named once
    worker.close()


def test_background_load_that_fails_reports_blocks_and_finishes(tmp_path: Path) -> None:
    worker = _worker(tmp_path)
    engine = _store_on_disk_only(worker)
    (key,) = engine.chunk_keys(PROMPT[:192])[2:]
    engine.backend(DISK).remove(key)  # the last chunk is gone between lookup and load
    spec = LoadSpec("r", PROMPT, [20, 21, 22, 23, 24, 25], start=0, end=191, async_load=True)
    worker.start_load_kv(LMCacheNativeConnectorMetadata(loads=[spec]))
    assert _until(lambda: worker.get_finished(set())[1]) == {"r"}
    assert worker.take_load_errors() == {24, 25}  # tokens 128..190: vLLM recomputes them
    assert worker.stats.loaded_tokens == 128
    worker.close()


def test_background_saves_and_delayed_free(tmp_path: Path) -> None:
    worker = _worker(tmp_path, extra_config={"enable_async_saving": True})
    assert worker.async_saving
    engine = worker.engine
    assert engine is not None
    save = SaveSpec("a", PROMPT, [1, 2, 3, 4, 5, 6], num_prompt_tokens=len(PROMPT))
    worker.wait_for_save(LMCacheNativeConnectorMetadata(saves=[save]))
    # vLLM finished "a" and holds its blocks: named once, after its store is done.
    worker.wait_for_save(LMCacheNativeConnectorMetadata(delayed_free=["a"]))
    sending = _until(lambda: worker.get_finished({"a"})[0])
    assert sending == {"a"}
    assert (worker.stats.stored_tokens, worker.stats.async_saves) == (192, 1)
    assert engine.lookup(PROMPT) == 192
    assert worker.get_finished(set()) == (set(), set())
    # A store still queued when the worker closes is done, not dropped.
    other = list(range(9000, 9128))
    save = SaveSpec("b", other, [7, 8, 9, 10], num_prompt_tokens=len(other))
    worker.wait_for_save(LMCacheNativeConnectorMetadata(saves=[save]))
    worker.close()
    assert worker.stats.stored_tokens == 192 + 128
    reopened = _worker(tmp_path)
    assert reopened.engine is not None
    assert reopened.engine.lookup(other) == 128  # on disk
    reopened.close()


def _gate_commits(monkeypatch: pytest.MonkeyPatch, engine: CacheEngine) -> tuple[Any, list[str]]:
    """Holds every ``commit_store`` until the returned event is set; lists the threads' names."""
    gate, threads = threading.Event(), []
    commit = engine.commit_store

    def held(staged: Any) -> Any:
        threads.append(threading.current_thread().name)
        assert gate.wait(WAIT_SECS)
        return commit(staged)

    monkeypatch.setattr(engine, "commit_store", held)
    return gate, threads


def test_async_save_copies_out_in_wait_for_save_and_commits_behind_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = _worker(tmp_path, extra_config={"enable_async_saving": True})
    engine = worker.engine
    assert engine is not None
    gate, threads = _gate_commits(monkeypatch, engine)
    original = _sums(worker, 1, 192)
    save = SaveSpec("a", PROMPT, [1, 2, 3, 4, 5, 6], num_prompt_tokens=len(PROMPT))
    worker.wait_for_save(LMCacheNativeConnectorMetadata(saves=[save]))
    # The copy is done: vLLM may give the blocks to another request right away.
    for cache in engine.registered_kv().caches:
        cache.zero_()
    assert _sums(worker, 1, 192) != original
    # Had vLLM held "a"'s blocks (as on CUDA), they would go back now: its commit still waits.
    worker.wait_for_save(LMCacheNativeConnectorMetadata(delayed_free=["a"]))
    assert worker.get_finished({"a"})[0] == {"a"}
    assert (worker.stats.stored_tokens, worker.stats.async_saves) == (0, 0)
    gate.set()
    worker.wait_saves()
    assert (worker.stats.stored_tokens, worker.stats.async_saves) == (192, 1)
    assert threads
    assert all(t.startswith("lmcn-save") for t in threads)
    # What was stored is the KV as it was before the blocks were overwritten.
    slots = torch.arange(20 * BLOCK, 20 * BLOCK + 192)
    assert engine.retrieve(PROMPT, slots).num_retrieved == 192
    assert _sums(worker, 20, 192) == original
    worker.close()


def test_async_saves_on_a_full_pool_skip_their_chunks_and_never_wait(tmp_path: Path) -> None:
    # A pool smaller than one chunk (2 layers x 2 x 2 heads x 16 x 64 tokens x 4 bytes).
    worker = _worker(tmp_path, extra_config={"enable_async_saving": True}, max_local_cpu_size=1e-5)
    engine = worker.engine
    assert engine is not None
    save = SaveSpec("a", PROMPT, [1, 2, 3, 4, 5, 6], num_prompt_tokens=len(PROMPT))
    worker.wait_for_save(LMCacheNativeConnectorMetadata(saves=[save]))
    worker.wait_saves()
    assert (worker.stats.store_requests, worker.stats.stored_tokens) == (1, 0)
    assert worker.stats.store_failures == 0
    label = {"reason": "out of memory"}
    assert engine.metrics.value("lmcache_skipped_store_chunks_total", label) == 3
    assert engine.pool.used_bytes == 0
    worker.close()


def _request(req_id: str, prompt: list[int]) -> SimpleNamespace:
    return SimpleNamespace(
        request_id=req_id,
        prompt_token_ids=prompt,
        all_token_ids=list(prompt),
        num_prompt_tokens=len(prompt),
        mm_features=[],
        lora_request=None,
        cache_salt=None,
        prompt_embeds=None,
    )


def _output(new: list[tuple[str, list[int], int]], scheduled: dict[str, int]) -> SimpleNamespace:
    return SimpleNamespace(
        scheduled_new_reqs=[
            SimpleNamespace(req_id=r, block_ids=(b,), num_computed_tokens=c) for r, b, c in new
        ],
        scheduled_cached_reqs=SimpleNamespace(
            req_ids=[], new_block_ids=[], num_computed_tokens=[], resumed_req_ids=set()
        ),
        num_scheduled_tokens=scheduled,
        finished_req_ids=set(),
        preempted_req_ids={"p"},
    )


def test_scheduler_plans_async_loads_and_delayed_frees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMCACHE_NATIVE_LOOKUP_DIR", str(tmp_path))
    below = {"x": True}
    server = LookupServer.start("async-s", 0, lambda _r, _t, _e: (192, 0, below["x"]))
    config = LMCacheEngineConfig.from_defaults(
        chunk_size=CHUNK, extra_config={"enable_async_loading": True, "enable_async_saving": True}
    )
    sched = SchedulerSide(config, "async-s", 1, BLOCK)
    # On the CPU an async save's copy is done when wait_for_save returns: no block is held for
    # it; the blocks are held where the copy may outlive wait_for_save (CUDA).
    assert sched.hold_blocks is False
    sched.hold_blocks = copies_outlive_save("cuda")
    blocks = SimpleNamespace(get_block_ids=lambda: ([1, 2, 3, 4, 5, 6, 7],))
    try:
        req = _request("a", list(range(200)))
        assert sched.get_num_new_matched_tokens(req, 0) == 192
        assert sched.load_is_async(req)
        sched.update_state_after_alloc(req, blocks, 192)
        # vLLM holds "a" (WAITING_FOR_REMOTE_KVS): not scheduled, its load still goes out.
        meta = sched.build_connector_meta(_output([], {}))
        (load,) = meta.loads
        assert load.async_load
        assert (load.start, load.end) == (0, 192)
        assert meta.preempted == ["p"]
        assert sched.request_finished(req) is False  # its blocks come back with the load
        sched.loads_finished({"a"})
        # A hit the CPU tier holds whole loads synchronously.
        below["x"] = False
        req_b = _request("b", list(range(300, 500)))
        assert sched.get_num_new_matched_tokens(req_b, 0) == 192
        assert not sched.load_is_async(req_b)
        sched.update_state_after_alloc(req_b, blocks, 192)
        meta = sched.build_connector_meta(_output([("b", [1, 2, 3, 4, 5, 6, 7], 0)], {"b": 200}))
        assert [x.async_load for x in meta.loads] == [False]
        assert len(meta.saves) == 1
        # "b" had stores: its blocks wait for them; the next metadata tells the workers.
        assert sched.request_finished(req_b) is True
        assert sched.build_connector_meta(_output([], {})).delayed_free == ["b"]
        req_c = _request("c", list(range(600, 800)))  # no stores: freed at once
        assert sched.request_finished(req_c) is False
    finally:
        sched.close()
        server.stop()
