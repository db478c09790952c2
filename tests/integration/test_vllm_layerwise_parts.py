"""Layer-wise saves and loads on a real engine and real caches, without a vLLM engine.

The saver copies each layer out when told (``save_layer``) and commits the same chunks as
``CacheEngine.store``; the load writes layer after layer from a thread and ``wait_layer`` of
layer k returns once layer k is in, whatever the order of the calls.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import vllm_testlib as vt

pytest.importorskip("vllm")

from lmcache_native import ops
from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine import CacheEngine, EngineMetadata
from lmcache_native.integration.vllm.layerwise import (
    LayerCaches,
    LayerwiseSaver,
    StoreJob,
)
from lmcache_native.integration.vllm.layerwise_load import LayerwiseLoad, LoadJob
from lmcache_native.integration.vllm.layerwise_pipeline import LayerwisePipeline
from lmcache_native.integration.vllm.metadata import (
    LMCacheNativeConnectorMetadata,
    LoadSpec,
    SaveSpec,
    slot_mapping,
)

pytestmark = pytest.mark.vllm

NUM_BLOCKS, HEADS, BLOCK, HEAD = 24, 2, 32, 16
CHUNK = 64
LAYOUT = "vllm_cpu"
LAYERS = ["model.layers.0.attn", "model.layers.1.attn", "model.layers.2.attn"]


def _caches(seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (NUM_BLOCKS, HEADS, BLOCK, 2 * HEAD)
    return {n: torch.randn(shape, generator=g).to(dtype) for n in LAYERS}


@pytest.fixture(params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def engine(dtype: torch.dtype) -> Iterator[CacheEngine]:
    config = LMCacheEngineConfig.from_defaults(chunk_size=CHUNK, max_local_cpu_size=0.02)
    eng = CacheEngine(config, EngineMetadata(model_name="m"))
    eng.register_kv_caches(_caches(1, dtype), LAYOUT)
    yield eng
    eng.close()


def _kv(engine: CacheEngine) -> dict[str, torch.Tensor]:
    return dict(zip(engine.layer_names, engine._require_kv().caches, strict=True))


def _rows(caches: dict[str, torch.Tensor], slots: torch.Tensor) -> torch.Tensor:
    paged = ops.describe(list(caches.values()), LAYOUT)
    out = torch.zeros(paged.chunk_shape(int(slots.numel())), dtype=paged.dtype)
    ops.paged_kv_gather(list(caches.values()), slots, out, LAYOUT)
    return out


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


TOKENS = list(range(500, 692))  # 3 chunks


def _store_layerwise(engine: CacheEngine, tokens: list[int], blocks: list[int]) -> LayerwiseSaver:
    saver = LayerwiseSaver(engine, LayerCaches.of(_kv(engine), LAYOUT))
    job = StoreJob(tokens, slot_mapping(blocks, BLOCK, len(tokens)))
    saver.begin([job])
    for name in LAYERS:
        assert saver.save_layer(name)
    result = saver.store(job)
    assert result.num_stored_tokens == len(tokens) // CHUNK * CHUNK
    saver.end()
    return saver


def test_layerwise_store_writes_the_chunks_the_engine_store_writes(
    engine: CacheEngine, dtype: torch.dtype
) -> None:
    caches = _kv(engine)
    slots = slot_mapping([0, 1, 2, 3, 4, 5], BLOCK, len(TOKENS))
    expected = _rows(caches, slots)
    _store_layerwise(engine, TOKENS, [0, 1, 2, 3, 4, 5])
    keys = engine.chunk_keys(TOKENS)
    assert len(keys) == 3
    for c, key in enumerate(keys):
        got = engine.storage.get(key)
        assert got is not None
        buf, _ = got
        assert _same(buf.tensor, expected[:, :, c * CHUNK : (c + 1) * CHUNK].contiguous())
        buf.unref()
    # The same tokens stored by the engine again: nothing new (same keys).
    assert engine.store(TOKENS, slots).num_stored_tokens == 0
    # A second engine storing the whole-forward way writes identical bytes.
    other = CacheEngine(engine.config, EngineMetadata(model_name="m"))
    try:
        other.register_kv_caches(_caches(1, dtype), LAYOUT)
        assert other.store(TOKENS, slots).num_stored_tokens == 192
        for key in keys:
            a, b = engine.storage.get(key), other.storage.get(key)
            assert a is not None
            assert b is not None
            assert _same(a[0].tensor, b[0].tensor)
            a[0].unref()
            b[0].unref()
    finally:
        other.close()


def test_each_layer_is_copied_when_saved_not_at_the_commit(engine: CacheEngine) -> None:
    caches = _kv(engine)
    slots = slot_mapping([6, 7, 8, 9], BLOCK, 128)
    expected = _rows(caches, slots)
    saver = LayerwiseSaver(engine, LayerCaches.of(caches, LAYOUT))
    job = StoreJob(TOKENS[:128], slots)
    saver.begin([job])
    for name in LAYERS:
        saver.save_layer(name)
        caches[name].fill_(0)  # what vLLM does to the cache later does not reach the chunks
    assert saver.complete
    assert saver.store(job).num_stored_tokens == 128
    for c, key in enumerate(engine.chunk_keys(TOKENS[:128])):
        got = engine.storage.get(key)
        assert got is not None
        assert _same(got[0].tensor, expected[:, :, c * CHUNK : (c + 1) * CHUNK].contiguous())
        got[0].unref()


def test_store_plans_only_missing_chunks_and_falls_back_without_every_layer(
    engine: CacheEngine,
) -> None:
    caches = _kv(engine)
    slots = slot_mapping([0, 1, 2, 3, 4, 5], BLOCK, len(TOKENS))
    assert engine.store(TOKENS[:64], slots[:64]).num_stored_tokens == 64
    saver = LayerwiseSaver(engine, LayerCaches.of(caches, LAYOUT))
    job = StoreJob(TOKENS, slots)
    saver.begin([job])
    assert saver.planned_tokens == 128  # the stored first chunk is not copied out again
    assert not saver.save_layer("not.a.layer")
    saver.save_layer(LAYERS[0])
    saver.save_layer(LAYERS[1])  # the last layer never comes: stored from vLLM's cache
    assert not saver.complete
    result = saver.store(job)
    assert (result.num_stored_tokens, result.num_skipped_chunks) == (128, 1)
    saver.end()
    # Everything stored now: nothing to copy, "already stored".
    job = StoreJob(TOKENS, slots)
    saver.begin([job])
    assert saver.planned_tokens == 0
    for name in LAYERS:
        saver.save_layer(name)
    result = saver.store(job)
    assert (result.num_stored_tokens, result.reason) == (0, "already stored")


def test_layerwise_load_matches_the_engine_retrieve(engine: CacheEngine) -> None:
    caches = _kv(engine)
    src = slot_mapping([0, 1, 2, 3, 4, 5], BLOCK, len(TOKENS))
    expected = _rows(caches, src)
    _store_layerwise(engine, TOKENS, [0, 1, 2, 3, 4, 5])
    dst = slot_mapping([10, 11, 12, 13, 14, 15], BLOCK, len(TOKENS))
    slots = dst.clone()
    slots[:32] = -1  # vLLM holds the first block already
    load = LayerwiseLoad(engine, LayerCaches.of(caches, LAYOUT), [LoadJob(TOKENS, slots)])
    load.start()
    load.wait_layer(LAYERS[2])  # out of order: the last layer first
    load.wait_layer(LAYERS[0])
    load.wait_layer("not.a.layer")  # not registered: returns at once
    (result,) = load.wait()
    assert result.num_retrieved == 192
    assert load.errors == []
    got = _rows(caches, dst[32:])
    assert _same(got, expected[:, :, 32:].contiguous())
    # The engine's own retrieve of a layer-wise store gives the same rows.
    dst2 = slot_mapping([16, 17, 18, 19, 20, 21], BLOCK, len(TOKENS))
    assert engine.retrieve(TOKENS, dst2).num_retrieved == 192
    assert _same(_rows(caches, dst2), expected)


def test_wait_for_layer_k_returns_once_k_is_in(engine: CacheEngine) -> None:
    caches = _kv(engine)
    src = slot_mapping([0, 1, 2, 3, 4, 5], BLOCK, len(TOKENS))
    expected = _rows(caches, src)
    assert engine.store(TOKENS, src).num_stored_tokens == 192
    gate = threading.Event()

    def hold_back_layer_1(i: int) -> None:
        if i == 1:
            assert gate.wait(60)

    dst = slot_mapping([10, 11, 12, 13, 14, 15], BLOCK, len(TOKENS))
    load = LayerwiseLoad(
        engine,
        LayerCaches.of(caches, LAYOUT),
        [LoadJob(TOKENS, dst)],
        before_layer=hold_back_layer_1,
    )
    load.start()
    load.wait_layer(LAYERS[0])
    # Layer 0 is in while layer 1 is still held back (and layer 2 behind it).
    assert not load.layer_done(LAYERS[1])
    assert not load.layer_done(LAYERS[2])
    layer0 = {LAYERS[0]: caches[LAYERS[0]]}
    assert _same(_rows(layer0, dst), expected[:, :1].contiguous())
    gate.set()
    load.wait_layer(LAYERS[2])
    assert load.layer_done(LAYERS[1])
    assert load.wait()[0].num_retrieved == 192
    assert _same(_rows(caches, dst), expected)


def test_a_failed_copy_fails_every_load_and_releases_every_layer(engine: CacheEngine) -> None:
    caches = _kv(engine)
    src = slot_mapping([0, 1, 2], BLOCK, 64)
    assert engine.store(TOKENS[:64], src).num_stored_tokens == 64
    bad = torch.full((64,), NUM_BLOCKS * BLOCK, dtype=torch.int64)  # past the cache
    before = {n: c.clone() for n, c in caches.items()}
    load = LayerwiseLoad(
        engine,
        LayerCaches.of(caches, LAYOUT),
        [LoadJob(TOKENS[:64], bad), LoadJob(TOKENS[:64], slot_mapping([9, 10], BLOCK, 64))],
    )
    load.start()
    for name in LAYERS:
        load.wait_layer(name)  # released although nothing was written
    results = load.wait()
    assert [r.num_retrieved for r in results] == [0, 0]
    assert len(load.errors) == 1
    assert isinstance(load.errors[0], IndexError)
    for n, c in caches.items():
        assert torch.equal(c, before[n])


def test_a_missing_chunk_shortens_only_its_load(engine: CacheEngine) -> None:
    caches = _kv(engine)
    src = slot_mapping([0, 1, 2, 3, 4, 5], BLOCK, len(TOKENS))
    assert engine.store(TOKENS, src).num_stored_tokens == 192
    engine.storage.remove(engine.chunk_keys(TOKENS)[1])
    other = list(range(2000, 2064))
    dst = slot_mapping([10, 11, 12, 13, 14, 15], BLOCK, len(TOKENS))
    load = LayerwiseLoad(
        engine,
        LayerCaches.of(caches, LAYOUT),
        [LoadJob(TOKENS, dst), LoadJob(other, slot_mapping([16, 17], BLOCK, 64))],
    )
    load.start()
    results = load.wait()
    assert [r.num_retrieved for r in results] == [64, 0]
    assert results[0].mask[:64].all()
    assert not results[0].mask[64:].any()
    assert _same(_rows(caches, dst[:64]), _rows(caches, src[:64]))


def test_a_short_last_chunk_loads_and_stores_layer_by_layer(dtype: torch.dtype) -> None:
    config = LMCacheEngineConfig.from_defaults(
        chunk_size=CHUNK, max_local_cpu_size=0.02, save_unfull_chunk=True
    )
    engine = CacheEngine(config, EngineMetadata(model_name="m"))
    try:
        engine.register_kv_caches(_caches(2, dtype), LAYOUT)
        caches = _kv(engine)
        tokens = TOKENS[:170]  # 2 full chunks and 42 tokens
        src = slot_mapping([0, 1, 2, 3, 4, 5], BLOCK, 170)
        expected = _rows(caches, src)
        saver = LayerwiseSaver(engine, LayerCaches.of(caches, LAYOUT))
        job = StoreJob(tokens, src)
        saver.begin([job])
        for name in LAYERS:
            saver.save_layer(name)
        assert saver.store(job).num_stored_tokens == 170
        dst = slot_mapping([10, 11, 12, 13, 14, 15], BLOCK, 170)
        load = LayerwiseLoad(engine, LayerCaches.of(caches, LAYOUT), [LoadJob(tokens, dst)])
        load.start()
        assert load.wait()[0].num_retrieved == 170
        assert _same(_rows(caches, dst), expected)
    finally:
        engine.close()


# -- the worker side's layer-wise pipeline (vLLM's per-step call order, without vLLM) -------


def test_pipeline_saves_per_layer_and_reports_what_a_layerwise_load_misses() -> None:
    worker, caches = vt.unit_worker("layerwise-unit", 16, 5, max_local_cpu_size=0.01)
    try:
        pipe = LayerwisePipeline(worker)
        tokens = list(range(3000, 3192))  # 3 chunks
        # A step that saves the first two chunks: planned at the first layer, copied per layer.
        meta = LMCacheNativeConnectorMetadata(
            saves=[SaveSpec("a", tokens[:128], [1, 2, 3, 4], num_prompt_tokens=128)]
        )
        expected = _rows({"l0": caches[0], "l1": caches[1]}, slot_mapping([1, 2, 3, 4], 32, 128))
        for name in ("l0", "l1"):
            pipe.save_kv_layer(name, meta)
        pipe.wait_for_save(meta)
        assert worker.stats.stored_tokens == 128
        assert pipe._saver is not None
        assert pipe._saver.layers_saved == 2
        # A step that loads all three chunks into blocks 8..13: the third was never stored.
        spec = LoadSpec("b", tokens, [8, 9, 10, 11, 12, 13], start=32, end=191)
        pipe.start_load_kv(LMCacheNativeConnectorMetadata(loads=[spec]))
        pipe.wait_for_layer_load("l1")
        pipe.wait_for_layer_load("l0")
        pipe.finish_loads()
        assert worker.stats.loaded_tokens == 128 - 32
        assert worker.stats.load_failed_tokens == 191 - 128
        assert worker.take_load_errors() == {12, 13}
        assert worker.leased_requests == []
        got = _rows({"l0": caches[0], "l1": caches[1]}, slot_mapping([8, 9, 10, 11], 32, 128))
        assert _same(got[:, :, 32:], expected[:, :, 32:].contiguous())
    finally:
        worker.close()


def test_pipeline_with_async_saves_commits_the_layer_copies_in_the_background(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker, caches = vt.unit_worker(
        "layerwise-async",
        16,
        6,
        max_local_cpu_size=0.01,
        extra_config={"enable_async_saving": True},
    )
    engine = worker.engine
    try:
        assert worker.async_saving
        gate, threads = threading.Event(), []
        commit = engine.commit_store

        def held(staged: object) -> object:
            threads.append(threading.current_thread().name)
            assert gate.wait(60)
            return commit(staged)

        monkeypatch.setattr(engine, "commit_store", held)
        pipe = LayerwisePipeline(worker)
        tokens = list(range(4000, 4192))  # 3 chunks
        both = {"l0": caches[0], "l1": caches[1]}
        expected = _rows(both, slot_mapping([1, 2, 3, 4, 5, 6], 32, 192))
        # Step 1 saves two chunks layer by layer; step 2 the third, but only layer 0 is saved
        # by the forward (its store is copied out of vLLM's cache in wait_for_save instead).
        step1 = LMCacheNativeConnectorMetadata(
            saves=[SaveSpec("a", tokens[:128], [1, 2, 3, 4], num_prompt_tokens=192)]
        )
        for name in ("l0", "l1"):
            pipe.save_kv_layer(name, step1)
        pipe.wait_for_save(step1)
        step2 = LMCacheNativeConnectorMetadata(
            saves=[
                SaveSpec("a", tokens[128:], [5, 6], start=128, block_start=4, num_prompt_tokens=192)
            ]
        )
        pipe.save_kv_layer("l0", step2)
        pipe.wait_for_save(step2)
        # Both steps are copied out: the caches may be overwritten before any commit ran.
        for c in caches:
            c.zero_()
        assert worker.stats.stored_tokens == 0
        gate.set()
        worker.wait_saves()
        assert worker.stats.stored_tokens == 192
        assert worker.stats.async_saves == 2
        assert len(threads) == 2
        assert all(t.startswith("lmcn-save") for t in threads)
        assert pipe._saver is not None
        assert pipe._saver.layers_saved == 3
        # Step 1's chunks came from the layer copies, step 2's from one batched gather.
        assert engine.metrics.value("lmcache_copy_seconds_count", {"direction": "gather"}) == 1
        dst = slot_mapping([8, 9, 10, 11, 12, 13], 32, 192)
        assert engine.retrieve(tokens, dst).num_retrieved == 192
        assert _same(_rows(both, dst), expected)
        # No buffer is left behind: the pool holds the CPU tier's three chunks only.
        assert engine.pool.used_bytes == 3 * int(engine.metadata_dict()["chunk_bytes"])
    finally:
        worker.close()


def test_layerwise_load_reads_disk_chunks_ahead_on_the_reader_threads(
    dtype: torch.dtype, tmp_path: Path
) -> None:
    config = LMCacheEngineConfig.from_defaults(
        chunk_size=CHUNK, max_local_cpu_size=0.02, local_disk=str(tmp_path)
    )
    with CacheEngine(config, EngineMetadata(model_name="m")) as engine:
        engine.register_kv_caches(_caches(5, dtype), LAYOUT)
        caches = _kv(engine)
        other = list(range(900, 1092))  # a second request's 3 chunks
        expected = _rows(caches, slot_mapping([0, 1, 2, 3, 4, 5], BLOCK, 192))
        assert engine.store(TOKENS, slot_mapping([0, 1, 2, 3, 4, 5], BLOCK, 192)).num_stored_tokens
        assert engine.store(other, slot_mapping([6, 7, 8, 9, 10, 11], BLOCK, 192)).num_stored_tokens
        assert engine.flush(timeout=30)
        engine.clear(["LocalCPUBackend"])
        disk = engine.storage.backend("LocalDiskBackend")
        threads: list[str] = []
        real_get = disk.get

        def get(key: str) -> object:
            threads.append(threading.current_thread().name)
            return real_get(key)

        disk.get = get  # type: ignore[method-assign]
        dst = slot_mapping([12, 13, 14, 15, 16, 17], BLOCK, 192)
        jobs = [
            LoadJob(TOKENS, dst),
            LoadJob(other, slot_mapping([18, 19, 20, 21, 22, 23], BLOCK, 192)),
        ]
        load = LayerwiseLoad(engine, LayerCaches.of(caches, LAYOUT), jobs)
        load.start()
        results = load.wait()
        assert [r.num_retrieved for r in results] == [192, 192]
        assert load.errors == []
        assert _same(_rows(caches, dst), expected)
        assert len(threads) == 6  # each chunk of both requests read once...
        assert all(t.startswith("lmcn-fetch") for t in threads), threads  # ...ahead, in parallel
