"""The worker side on a real engine without a vLLM engine: loads that come back short.

A load can come back shorter than the scheduler planned (a chunk evicted or lost between the
lookup and the load). The worker must then report the blocks it could not fill, so vLLM
recomputes them (``kv_load_failure_policy="recompute"``) instead of reading stale KV, and must
not touch slots outside the planned window.
"""

from __future__ import annotations

import pytest
import torch
import vllm_testlib as vt

pytest.importorskip("vllm")

from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine import CacheEngine, EngineMetadata
from lmcache_native.integration.vllm.metadata import (
    LMCacheNativeConnectorMetadata,
    LoadSpec,
    SaveSpec,
)
from lmcache_native.integration.vllm.worker import WorkerSide

pytestmark = pytest.mark.vllm

NUM_BLOCKS, HEADS, BLOCK, HEAD = 16, 2, 32, 16
CHUNK = 64


def _worker() -> tuple[WorkerSide, list[torch.Tensor]]:
    worker, caches = vt.unit_worker("unit", NUM_BLOCKS, 3, max_local_cpu_size=0.01)
    worker._bytes_per_token = 2 * 2 * HEADS * HEAD * 4
    return worker, caches


def test_short_load_reports_unfilled_blocks_and_touches_nothing_else() -> None:
    worker, caches = _worker()
    tokens = list(range(1000, 1192))  # 3 chunks
    # Store the first two chunks only (tokens 0..127 in blocks 1..4).
    save = SaveSpec("a", tokens[:128], [1, 2, 3, 4], num_prompt_tokens=128)
    worker.wait_for_save(LMCacheNativeConnectorMetadata(saves=[save]))
    assert worker.stats.stored_tokens == 128
    before = [c.clone() for c in caches]
    # Plan: tokens 32..191 into blocks 8..13 (vLLM holds 0..31 already); chunk 2 is missing.
    spec = LoadSpec("b", tokens, [8, 9, 10, 11, 12, 13], start=32, end=191)
    worker.start_load_kv(LMCacheNativeConnectorMetadata(loads=[spec]))
    assert worker.stats.loaded_tokens == 128 - 32
    assert worker.stats.load_failed_tokens == 191 - 128
    # Tokens 128..190 live in blocks 12 and 13: both are reported, once.
    assert worker.take_load_errors() == {12, 13}
    assert worker.take_load_errors() == set()
    for c, b in zip(caches, before, strict=True):
        # Block 8 (positions 0..31, held by vLLM), blocks 12-13 and all others: untouched.
        for blk in range(NUM_BLOCKS):
            if blk in (9, 10, 11):
                continue
            assert torch.equal(c[blk].view(torch.int32), b[blk].view(torch.int32)), blk
        # Blocks 9..11 now hold what was stored from blocks 2..4.
        assert torch.equal(c[9:12].view(torch.int32), b[2:5].view(torch.int32))
    worker.close()


def test_load_without_engine_reports_the_whole_window() -> None:
    worker, _ = _worker()
    worker.engine.close()
    worker.engine = None  # as after an unknown layout
    spec = LoadSpec("c", list(range(64)), [5, 6], start=0, end=63)
    worker.start_load_kv(LMCacheNativeConnectorMetadata(loads=[spec]))
    assert worker.take_load_errors() == {5, 6}
    assert worker.stats.load_failed_tokens == 63


@pytest.mark.parametrize("save_decode", [False, True])
def test_decode_tokens_are_stored_only_with_save_decode_cache(save_decode: bool) -> None:
    worker, _ = _worker()
    worker.config.update({"save_decode_cache": save_decode})
    tokens = list(range(500, 628))  # 64 prompt tokens, then 64 decoded ones
    spec = SaveSpec("d", tokens, [1, 2, 3, 4], num_prompt_tokens=64)
    worker.wait_for_save(LMCacheNativeConnectorMetadata(saves=[spec]))
    assert worker.stats.stored_tokens == (128 if save_decode else 64)
    assert worker.engine.lookup(tokens) == (128 if save_decode else 64)
    # The same spec again (the next chunk boundary of a long decode) stores nothing new.
    worker.wait_for_save(LMCacheNativeConnectorMetadata(saves=[spec]))
    assert worker.stats.store_requests == 1
    worker.finished({"d"})
    worker.close()


def test_roles_on_the_worker() -> None:
    worker, _ = _worker()
    tokens = list(range(300, 428))
    worker.saves = False  # kv_consumer: stores nothing
    worker.wait_for_save(
        LMCacheNativeConnectorMetadata(saves=[SaveSpec("a", tokens, [1, 2, 3, 4], 128)])
    )
    assert worker.stats.store_requests == 0
    assert worker.engine.lookup(tokens) == 0
    worker.saves = True
    worker.wait_for_save(
        LMCacheNativeConnectorMetadata(saves=[SaveSpec("a", tokens, [1, 2, 3, 4], 128)])
    )
    assert worker.engine.lookup(tokens) == 128
    worker.loads = False  # kv_producer: answers no lookup, loads nothing
    assert worker.lookup("b", tokens) == (0, 0)
    spec = LoadSpec("b", tokens, [8, 9, 10, 11], start=0, end=127)
    worker.start_load_kv(LMCacheNativeConnectorMetadata(loads=[spec]))
    assert worker.stats.loaded_tokens == 0
    assert worker.take_load_errors() == {8, 9, 10, 11}  # vLLM recomputes, never reads stale KV
    worker.close()


def test_saves_hand_the_engine_only_what_is_new(monkeypatch) -> None:
    worker, caches = _worker()
    worker.engine.close()
    config = LMCacheEngineConfig.from_defaults(chunk_size=CHUNK, max_local_cpu_size=0.05)
    engine = CacheEngine(config, EngineMetadata(model_name="m"))
    engine.register_kv_caches({"l0": caches[0], "l1": caches[1]}, "vllm_cpu")
    worker.engine = engine
    handed: list[int] = []
    real_store = engine.store

    def counting_store(tokens, slots, extras=None, **kw):
        handed.append(len(tokens))
        return real_store(tokens, slots, extras, **kw)

    monkeypatch.setattr(engine, "store", counting_store)
    tokens = list(range(7000, 7000 + 480))  # 15 blocks, 7 full chunks + 32
    blocks = list(range(1, 16))
    step = 48  # a chunked prefill of 48 tokens per step: saves at each chunk boundary crossed
    sent_t = sent_b = 0
    for end in range(step, 481, step):
        nb = (end + BLOCK - 1) // BLOCK
        spec = SaveSpec(
            "inc", tokens[sent_t:end], blocks[sent_b:nb], 480, start=sent_t, block_start=sent_b
        )
        worker.wait_for_save(LMCacheNativeConnectorMetadata(saves=[spec]))
        sent_t, sent_b = end, nb
    # Every token was handed over at most once more than its chunk's share.
    assert sum(handed) <= 480 + CHUNK * len(handed)
    assert max(handed) < 2 * CHUNK
    assert worker.stats.stored_tokens == 448
    # Same keys, same bytes as one store of the whole prompt.
    assert engine.lookup(tokens) == 448
    other = CacheEngine(config, EngineMetadata(model_name="m"))
    other.register_kv_caches({"l0": caches[0], "l1": caches[1]}, "vllm_cpu")
    other.store(tokens, torch.arange(32, 32 + 480))
    assert other.chunk_keys(tokens) == engine.chunk_keys(tokens)
    for key in engine.chunk_keys(tokens):
        a, b = engine.storage.get(key)[0], other.storage.get(key)[0]
        assert torch.equal(a.tensor.view(torch.int32), b.tensor.view(torch.int32))
        a.unref()
        b.unref()
    other.close()
    worker.finished({"inc"})
    assert "inc" not in worker._saves
    worker.close()


def test_save_after_preemption_uses_the_new_blocks() -> None:
    worker, _ = _worker()
    tokens = list(range(9000, 9192))
    worker.wait_for_save(
        LMCacheNativeConnectorMetadata(saves=[SaveSpec("p", tokens[:64], [1, 2], 192)])
    )
    # Preempted; resumed in blocks 9..14; the next save resends every block.
    spec = SaveSpec("p", tokens[64:192], [9, 10, 11, 12, 13, 14], 192, start=64, block_start=0)
    worker.wait_for_save(LMCacheNativeConnectorMetadata(saves=[spec]))
    assert worker.stats.stored_tokens == 192
    dst_spec = LoadSpec("q", tokens, [3, 4, 5, 6, 7, 8], start=0, end=191)
    worker.start_load_kv(LMCacheNativeConnectorMetadata(loads=[dst_spec]))
    assert worker.take_load_errors() == set()
    # Chunk 2 (tokens 128..190 loaded) came from blocks 13-14, where the resumed request was.
    sums = worker.engine.kv_checksums
    loaded = sums(torch.arange(7 * BLOCK, 7 * BLOCK + 63), 63, False)
    assert loaded == sums(torch.arange(13 * BLOCK, 13 * BLOCK + 63), 63, False)
    assert loaded != sums(torch.arange(3 * BLOCK, 3 * BLOCK + 63), 63, False)
    worker.close()
