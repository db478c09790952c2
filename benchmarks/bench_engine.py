"""Benchmark of the CacheEngine against the raw kernels it drives, on the same bytes.

For one request of ``--tokens`` tokens of a model preset (default: 8K tokens of llama3-8b), in
the same run:

* ``store``: ``CacheEngine.store`` of the whole request into an empty tier (keys, presence
  check, pooled chunk buffers, one batched native gather into all of them, tier puts; for
  disk/fs/redis also the background write, waited for with ``flush``) against ``raw``: one
  ``ops.paged_kv_gather`` call of all tokens into one preallocated buffer;
* ``retrieve``: ``CacheEngine.retrieve`` of the whole request (all chunks hit; for disk/fs/redis
  the tier is read, the CPU tier being off; one batched native scatter) against ``raw``: one
  ``ops.paged_kv_scatter`` call;
* ``check``: what ``GET /cache/kvcache/check`` does for the request's slots (parse the slot
  string, ``CacheEngine.kv_checksums``, compress the slot list) against ``raw``:
  ``ops.kv_chunk_md5`` on the same slots;
* ``limit``: a plain contiguous copy of the same bytes (``store``/``retrieve`` rows).

Engine and raw calls are timed alternately in one loop (medians), so a loaded machine slows
both alike.

Bandwidth counts bytes read plus bytes written (2x the KV payload; for ``check``, the payload
read). ``engine/raw`` is the engine's throughput as a fraction of the raw kernel's.

Examples::

    python benchmarks/bench_engine.py                      # llama3-8b, 8192 tokens, CPU tier
    python benchmarks/bench_engine.py --tiers cpu,disk,fs --disk-dir /tmp/lmc-bench
    python benchmarks/bench_engine.py --tiers redis --redis-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import (
    ModelPreset,
    add_common_args,
    apply_threads,
    check_device,
    gbps,
    get_preset,
    parse_str_list,
    preset_dict,
    print_table,
    ratio,
    synchronize,
    time_fn,
    write_json,
)
from lmcache_native import ops
from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine import CacheEngine, EngineMetadata

TIERS = ("cpu", "disk", "fs", "redis")


def make_caches(
    preset: ModelPreset, num_tokens: int, device: torch.device, seed: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """flash-attn caches just big enough for the request, and its slots (whole blocks in a
    random block order, as vLLM hands them out)."""
    b = preset.block_size
    num_blocks = (num_tokens + b - 1) // b
    g = torch.Generator().manual_seed(seed)
    shape = (preset.num_kv, num_blocks, b, preset.num_kv_heads, preset.head_size)
    if preset.mla:
        shape = (num_blocks, b, preset.head_size)
    caches = {}
    for i in range(preset.num_layers):
        t = torch.empty(shape, dtype=preset.dtype, device=device)
        t.view(torch.uint8).copy_(
            torch.randint(0, 256, t.view(torch.uint8).shape, dtype=torch.uint8, generator=g)
        )
        caches[f"model.layers.{i}.self_attn"] = t
    order = torch.randperm(num_blocks, generator=g)
    slots = (order[:, None] * b + torch.arange(b)[None, :]).reshape(-1)[:num_tokens]
    return caches, slots.to(torch.int64)


def tier_config(tier: str, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    if tier == "cpu":
        return {}
    if tier == "disk":
        return {"local_cpu": False, "local_disk": str(scratch / "disk")}
    if tier == "fs":
        return {"local_cpu": False, "remote_url": f"fs://{scratch / 'fs'}"}
    if tier == "redis":
        if not args.redis_url:
            raise SystemExit("--tiers redis needs --redis-url")
        return {"local_cpu": False, "remote_url": args.redis_url}
    raise SystemExit(f"unknown tier {tier!r}; known: {', '.join(TIERS)}")


def time_limit_copy(host: torch.Tensor, device: torch.device, warmup: int, repeat: int) -> float:
    """Median seconds of one contiguous copy of ``host``'s bytes from ``device`` into it."""
    src = torch.empty(host.numel(), dtype=host.dtype, device=device)
    src.view(torch.uint8).fill_(1)
    dst = host.view(-1)
    return time_fn(lambda: dst.copy_(src), device=device, warmup=warmup, repeat=repeat).median


def paired(
    raw: Callable[[], object],
    engine: Callable[[], object],
    setup: Callable[[], object],
    warmup: int,
    repeat: int,
    device: torch.device,
) -> tuple[float, float]:
    """Median seconds of ``raw`` and of ``engine``, timed alternately in one loop so that both
    see the same machine load; ``setup`` runs untimed before every ``engine`` call."""
    samples: tuple[list[float], list[float]] = ([], [])
    for i in range(warmup + max(1, repeat)):
        for j, fn in enumerate((raw, engine)):
            if j == 1:
                setup()
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            if i >= warmup:
                samples[j].append(time.perf_counter() - t0)
    return statistics.median(samples[0]), statistics.median(samples[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--tokens", type=int, default=8192, help="tokens in the request")
    parser.add_argument("--chunk-size", type=int, default=256, help="engine chunk_size")
    parser.add_argument(
        "--tiers", type=parse_str_list, default=["cpu"], help=f"comma list of {', '.join(TIERS)}"
    )
    parser.add_argument("--disk-dir", type=Path, default=None, help="scratch dir (disk, fs)")
    parser.add_argument("--redis-url", default=None, help="redis://host:port/db for --tiers redis")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    apply_threads(args.threads)
    device = check_device(args.device)
    preset = get_preset(args.preset)
    layout = "mla" if preset.mla else "flash_attn"
    n = args.tokens
    if n % args.chunk_size:
        raise SystemExit("--tokens must be a multiple of --chunk-size (whole chunks only)")
    caches, slots = make_caches(preset, n, device, args.seed)
    layers = list(caches.values())
    payload = n * preset.bytes_per_token()
    tokens = torch.arange(1, n + 1, dtype=torch.int64)
    mib = payload / 2**20
    print(f"{preset.describe()}; {n} tokens, chunk_size {args.chunk_size}, {mib:.0f} MiB KV")

    pin = device.type == "cuda"
    big = torch.empty(
        (preset.num_kv, preset.num_layers, n, preset.num_kv_heads * preset.head_size),
        dtype=preset.dtype,
        pin_memory=pin,
    )
    dev_slots = slots.to(device)

    def raw_gather() -> None:
        ops.paged_kv_gather(layers, dev_slots, big, layout)

    def raw_scatter() -> None:
        ops.paged_kv_scatter(big, layers, dev_slots, layout)

    t_limit = time_limit_copy(big, device, args.warmup, args.repeat)

    rows: list[dict[str, object]] = []
    scratch = Path(args.disk_dir or tempfile.mkdtemp(prefix="lmc-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        for tier in args.tiers:
            values: dict[str, Any] = {
                "chunk_size": args.chunk_size,
                "max_local_cpu_size": payload * 1.25 / 1024**3,
                "max_local_disk_size": payload * 1.25 / 1024**3,
            }
            values.update(tier_config(tier, args, scratch))
            engine = CacheEngine(
                LMCacheEngineConfig.from_defaults(**values), EngineMetadata(f"bench/{preset.name}")
            )
            engine.register_kv_caches(caches, layout)

            def clear(e: CacheEngine = engine) -> None:
                e.clear()

            def store(e: CacheEngine = engine) -> None:
                r = e.store(tokens, dev_slots)
                assert r.num_stored_tokens == n, r
                e.flush()

            def retrieve(e: CacheEngine = engine) -> None:
                r = e.retrieve(tokens, dev_slots)
                assert r.num_retrieved == n, r

            w, r = args.warmup, args.repeat
            t_raw_g, t_store = paired(raw_gather, store, clear, w, r, device)
            clear()
            store()
            t_raw_s, t_retr = paired(raw_scatter, retrieve, lambda: None, w, r, device)
            for op, t_eng, t_raw in (("store", t_store, t_raw_g), ("retrieve", t_retr, t_raw_s)):
                rows.append(
                    {
                        "tier": tier,
                        "op": op,
                        "engine_ms": t_eng * 1e3,
                        "raw_ms": t_raw * 1e3,
                        "engine_GB/s": gbps(2 * payload, t_eng),
                        "raw_GB/s": gbps(2 * payload, t_raw),
                        "limit_GB/s": gbps(2 * payload, t_limit),
                        "engine/raw": ratio(t_raw, t_eng),
                        "engine/limit": ratio(t_limit, t_eng),
                    }
                )
            if tier == args.tiers[0]:
                text = ",".join(str(s) for s in slots.tolist())

                def check(e: CacheEngine = engine, text: str = text) -> None:
                    parsed = ops.parse_slot_mapping(text, e.num_slots)
                    e.kv_checksums(parsed, args.chunk_size, False)
                    ops.compress_slot_mapping(parsed)

                def raw_md5() -> None:
                    ops.kv_chunk_md5(layers, dev_slots, args.chunk_size, layout)

                t_md5, t_check = paired(raw_md5, check, lambda: None, 1, args.repeat, device)
                rows.append(
                    {
                        "tier": "-",
                        "op": "check",
                        "engine_ms": t_check * 1e3,
                        "raw_ms": t_md5 * 1e3,
                        "engine_GB/s": gbps(payload, t_check),
                        "raw_GB/s": gbps(payload, t_md5),
                        "limit_GB/s": float("nan"),
                        "engine/raw": ratio(t_md5, t_check),
                        "engine/limit": float("nan"),
                    }
                )
            engine.clear()
            engine.close()
    finally:
        if args.disk_dir is None:
            shutil.rmtree(scratch, ignore_errors=True)

    cols = [
        "tier",
        "op",
        "engine_ms",
        "raw_ms",
        "engine_GB/s",
        "raw_GB/s",
        "limit_GB/s",
        "engine/raw",
        "engine/limit",
    ]
    print_table(rows, cols, title=f"CacheEngine vs raw kernels ({device.type})")
    for r in rows:
        r["preset"] = preset_dict(preset)
    write_json(args.json, benchmark="bench_engine", args=args, rows=rows, device=device)


if __name__ == "__main__":
    main()
