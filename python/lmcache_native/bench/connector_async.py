"""What the connector's loads and saves cost vLLM's forward thread, sync against async.

The connector's real ``WorkerSide`` on a ``vllm_cpu`` paged cache, over a CPU tier and a disk
tier, driven with the metadata vLLM hands it. One prompt of ``--tokens`` tokens, three cases,
each in both modes, in the same run:

* ``cpu-tier load``: the prompt's chunks are in the CPU tier; ``start_load_kv`` with
  ``async_load`` off (sync) or on (async: the worker names the request in ``get_finished``).
* ``disk-tier load``: the same with the CPU tier emptied before each load (read from disk).
* ``save``: ``wait_for_save`` of the whole prompt into a fresh engine, with
  ``enable_async_saving`` off or on; "until done" also waits for the stores and the disk writes.
* ``save, warm pool``: the same into one engine per mode whose CPU tier is emptied before each
  save, so the copy reuses the pool's buffers (a server that has run a while).
  With async saves the forward thread's time is the copy out of vLLM's blocks (one native
  gather into pool buffers); the commit runs behind it.

Per case and mode (median of ``--repeat``): ``forward_ms``, the time the call held the forward
thread, and ``done_ms``, until the work was done. The sync mode is the baseline of the async one
(``sync/ours``: the forward thread's speed-up). A plain ``memcpy`` of the same bytes is the
limit of the CPU-tier load (``limit/done``) and of a save's time on the forward thread
(``limit/forward``).

Example::

    python benchmarks/bench_connector_async.py --tokens 4096 --layers 16 --heads 8 \
        --head-size 128 --repeat 7
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from lmcache_native.bench._util import load_average, time_interleaved, write_json
from lmcache_native.bench.report import print_table
from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine import CacheEngine, EngineMetadata
from lmcache_native.integration.vllm.metadata import (
    LMCacheNativeConnectorMetadata,
    LoadSpec,
    SaveSpec,
)
from lmcache_native.integration.vllm.worker import WorkerSide

COLUMNS: tuple[str, ...] = (
    "case",
    "mode",
    "forward_ms",
    "done_ms",
    "sync_forward_ms",
    "sync/ours",
    "limit_ms",
    "limit/done",
    "limit/forward",
)


def _worker(args: argparse.Namespace, tmp: str, **cfg: Any) -> WorkerSide:
    """A ``WorkerSide`` with its own engine on fresh ``vllm_cpu`` caches, CPU over disk tier."""
    config = LMCacheEngineConfig.from_defaults(
        chunk_size=args.chunk_size,
        max_local_cpu_size=4.0,
        local_disk=tmp,
        max_local_disk_size=4.0,
        **cfg,
    )
    nb = 2 * args.tokens // args.block_size + 2
    caches = {
        f"l{i}": torch.randn(nb, args.heads, args.block_size, 2 * args.head_size).bfloat16()
        for i in range(args.layers)
    }
    vllm_config: Any = SimpleNamespace(cache_config=SimpleNamespace(block_size=args.block_size))
    worker = WorkerSide(vllm_config, None, config, "bench-async", rank=0, world_size=1)
    engine = CacheEngine(config, EngineMetadata(model_name="bench/async"))
    engine.register_kv_caches(caches, "vllm_cpu")
    worker.engine = engine
    return worker


def _until_finished(worker: WorkerSide) -> None:
    """Polls ``get_finished`` as vLLM does each step until a background load is reported."""
    while not worker.get_finished(set())[1]:
        time.sleep(0.0002)


def _loads(
    worker: WorkerSide,
    args: argparse.Namespace,
    name: str,
    tokens: list[int],
    blocks: list[int],
    before: Callable[[], object],
) -> dict[str, tuple[float, float]]:
    """Median (forward, done) seconds of sync and async loads of ``tokens`` into ``blocks``."""
    out: dict[str, tuple[float, float]] = {}
    for mode in ("sync", "async"):
        fwd, done = [], []
        for i in range(args.repeat):
            before()
            spec = LoadSpec(
                f"{name}-{mode}{i}", tokens, blocks, 0, len(tokens) - 1, async_load=mode == "async"
            )
            t0 = time.perf_counter()
            worker.start_load_kv(LMCacheNativeConnectorMetadata(loads=[spec]))
            t1 = time.perf_counter()
            if mode == "async":
                _until_finished(worker)
            t2 = time.perf_counter()
            if worker.take_load_errors():
                raise RuntimeError(f"{name} {mode}: the load reported failed blocks")
            fwd.append(t1 - t0)
            done.append(t2 - t0)
        out[mode] = (statistics.median(fwd), statistics.median(done))
    return out


def _save_once(
    worker: WorkerSide, args: argparse.Namespace, blocks: list[int], i: int
) -> tuple[float, float]:
    """(forward, done) seconds of one whole-prompt save of fresh tokens (``i``) by ``worker``."""
    tokens = list(range(50_000 + i * args.tokens, 50_000 + (i + 1) * args.tokens))
    meta = LMCacheNativeConnectorMetadata(saves=[SaveSpec(f"s{i}", tokens, blocks, args.tokens)])
    stored = worker.stats.stored_tokens
    t0 = time.perf_counter()
    worker.wait_for_save(meta)
    t1 = time.perf_counter()
    worker.wait_saves()
    engine = worker.engine
    assert engine is not None
    flushed = engine.flush(120)
    t2 = time.perf_counter()
    stored = worker.stats.stored_tokens - stored
    if not flushed or stored != args.tokens:
        raise RuntimeError(f"save: stored {stored} of {args.tokens} tokens")
    # NOTE: the kernel writes the files back later; done here, not during the next save's copy.
    os.sync()
    return t1 - t0, t2 - t0


def _saves(
    args: argparse.Namespace, blocks: list[int], warm: bool
) -> dict[str, tuple[float, float]]:
    """Median (forward, done) seconds of a whole-prompt save, sync and async, interleaved.

    Each save goes to a fresh engine (its pool's memory is new: the copy pays the page
    faults), or (``warm``) to one engine per mode whose CPU tier is emptied before each save,
    so the copy reuses the pool's buffers as it does once a server has run a while.
    """
    modes: dict[str, dict[str, Any]] = {"sync": {}, "async": {"enable_async_saving": True}}
    times: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
    with contextlib.ExitStack() as stack:
        warm_workers: dict[str, WorkerSide] = {}
        for mode, extra in modes.items() if warm else ():
            warm_worker = _worker(
                args, stack.enter_context(tempfile.TemporaryDirectory()), extra_config=extra
            )
            stack.callback(warm_worker.close)
            _save_once(warm_worker, args, blocks, args.repeat)  # faults the pool's memory in
            warm_workers[mode] = warm_worker
        for i in range(args.repeat):
            # NOTE: the order alternates, so neither mode always runs right after the other.
            order = list(modes.items()) if i % 2 == 0 else list(modes.items())[::-1]
            for mode, extra in order:
                worker = warm_workers.get(mode)
                if worker is not None:
                    engine = worker.engine
                    assert engine is not None
                    engine.clear(["LocalCPUBackend"])
                    times[mode].append(_save_once(worker, args, blocks, i))
                    continue
                with tempfile.TemporaryDirectory() as fresh:
                    one = _worker(args, fresh, extra_config=extra)
                    try:
                        times[mode].append(_save_once(one, args, blocks, i))
                    finally:
                        one.close()
    return {
        mode: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts))
        for mode, ts in times.items()
    }


def _rows(
    results: dict[str, dict[str, tuple[float, float]]],
    limits: dict[str, float],
    forward_limits: dict[str, float] | None = None,
) -> list[dict[str, object]]:
    """One row per case and mode; the sync mode is the baseline.

    ``limits`` is a case's limit until done, ``forward_limits`` its limit on the forward thread.
    """
    rows: list[dict[str, object]] = []
    forward_limits = forward_limits or {}
    for case, modes in results.items():
        base_fwd = modes["sync"][0]
        limit = limits.get(case)
        fwd_limit = forward_limits.get(case)
        shown = limit if limit is not None else fwd_limit
        for mode, (fwd, done) in modes.items():
            rows.append(
                {
                    "case": case,
                    "mode": mode,
                    "forward_ms": fwd * 1e3,
                    "done_ms": done * 1e3,
                    "sync_forward_ms": base_fwd * 1e3,
                    "sync/ours": base_fwd / fwd,
                    "limit_ms": None if shown is None else shown * 1e3,
                    "limit/done": None if limit is None else limit / done,
                    "limit/forward": None if fwd_limit is None else fwd_limit / fwd,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark with ``argv`` and prints its figures; returns the exit code."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096, help="prompt tokens (whole chunks)")
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--heads", type=int, default=8, help="KV heads")
    p.add_argument("--head-size", type=int, default=128)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write results")
    args = p.parse_args(argv)
    if args.tokens % args.chunk_size or args.tokens % args.block_size:
        p.error("--tokens must be a multiple of --chunk-size and --block-size")

    torch.manual_seed(0)
    nb = args.tokens // args.block_size
    src = list(range(1, nb + 1))
    dst = list(range(nb + 1, 2 * nb + 1))
    tokens = list(range(1000, 1000 + args.tokens))
    kv_bytes = args.tokens * args.layers * 2 * args.heads * args.head_size * 2

    # The limit of a CPU-tier load and of a save's copy-out: one contiguous copy of the bytes.
    a, b = torch.empty(kv_bytes, dtype=torch.uint8), torch.ones(kv_bytes, dtype=torch.uint8)
    memcpy_s = time_interleaved({"memcpy": lambda: a.copy_(b)}, repeat=args.repeat)["memcpy"]

    results: dict[str, dict[str, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        worker = _worker(args, tmp)
        engine = worker.engine
        assert engine is not None
        worker.wait_for_save(
            LMCacheNativeConnectorMetadata(saves=[SaveSpec("s", tokens, src, args.tokens)])
        )
        if not engine.flush(120):
            raise RuntimeError("the prompt's chunks were not all written")
        results["cpu-tier load"] = _loads(worker, args, "cpu", tokens, dst, lambda: None)
        results["disk-tier load"] = _loads(
            worker, args, "disk", tokens, dst, lambda: engine.clear(["LocalCPUBackend"])
        )
        worker.close()
    results["save"] = _saves(args, src, warm=False)
    results["save, warm pool"] = _saves(args, src, warm=True)

    memcpy = memcpy_s.median
    rows = _rows(results, {"cpu-tier load": memcpy}, {"save": memcpy, "save, warm pool": memcpy})
    print(
        f"{args.tokens} tokens, {args.layers} layers, {args.heads} KV heads x {args.head_size}, "
        f"bf16 ({kv_bytes / 1e6:.0f} MB), chunk {args.chunk_size}, block {args.block_size}, "
        f"median of {args.repeat}; load average {load_average()}"
    )
    print_table(rows, COLUMNS)
    write_json(args.json, benchmark="connector_async", args=args, rows=rows)
    return 0
