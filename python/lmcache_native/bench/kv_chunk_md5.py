"""Benchmark of kv_chunk_md5 against single-thread hashlib, xxh3 and a plain copy.

For each layout and token count it times, in the same run:

* ``ours``: ``lmcache_native.ops.kv_chunk_md5`` over every slot of a cache that holds exactly
  ``--tokens`` tokens (whole blocks in a random block order, as vLLM hands them out), all
  layers, ``--chunk-size`` tokens per chunk, straight from the paged layout; per ISA with
  ``--isa`` (CPU);
* ``hashlib``: ``hashlib.md5`` on one thread over the same number of bytes, contiguous (one
  update per layer: the baseline gets no gather to do);
* ``xxh3``: ``xxhash.xxh3_64`` over the same contiguous bytes, for reference (a hash built for
  speed; not what the admin API's checksums use);
* ``limit``: a plain contiguous copy of the same bytes (GB/s counting read + written).

Hash bandwidth is bytes hashed per second (bytes read; a hash writes nothing). All of them are
sampled round-robin after the warm-up, so the drift of a shared machine slows them alike.

Examples::

    python benchmarks/bench_kv_chunk_md5.py --preset llama3-8b --tokens 8k
    python benchmarks/bench_kv_chunk_md5.py --isa all --layouts flash_attn,vllm_cpu --json out.json
    python benchmarks/bench_kv_chunk_md5.py --device cuda --tokens 8k,32k

:func:`combined_row` turns a row into a row of ``lmcache-native bench``'s table.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import xxhash

from lmcache_native import _native
from lmcache_native.bench import _util as bu
from lmcache_native.bench.report import print_table
from lmcache_native.bench.rows import at_least, figures, goal_scope, make_row, number
from lmcache_native.ops import LAYOUTS, kv_cache_shape, kv_chunk_md5
from lmcache_native.ops.kv_chunk_md5 import md5_isa, md5_set_isa, md5_supported_isas


@dataclass
class Setup:
    """Buffers of one (layout, tokens) case."""

    layout: str
    num_tokens: int
    stack: torch.Tensor  # all layers' caches in one allocation, [num_layers, *layer shape]
    caches: list[torch.Tensor]
    slots: torch.Tensor
    payload: int  # bytes hashed per call


def make_setup(preset: bu.ModelPreset, layout: str, num_tokens: int, device: torch.device) -> Setup:
    """A cache of exactly ``num_tokens`` slots (whole blocks) and a slot mapping over all of it."""
    if (layout == "mla") != preset.mla:
        raise ValueError(f"layout {layout!r} does not fit preset {preset.name!r}")
    b = preset.block_size
    num_blocks = math.ceil(num_tokens / b)
    num_tokens = num_blocks * b
    shape = kv_cache_shape(layout, num_blocks, b, preset.num_kv_heads, preset.head_size)
    stack = torch.empty((preset.num_layers, *shape), dtype=preset.dtype, device=device)
    # Random bytes (the hash speed must not depend on them, but zero pages would flatter reads).
    gen = torch.Generator(device=device).manual_seed(0)
    stack.view(torch.uint8).view(-1)[:] = torch.randint(
        0,
        256,
        (stack.numel() * stack.element_size(),),
        dtype=torch.uint8,
        device=device,
        generator=gen,
    )
    order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(1))
    slots = (order[:, None] * b + torch.arange(b)).reshape(-1).to(device)
    payload = stack.numel() * stack.element_size()
    return Setup(layout, num_tokens, stack, list(stack.unbind(0)), slots, payload)


def _host_layers(s: Setup) -> list[memoryview]:
    """Per-layer contiguous host bytes of the same size (a copy when the cache is on a GPU)."""
    host = s.stack if s.stack.device.type == "cpu" else s.stack.cpu()
    flat = host.view(torch.uint8).reshape(host.shape[0], -1)
    return [memoryview(flat[i].numpy().data) for i in range(flat.shape[0])]


def measure(args: argparse.Namespace, s: Setup, isas: list[str]) -> dict[str, float]:
    """Seconds per call of ours (per ISA), hashlib, xxh3 and the contiguous copy.

    All are sampled round-robin (``bu.time_interleaved``), so a drift of a shared machine slows
    them alike and the ratios stay meaningful.
    """
    layers = _host_layers(s)
    dev = s.stack.device
    src = s.stack.view(-1)
    dst = torch.empty_like(src)

    def ours(isa: str) -> Callable[[], None]:
        def run() -> None:
            if isa != "cuda":
                md5_set_isa(isa)
            kv_chunk_md5(s.caches, s.slots, args.chunk_size, s.layout)

        return run

    def run_hashlib() -> None:
        for mv in layers:
            hashlib.md5(mv).digest()

    def run_xxh3() -> None:
        for mv in layers:
            xxhash.xxh3_64(mv).intdigest()

    def run_copy() -> None:
        dst.copy_(src)

    fns: dict[str, Callable[[], object]] = {f"ours:{isa}": ours(isa) for isa in isas}
    fns.update({"hashlib": run_hashlib, "xxh3": run_xxh3, "copy": run_copy})
    timings = bu.time_interleaved(
        fns, device=dev, warmup=args.warmup, repeat=args.repeat, min_time=args.min_time
    )
    return {name: t.median for name, t in timings.items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options (``add_common_args`` included)."""
    bu.add_common_args(parser)
    parser.add_argument(
        "--tokens",
        type=bu.parse_int_list,
        default=None,
        help="e.g. 1024,8k,32k (default: 8k on the CPU, 8k,32k on CUDA)",
    )
    parser.add_argument("--chunk-size", type=int, default=256, help="tokens per chunk")
    parser.add_argument(
        "--layouts", type=bu.parse_str_list, default=None, help="default: flash_attn (mla for MLA)"
    )
    parser.add_argument(
        "--isa",
        type=bu.parse_str_list,
        default=None,
        help="CPU MD5 paths to time: scalar,avx2,avx512 or all (default: the auto-selected one)",
    )


def run_case(
    args: argparse.Namespace,
    preset: bu.ModelPreset,
    layout: str,
    tokens: int,
    dev: torch.device,
    isas: list[str],
) -> list[dict[str, object]]:
    """The rows of one (layout, tokens) case, one per ISA in ``isas``."""
    s = make_setup(preset, layout, tokens, dev)
    t = measure(args, s, isas)
    base = {
        "hashlib_GBps": bu.gbps(s.payload, t["hashlib"]),
        "xxh3_GBps": bu.gbps(s.payload, t["xxh3"]),
        "limit_GBps": bu.gbps(2 * s.payload, t["copy"]),
    }
    rows: list[dict[str, object]] = []
    for isa in isas:
        ours = t[f"ours:{isa}"]
        ours_gbps = bu.gbps(s.payload, ours)
        row: dict[str, object] = {
            "layout": layout,
            "tokens": s.num_tokens,
            "isa": isa,
            "threads": _native.num_threads() if dev.type == "cpu" else "-",
            "MB": s.payload / 1e6,
            "ours_GBps": ours_gbps,
            **base,
            "ours_ms": ours * 1e3,
            "ours/hashlib": bu.ratio(t["hashlib"], ours),
            "ours/xxh3": bu.ratio(t["xxh3"], ours),
            "ours/limit": bu.ratio(ours_gbps, base["limit_GBps"]),
            "preset": preset.as_dict(),
        }
        rows.append(row)
    return rows


def pick_isas(
    parser: argparse.ArgumentParser, wanted: list[str] | None, dev: torch.device
) -> list[str]:
    """The MD5 paths to time: ``cuda`` on a GPU, else ``wanted`` (``all``, or the auto one)."""
    supported = md5_supported_isas()
    if dev.type == "cuda":
        return ["cuda"]
    if wanted is None:
        return [md5_isa()]
    if wanted == ["all"]:
        return supported
    for name in wanted:
        if name not in supported:
            parser.error(f"--isa: {name!r} is not supported here; supported: {supported}")
    return wanted


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark with ``argv`` and prints its table; returns the exit code."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    parser.set_defaults(repeat=5, warmup=1)
    args = parser.parse_args(argv)

    dev = bu.check_device(args.device)
    bu.apply_threads(args.threads)
    preset = bu.get_preset(args.preset)
    tokens = args.tokens or ([8192, 32768] if dev.type == "cuda" else [8192])
    layouts = args.layouts or (["mla"] if preset.mla else ["flash_attn"])
    for name in layouts:
        if name not in LAYOUTS:
            parser.error(f"--layouts: unknown layout {name!r}; known: {', '.join(LAYOUTS)}")
    isas = pick_isas(parser, args.isa, dev)

    rows: list[dict[str, object]] = []
    initial_isa = md5_isa()
    try:
        for layout in layouts:
            for n in tokens:
                for row in run_case(args, preset, layout, n, dev, isas):
                    rows.append(row)
                    print(
                        f"  {layout:>10} {row['tokens']:>6} tok {row['isa']:>6}: "
                        f"ours/hashlib {row['ours/hashlib']:.1f}, "
                        f"ours/limit {row['ours/limit']:.2f}",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        md5_set_isa(initial_isa)

    cols = ["layout", "tokens", "isa", "threads", "MB", "ours_GBps", "hashlib_GBps", "xxh3_GBps"]
    cols += ["limit_GBps", "ours/hashlib", "ours/xxh3", "ours/limit"]
    title = (
        f"kv_chunk_md5 on {dev} -- {preset.describe()}, chunk {args.chunk_size}; hash GB/s = "
        "bytes hashed / s (hashlib, xxh3: one thread, contiguous); limit = contiguous copy, "
        "GB/s = (read + written) / s"
    )
    print_table(rows, cols, title)
    bu.write_json(args.json, benchmark="kv_chunk_md5", args=args, rows=rows, device=dev)
    return 0


def combined_row(row: dict[str, Any], device: str) -> dict[str, Any]:
    """A row of this benchmark -> a row of the combined table (hash GB/s = bytes hashed / s)."""
    need = 50 if device == "cuda" else 8
    preset = row.get("preset")
    name = preset.get("name") if isinstance(preset, dict) else None
    block = preset.get("block_size") if isinstance(preset, dict) else None
    return make_row(
        "md5",
        f"{row.get('layout')} {row.get('isa')}",
        **figures(row, "ours_GBps", "hashlib_GBps", "limit_GBps"),
        names=("kv_chunk_md5", "hashlib.md5, 1 thread", "contiguous copy"),
        tokens=row.get("tokens"),
        block=block,
        payload_mb=number(row.get("MB")),
        ours_ms=number(row.get("ours_ms")),
        goal=(f"base>={need}", at_least("ours/base", need)),
        in_scope=goal_scope("md5", name, row.get("tokens")),
        layout=row.get("layout"),
        isa=row.get("isa"),
        xxh3=number(row.get("xxh3_GBps")),
        preset=name,
    )
