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
* ``limit``: a plain contiguous copy of the same bytes.

The engine call, the raw kernel and the limit are sampled round-robin (medians), so a loaded
machine slows them alike.

Bandwidth counts bytes read plus bytes written (2x the KV payload; for ``check``, the payload
read). ``engine/raw`` is the engine's throughput as a fraction of the raw kernel's.

Examples::

    python benchmarks/bench_engine.py                      # llama3-8b, 8192 tokens, CPU tier
    python benchmarks/bench_engine.py --tiers cpu,disk,fs --disk-dir /tmp/lmc-bench
    python benchmarks/bench_engine.py --tiers redis --redis-url redis://127.0.0.1:6379/0

:func:`combined_row` turns a row into a row of ``lmcache-native bench``'s table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lmcache_native import ops
from lmcache_native.bench import _util as bu
from lmcache_native.bench.report import print_table
from lmcache_native.bench.rows import at_least, figures, goal_scope, make_row, number
from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine import CacheEngine, EngineMetadata

TIERS = ("cpu", "disk", "fs", "redis")


def make_caches(
    preset: bu.ModelPreset, num_tokens: int, device: torch.device, seed: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Flash-attn caches just big enough for the request, and its slots.

    The slots are whole blocks in a random block order, as vLLM hands them out.
    """
    b = preset.block_size
    num_blocks = (num_tokens + b - 1) // b
    g = torch.Generator().manual_seed(seed)
    shape: tuple[int, ...] = (preset.num_kv, num_blocks, b, preset.num_kv_heads, preset.head_size)
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


def tier_config(tier: str, redis_url: str | None, scratch: Path) -> dict[str, Any]:
    """The engine configuration keys that put the chunks in ``tier`` only."""
    if tier == "cpu":
        return {}
    if tier == "disk":
        return {"local_cpu": False, "local_disk": str(scratch / "disk")}
    if tier == "fs":
        return {"local_cpu": False, "remote_url": f"fs://{scratch / 'fs'}"}
    if tier == "redis":
        if not redis_url:
            raise SystemExit("--tiers redis needs --redis-url")
        return {"local_cpu": False, "remote_url": redis_url}
    raise SystemExit(f"unknown tier {tier!r}; known: {', '.join(TIERS)}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options (``add_common_args`` included)."""
    bu.add_common_args(parser)
    parser.add_argument("--tokens", type=int, default=8192, help="tokens in the request")
    parser.add_argument("--chunk-size", type=int, default=256, help="engine chunk_size")
    parser.add_argument(
        "--tiers", type=bu.parse_str_list, default=["cpu"], help=f"comma list of {', '.join(TIERS)}"
    )
    parser.add_argument("--disk-dir", type=Path, default=None, help="scratch dir (disk, fs)")
    parser.add_argument("--redis-url", default=None, help="redis://host:port/db for --tiers redis")
    parser.add_argument("--seed", type=int, default=0)


def _row(
    tier: str, op: str, t: dict[str, float], moved: int, limit_moved: int, preset: bu.ModelPreset
) -> dict[str, object]:
    return {
        "tier": tier,
        "op": op,
        "engine_ms": t["engine"] * 1e3,
        "raw_ms": t["raw"] * 1e3,
        "engine_GB/s": bu.gbps(moved, t["engine"]),
        "raw_GB/s": bu.gbps(moved, t["raw"]),
        "limit_GB/s": bu.gbps(limit_moved, t["limit"]),
        "engine/raw": bu.ratio(t["raw"], t["engine"]),
        "engine/limit": bu.ratio(bu.gbps(moved, t["engine"]), bu.gbps(limit_moved, t["limit"])),
        "preset": preset.as_dict(),
    }


def run(args: argparse.Namespace, device: torch.device) -> list[dict[str, object]]:
    """The rows of ``args``: store and retrieve per tier, then check (first tier)."""
    preset = bu.get_preset(args.preset)
    layout = "mla" if preset.mla else "flash_attn"
    n = args.tokens
    if n % args.chunk_size:
        raise SystemExit("--tokens must be a multiple of --chunk-size (whole chunks only)")
    caches, slots = make_caches(preset, n, device, args.seed)
    layers = list(caches.values())
    payload = n * preset.bytes_per_token()
    tokens = torch.arange(1, n + 1, dtype=torch.int64)

    pin = device.type == "cuda"
    big = torch.empty(
        (preset.num_kv, preset.num_layers, n, preset.num_kv_heads * preset.head_size),
        dtype=preset.dtype,
        pin_memory=pin,
    )
    dev_slots = slots.to(device)
    src = torch.empty(big.numel(), dtype=big.dtype, device=device)
    src.view(torch.uint8).fill_(1)
    flat = big.view(-1)

    def limit() -> None:
        flat.copy_(src)

    def timed(
        fns: dict[str, Callable[[], object]], before: dict[str, Callable[[], object]] | None = None
    ) -> dict[str, float]:
        t = bu.time_interleaved(
            {**fns, "limit": limit},
            device=device,
            warmup=args.warmup,
            repeat=args.repeat,
            min_time=args.min_time,
            before=before,
        )
        return {k: v.median for k, v in t.items()}

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
            values.update(tier_config(tier, args.redis_url, scratch))
            engine = CacheEngine(
                LMCacheEngineConfig.from_defaults(**values), EngineMetadata(f"bench/{preset.name}")
            )
            engine.register_kv_caches(caches, layout)

            def store(e: CacheEngine = engine) -> None:
                r = e.store(tokens, dev_slots)
                assert r.num_stored_tokens == n, r
                e.flush()

            def retrieve(e: CacheEngine = engine) -> None:
                r = e.retrieve(tokens, dev_slots)
                assert r.num_retrieved == n, r

            t_store = timed(
                {
                    "raw": lambda: ops.paged_kv_gather(layers, dev_slots, big, layout),
                    "engine": store,
                },
                before={"engine": engine.clear},
            )
            engine.clear()
            store()
            t_retr = timed(
                {
                    "raw": lambda: ops.paged_kv_scatter(big, layers, dev_slots, layout),
                    "engine": retrieve,
                }
            )
            rows.append(_row(tier, "store", t_store, 2 * payload, 2 * payload, preset))
            rows.append(_row(tier, "retrieve", t_retr, 2 * payload, 2 * payload, preset))
            if tier == args.tiers[0]:
                text = ",".join(str(s) for s in slots.tolist())

                def check(e: CacheEngine = engine, text: str = text) -> None:
                    parsed = ops.parse_slot_mapping(text, e.num_slots)
                    e.kv_checksums(parsed, args.chunk_size, False)
                    ops.compress_slot_mapping(parsed)

                t_check = timed(
                    {
                        "raw": lambda: ops.kv_chunk_md5(layers, dev_slots, args.chunk_size, layout),
                        "engine": check,
                    }
                )
                # Hash GB/s = bytes hashed / s; the copy's GB/s counts read + written.
                rows.append(_row("-", "check", t_check, payload, 2 * payload, preset))
            engine.clear()
            engine.close()
    finally:
        if args.disk_dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    for r in rows:
        r["tokens"] = n
    return rows


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark with ``argv`` and prints its table; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    bu.apply_threads(args.threads)
    device = bu.check_device(args.device)
    preset = bu.get_preset(args.preset)
    mib = args.tokens * preset.bytes_per_token() / 2**20
    print(
        f"{preset.describe()}; {args.tokens} tokens, chunk_size {args.chunk_size}, {mib:.0f} MiB KV"
    )
    rows = run(args, device)
    for r in rows:
        print(
            f"  {r['op']} ({r['tier']}): engine/raw {r['engine/raw']:.2f}",
            file=sys.stderr,
            flush=True,
        )
    cols = ["tier", "op", "engine_ms", "raw_ms", "engine_GB/s", "raw_GB/s", "limit_GB/s"]
    cols += ["engine/raw", "engine/limit"]
    print_table(rows, cols, title=f"CacheEngine vs raw kernels ({device.type})")
    bu.write_json(args.json, benchmark="bench_engine", args=args, rows=rows, device=device)
    return 0


def combined_row(row: dict[str, Any], device: str) -> dict[str, Any]:
    """A row of this benchmark -> a row of the combined table.

    Ours is the engine call, the baseline the raw kernel on the same bytes (goal: engine time
    <= 1.3x raw for store and retrieve, <= 1.2x for check), the limit a contiguous copy.
    """
    del device  # the same goals on every device
    op = str(row.get("op"))
    need = 1 / 1.2 if op == "check" else 1 / 1.3
    raw = {"store": "paged_kv_gather", "retrieve": "paged_kv_scatter", "check": "kv_chunk_md5"}
    tier = row.get("tier")
    p = row.get("preset")
    p = p if isinstance(p, dict) else {}
    tokens = row.get("tokens") if isinstance(row.get("tokens"), int) else None
    elem = {"bfloat16": 2, "float16": 2, "float32": 4}.get(str(p.get("dtype")), 0)
    size = (1 if p.get("mla") else 2) * elem
    for key in ("num_layers", "num_kv_heads", "head_size"):
        size *= int(p.get(key, 0))
    return make_row(
        "engine",
        f"{op} ({tier} tier)" if tier not in (None, "-") else op,
        **figures(row, "engine_GB/s", "raw_GB/s", "limit_GB/s"),
        names=(f"CacheEngine.{op}", f"raw {raw.get(op, 'kernel')}", "contiguous copy"),
        tokens=tokens,
        block=p.get("block_size"),
        payload_mb=tokens * size / 1e6 if tokens and size else None,
        ours_ms=number(row.get("engine_ms")),
        goal=(f"base>={need:.2f} (<= {1 / need:.1f}x raw time)", at_least("ours/base", need)),
        in_scope=goal_scope("engine", p.get("name"), tokens),
        op=op,
        tier=tier,
        preset=p.get("name"),
    )
