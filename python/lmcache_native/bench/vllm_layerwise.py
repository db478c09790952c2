"""Layer-wise loads and saves of the vLLM connector against the whole-forward path, one run.

A CPU-tier hit of ``--tokens`` tokens on ``--layers`` layers of vLLM's CPU cache layout:

- load: ``CacheEngine.retrieve`` (every layer before the forward may start) against
  ``LayerwiseLoad`` (the forward may start once layer 0 is in: "first layer"; "all layers"
  is when the last one is);
- save: ``CacheEngine.store`` after the forward against the layer-wise saver (the per-layer
  copies run as each layer is written; "commit" is what is left for ``wait_for_save``).

Medians of ``--repeat`` runs, in milliseconds. Example::

    python benchmarks/bench_vllm_layerwise.py --tokens 4096 --layers 32 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine import CacheEngine, EngineMetadata
from lmcache_native.integration.vllm.layerwise import (
    LayerCaches,
    LayerwiseSaver,
    Staging,
    StoreJob,
)
from lmcache_native.integration.vllm.layerwise_load import LayerwiseLoad, LoadJob
from lmcache_native.integration.vllm.metadata import slot_mapping

#: Tokens per paged block of the ``vllm_cpu`` caches.
BLOCK = 32
#: Tokens per engine chunk.
CHUNK = 256


@dataclass(frozen=True)
class _Prompt:
    """One prompt's tokens and its slots: ``src`` holds the KV, ``dst`` receives the loads."""

    tokens: list[int]
    src: torch.Tensor
    dst: torch.Tensor


def _median_ms(fn: Callable[[], float | None], repeat: int) -> float:
    """Median over ``repeat`` calls, in ms: the seconds ``fn`` returns, else its wall time."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        got = fn()
        times.append((got if got is not None else time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _save_ms(
    engine: CacheEngine, layer_caches: LayerCaches, prompt: _Prompt, repeat: int
) -> tuple[float, float, float]:
    """Whole-forward store, layer-wise store and the layer-wise commit alone (median ms)."""

    def whole_store() -> None:
        engine.clear()
        engine.store(prompt.tokens, prompt.src)

    saver = LayerwiseSaver(engine, layer_caches)
    commit: list[float] = []

    def layerwise_store() -> None:
        engine.clear()
        job = StoreJob(prompt.tokens, prompt.src)
        saver.begin([job])
        for name in layer_caches.names:
            saver.save_layer(name)
        t0 = time.perf_counter()
        saver.store(job)
        commit.append(time.perf_counter() - t0)
        saver.end()

    store_ms = _median_ms(whole_store, repeat)
    layerwise_ms = _median_ms(layerwise_store, repeat)
    return store_ms, layerwise_ms, statistics.median(commit) * 1e3


def _load_ms(
    engine: CacheEngine, layer_caches: LayerCaches, prompt: _Prompt, repeat: int
) -> tuple[float, float, float]:
    """Whole-forward retrieve, layer-wise until layer 0 and until every layer (median ms)."""
    engine.store(prompt.tokens, prompt.src)

    def retrieve() -> None:
        engine.retrieve(prompt.tokens, prompt.dst)

    staging = Staging(layer_caches)

    def start() -> LayerwiseLoad:
        load = LayerwiseLoad(engine, layer_caches, [LoadJob(prompt.tokens, prompt.dst)], staging)
        load.start()
        return load

    def first_layer() -> float:
        t0 = time.perf_counter()
        load = start()
        load.wait_layer(layer_caches.names[0])
        dt = time.perf_counter() - t0
        load.wait()
        return dt

    def all_layers() -> None:
        start().wait()

    retrieve_ms = _median_ms(retrieve, repeat)
    return retrieve_ms, _median_ms(first_layer, repeat), _median_ms(all_layers, repeat)


def _parser() -> argparse.ArgumentParser:
    """The benchmark's options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096, help="prompt tokens (whole blocks)")
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--heads", type=int, default=8, help="KV heads")
    p.add_argument("--head-size", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--repeat", type=int, default=5)
    return p


def main(argv: list[str] | None = None) -> int:
    """Runs the comparison with ``argv`` and prints one table; returns the exit code."""
    p = _parser()
    args = p.parse_args(argv)
    if args.tokens <= 0 or args.tokens % BLOCK:
        p.error(f"--tokens must be a positive multiple of the block size {BLOCK}")
    dtype: torch.dtype = getattr(torch, args.dtype)
    blocks = args.tokens // BLOCK
    caches = {
        f"model.layers.{i}.self_attn.attn": torch.randn(
            2 * blocks, args.heads, BLOCK, 2 * args.head_size
        ).to(dtype)
        for i in range(args.layers)
    }
    nbytes = 2 * args.layers * args.heads * args.head_size * dtype.itemsize * args.tokens
    cfg = LMCacheEngineConfig.from_defaults(chunk_size=CHUNK, max_local_cpu_size=3 * nbytes / 2**30)
    engine = CacheEngine(cfg, EngineMetadata(model_name="bench"))
    engine.register_kv_caches(caches, "vllm_cpu")
    layer_caches = LayerCaches.of(caches, "vllm_cpu")
    prompt = _Prompt(
        tokens=list(range(args.tokens)),
        src=slot_mapping(list(range(blocks)), BLOCK, args.tokens),
        dst=slot_mapping(list(range(blocks, 2 * blocks)), BLOCK, args.tokens),
    )
    try:
        store_ms, lw_store_ms, commit_ms = _save_ms(engine, layer_caches, prompt, args.repeat)
        retrieve_ms, first_ms, all_ms = _load_ms(engine, layer_caches, prompt, args.repeat)
    finally:
        engine.close()
    print(
        f"{args.tokens} tokens x {args.layers} layers, {args.dtype}, {nbytes / 2**20:.0f} MiB, "
        f"{torch.get_num_threads()} torch threads, median of {args.repeat}"
    )
    print("| path | whole-forward (ms) | layer-wise (ms) |")
    print("|---|---|---|")
    print(f"| load: forward may start after | {retrieve_ms:.1f} | {first_ms:.1f} (layer 0) |")
    print(f"| load: every layer in | {retrieve_ms:.1f} | {all_ms:.1f} |")
    print(
        f"| save: copy-out + commit | {store_ms:.1f} | {lw_store_ms:.1f} (commit {commit_ms:.1f}) |"
    )
    return 0
