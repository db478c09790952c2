"""Layer-wise loads and saves of the vLLM connector against the whole-forward path, one run.

A CPU-tier hit of ``--tokens`` tokens on ``--layers`` layers of vLLM's CPU cache layout:

- load: ``CacheEngine.retrieve`` (every layer before the forward may start) against
  ``LayerwiseLoad`` (the forward may start once layer 0 is in: "first layer"; "all layers"
  is when the last one is);
- save: ``CacheEngine.store`` after the forward against the layer-wise saver (the per-layer
  copies run as each layer is written; "commit" is what is left for ``wait_for_save``).

Medians of ``--repeat`` runs, in milliseconds::

    python benchmarks/bench_vllm_layerwise.py --tokens 4096 --layers 32 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine import CacheEngine, EngineMetadata
from lmcache_native.integration.vllm.layerwise import LayerCaches, LayerwiseSaver, Staging, StoreJob
from lmcache_native.integration.vllm.layerwise_load import LayerwiseLoad, LoadJob
from lmcache_native.integration.vllm.metadata import slot_mapping

BLOCK = 32
CHUNK = 256


def _median_ms(fn: Callable[[], float | None], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        got = fn()
        times.append((got if got is not None else time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    """Runs the comparison and prints one table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-size", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    dtype = getattr(torch, a.dtype)
    blocks = a.tokens // BLOCK
    caches = {
        f"model.layers.{i}.self_attn.attn": torch.randn(
            2 * blocks, a.heads, BLOCK, 2 * a.head_size
        ).to(dtype)
        for i in range(a.layers)
    }
    nbytes = 2 * a.layers * a.heads * a.head_size * dtype.itemsize * a.tokens
    cfg = LMCacheEngineConfig.from_defaults(chunk_size=CHUNK, max_local_cpu_size=3 * nbytes / 2**30)
    engine = CacheEngine(cfg, EngineMetadata(model_name="bench"))
    engine.register_kv_caches(caches, "vllm_cpu")
    layer_caches = LayerCaches.of(caches, "vllm_cpu")
    tokens = list(range(a.tokens))
    src = slot_mapping(list(range(blocks)), BLOCK, a.tokens)
    dst = slot_mapping(list(range(blocks, 2 * blocks)), BLOCK, a.tokens)

    def whole_store() -> None:
        engine.clear()
        engine.store(tokens, src)

    saver = LayerwiseSaver(engine, layer_caches)
    commit: list[float] = []

    def layerwise_store() -> None:
        engine.clear()
        job = StoreJob(tokens, src)
        saver.begin([job])
        for name in layer_caches.names:
            saver.save_layer(name)
        t0 = time.perf_counter()
        saver.store(job)
        commit.append(time.perf_counter() - t0)
        saver.end()

    store_ms = _median_ms(whole_store, a.repeat)
    lw_store_ms = _median_ms(layerwise_store, a.repeat)
    engine.store(tokens, src)
    retrieve_ms = _median_ms(lambda: (engine.retrieve(tokens, dst), None)[1], a.repeat)

    staging = Staging(layer_caches)

    def first_layer() -> float:
        t0 = time.perf_counter()
        load = LayerwiseLoad(engine, layer_caches, [LoadJob(tokens, dst)], staging)
        load.start()
        load.wait_layer(layer_caches.names[0])
        dt = time.perf_counter() - t0
        load.wait()
        return dt

    def all_layers() -> None:
        load = LayerwiseLoad(engine, layer_caches, [LoadJob(tokens, dst)], staging)
        load.start()
        load.wait()

    first_ms = _median_ms(first_layer, a.repeat)
    all_ms = _median_ms(all_layers, a.repeat)
    engine.close()
    print(
        f"{a.tokens} tokens x {a.layers} layers, {a.dtype}, {nbytes / 2**20:.0f} MiB, "
        f"{torch.get_num_threads()} torch threads, median of {a.repeat}"
    )
    print("| path | whole-forward (ms) | layer-wise (ms) |")
    print("|---|---|---|")
    print(f"| load: forward may start after | {retrieve_ms:.1f} | {first_ms:.1f} (layer 0) |")
    print(f"| load: every layer in | {retrieve_ms:.1f} | {all_ms:.1f} |")
    print(
        f"| save: copy-out + commit | {store_ms:.1f} | {lw_store_ms:.1f} "
        f"(commit {statistics.median(commit) * 1e3:.1f}) |"
    )


if __name__ == "__main__":
    main()
