"""Benchmark of paged_kv_gather / paged_kv_scatter against torch indexing and a plain copy.

For each layout, token count and direction it times, in the same run:

* ``ours``: ``lmcache_native.ops.paged_kv_gather`` / ``paged_kv_scatter`` (all layers, one call);
* ``baseline``: the same copy written with torch advanced indexing, one layer at a time (what a
  pure-torch connector does);
* ``limit``: a plain contiguous copy of the same number of bytes (the cache and the chunk have
  the same size here, so it is ``chunk.copy_(cache)`` / ``cache.copy_(chunk)``);
* with ``--device cuda`` also ``memcpy``: ``cudaMemcpyAsync`` of the same bytes between pinned
  host memory and the device (torch ``copy_(non_blocking=True)``), the PCIe limit.

Bandwidth counts bytes read plus bytes written (2x the payload). Slots are whole blocks in a
random block order (``--pattern blocks``, what vLLM hands out) or a random permutation of slots
(``--pattern random``, the worst case).

Examples::

    python benchmarks/bench_paged_kv_copy.py --preset llama3-8b --tokens 1024,8192
    python benchmarks/bench_paged_kv_copy.py --device cuda --chunk-on host --block-sizes 16,256

:func:`combined_row` turns a row into a row of ``lmcache-native bench``'s table.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from lmcache_native.bench._util import (
    ModelPreset,
    add_common_args,
    apply_threads,
    check_device,
    gbps,
    get_preset,
    parse_int_list,
    parse_str_list,
    ratio,
    time_interleaved,
    write_json,
)
from lmcache_native.bench.report import print_table
from lmcache_native.bench.rows import all_of, at_least, figures, goal_scope, make_row, number
from lmcache_native.bench.torch_baselines import torch_put_rows, torch_rows
from lmcache_native.ops import (
    LAYOUTS,
    copy_isa,
    copy_set_isa,
    kv_cache_shape,
    paged_kv_gather,
    paged_kv_scatter,
)

DIRECTIONS = ("gather", "scatter", "both")


@dataclass
class Setup:
    """Buffers of one (layout, tokens, block size) case."""

    layout: str
    num_tokens: int
    block_size: int
    stack: torch.Tensor  # all layers' caches in one allocation, [num_layers, *layer shape]
    caches: list[torch.Tensor]
    slots: torch.Tensor
    chunk: torch.Tensor
    payload: int  # bytes moved one way


def make_setup(
    preset: ModelPreset,
    layout: str,
    num_tokens: int,
    block_size: int,
    device: torch.device,
    chunk_on: str,
    pattern: str,
) -> Setup:
    """Allocates a cache holding exactly ``num_tokens`` slots, its slot mapping and a chunk."""
    if (layout == "mla") != preset.mla:
        raise ValueError(
            f"layout {layout!r} does not fit preset {preset.name!r} (mla={preset.mla})"
        )
    num_blocks = math.ceil(num_tokens / block_size)
    num_tokens = num_blocks * block_size  # whole blocks: cache bytes == chunk bytes
    h = preset.num_kv_heads
    shape = kv_cache_shape(layout, num_blocks, block_size, h, preset.head_size)
    stack = torch.empty((preset.num_layers, *shape), dtype=preset.dtype, device=device)
    # NOTE: touch every page (and avoid the kernel's shared zero page) before timing.
    stack.view(torch.uint8).fill_(0x3C)
    gen = torch.Generator().manual_seed(0)
    if pattern == "blocks":
        order = torch.randperm(num_blocks, generator=gen)
        slots = (order[:, None] * block_size + torch.arange(block_size)).reshape(-1)
    else:
        slots = torch.randperm(num_tokens, generator=gen)
    slots = slots.to(device)
    num_kv = preset.num_kv
    row = h * preset.head_size
    chunk_shape = (num_kv, preset.num_layers, num_tokens, row)
    pin = device.type == "cuda" and chunk_on == "host"
    chunk = torch.empty(
        chunk_shape, dtype=preset.dtype, device="cpu" if pin else device, pin_memory=pin
    )
    chunk.view(torch.uint8).fill_(0x5A)
    payload = chunk.numel() * chunk.element_size()
    assert payload == stack.numel() * stack.element_size()
    return Setup(
        layout, num_tokens, block_size, stack, list(stack.unbind(0)), slots, chunk, payload
    )


def torch_gather(s: Setup) -> None:
    """The baseline gather: torch advanced indexing, one layer at a time."""
    for li, layer in enumerate(s.caches):
        s.chunk[:, li].copy_(torch_rows(layer, s.layout, s.slots, s.block_size), non_blocking=True)


def torch_scatter(s: Setup) -> None:
    """The baseline scatter: torch ``index_put``, one layer at a time."""
    dev = s.stack.device
    for li, layer in enumerate(s.caches):
        rows = s.chunk[:, li].to(dev, non_blocking=True)
        torch_put_rows(layer, s.layout, s.slots, s.block_size, rows)


# --- measurement ----------------------------------------------------------------------------------


def _both(
    fn_a: Callable[[], object], fn_b: Callable[[], object], dev: torch.device
) -> Callable[[], object]:
    """Runs two copies at once.

    On two CUDA streams from two host threads, or one after the other on the CPU (where each
    copy already uses every core).
    """
    if dev.type != "cuda":

        def run_cpu() -> None:
            fn_a()
            fn_b()

        return run_cpu
    sa, sb = torch.cuda.Stream(dev), torch.cuda.Stream(dev)  # type: ignore[no-untyped-call]
    # NOTE: our ops wait for their stream before returning (that is how a bad slot raises), so
    # the second copy is issued from a helper thread; the bindings release the GIL meanwhile.
    pool = ThreadPoolExecutor(max_workers=1)

    def on_stream(stream: torch.cuda.Stream, fn: Callable[[], object]) -> None:
        with torch.cuda.device(dev), torch.cuda.stream(stream):
            fn()

    def run() -> None:
        cur = torch.cuda.current_stream(dev)
        sa.wait_stream(cur)
        sb.wait_stream(cur)
        other = pool.submit(on_stream, sb, fn_b)
        on_stream(sa, fn_a)
        other.result()
        cur.wait_stream(sa)
        cur.wait_stream(sb)

    return run


class MatmulLoad:
    """Keeps the GPU's SMs busy with bf16 matmuls on a side stream while a copy is timed."""

    def __init__(self, dev: torch.device, n: int = 8192) -> None:
        """Allocates the matmul operands on ``dev`` and times one matmul."""
        self.a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        self.b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        self.c = torch.empty(n, n, device=dev, dtype=torch.bfloat16)
        self.stream = torch.cuda.Stream(dev)  # type: ignore[no-untyped-call]
        self.dev = dev
        t = time_interleaved(
            {"mm": lambda: torch.matmul(self.a, self.b, out=self.c)}, device=dev, warmup=2, repeat=3
        )
        self.seconds = t["mm"].median

    def time_loaded(self, fn: Callable[[], object], expected_seconds: float, repeat: int) -> float:
        """Median seconds of ``fn`` under load.

        Host clock, current stream synchronised, while enough matmuls to outlast ``fn``
        (``expected_seconds`` unloaded) run on the side stream.
        """
        count = max(2, math.ceil(2 * expected_seconds / self.seconds) + 1)
        samples = []
        for _ in range(max(1, repeat)):
            with torch.cuda.stream(self.stream):
                for _ in range(count):
                    torch.matmul(self.a, self.b, out=self.c)
            t0 = time.perf_counter()
            fn()
            torch.cuda.current_stream(self.dev).synchronize()
            samples.append(time.perf_counter() - t0)
            self.stream.synchronize()
        return statistics.median(samples)


def measure(
    args: argparse.Namespace, s: Setup, direction: str, dev: torch.device, load: MatmulLoad | None
) -> dict[str, object]:
    """Times ours, the torch baseline, the contiguous-copy limit (and pinned memcpy on CUDA)."""
    flat_cache = s.stack.view(-1)
    flat_chunk = s.chunk.view(-1)

    def ours_gather() -> None:
        paged_kv_gather(s.caches, s.slots, s.chunk, s.layout)

    def ours_scatter() -> None:
        paged_kv_scatter(s.chunk, s.caches, s.slots, s.layout)

    def limit_gather() -> None:
        flat_chunk.copy_(flat_cache, non_blocking=True)

    def limit_scatter() -> None:
        flat_cache.copy_(flat_chunk, non_blocking=True)

    variants: dict[str, tuple[Callable[[], object], Callable[[], object], Callable[[], object]]] = {
        "gather": (ours_gather, lambda: torch_gather(s), limit_gather),
        "scatter": (ours_scatter, lambda: torch_scatter(s), limit_scatter),
    }
    memcpy: Callable[[], object] | None = None
    limit_name = "contiguous copy"
    if dev.type == "cuda":
        on_dev = s.chunk.device.type == "cuda"
        limit_name = "device copy" if on_dev else "pinned memcpy"
        host = s.chunk if not on_dev else torch.empty_like(s.chunk, device="cpu").pin_memory()
        dflat = flat_cache
        memcpy_fns = {
            "gather": lambda: host.view(-1).copy_(dflat, non_blocking=True),
            "scatter": lambda: dflat.copy_(host.view(-1), non_blocking=True),
        }
        if direction == "both":
            memcpy = _both(memcpy_fns["gather"], memcpy_fns["scatter"], dev)
        else:
            memcpy = memcpy_fns[direction]
    if direction == "both":
        # NOTE: gather reads the cache while scatter writes it; the bytes race, which is fine
        # for timing (each direction alone is checked bit-exact by the tests).
        ours = _both(ours_gather, ours_scatter, dev)
        base = _both(variants["gather"][1], variants["scatter"][1], dev)
        limit = _both(limit_gather, limit_scatter, dev)
        moved = 2 * s.payload
    else:
        ours, base, limit = variants[direction]
        moved = s.payload

    # NOTE: every variant is sampled round-robin, so a busy (shared) machine slows them alike
    # and the ratios stay meaningful even when the absolute figures drift.
    fns: dict[str, Callable[[], object]] = {"ours": ours, "limit": limit, "base": base}
    if memcpy is not None:
        fns["memcpy"] = memcpy
    current_isa = copy_isa()
    compare_isa = args.compare_isa and dev.type == "cpu" and current_isa != "sse2"
    if compare_isa:

        def ours_sse2() -> None:
            copy_set_isa("sse2")
            try:
                ours()
            finally:
                copy_set_isa(current_isa)

        fns["sse2"] = ours_sse2
    timings = time_interleaved(
        fns, device=dev, warmup=args.warmup, repeat=args.repeat, min_time=args.min_time
    )
    med = {k: v.median for k, v in timings.items()}
    t_ours, t_limit, t_base = med["ours"], med["limit"], med["base"]
    ours_bw = gbps(2 * moved, t_ours)
    row: dict[str, object] = {
        "layout": s.layout,
        "dir": direction,
        "tokens": s.num_tokens,
        "block": s.block_size,
        "MB": moved / 1e6,
        "ours_GBps": ours_bw,
        "baseline_GBps": gbps(2 * moved, t_base),
        "limit_GBps": gbps(2 * moved, t_limit),
        "limit": limit_name,
        "ours_ms": t_ours * 1e3,
        "ours/limit": ratio(t_limit, t_ours),
        "ours/base": ratio(t_base, t_ours),
    }
    if memcpy is not None:
        row["memcpy_GBps"] = gbps(2 * moved, med["memcpy"])
        row["ours/memcpy"] = ratio(med["memcpy"], t_ours)
    if dev.type == "cpu":
        row["isa"] = current_isa
    if compare_isa:
        row["sse2_GBps"] = gbps(2 * moved, med["sse2"])
        row["ours/sse2"] = ratio(med["sse2"], t_ours)
    if load is not None:
        row["ours_loaded_GBps"] = gbps(2 * moved, load.time_loaded(ours, t_ours, args.repeat))
        if memcpy is not None:
            row["memcpy_loaded_GBps"] = gbps(
                2 * moved, load.time_loaded(memcpy, t_ours, args.repeat)
            )
    return row


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options (beside ``add_common_args``)."""
    add_common_args(parser)
    parser.add_argument("--tokens", type=parse_int_list, default=None, help="e.g. 1024,8192,32k")
    add_layout_args(
        parser,
        None,
        "default: flash_attn,vllm_cpu (any of lmcache_native.ops.LAYOUTS, e.g. vllm_cpu_amx)",
    )
    parser.add_argument(
        "--block-sizes", type=parse_int_list, default=None, help="override the preset's block size"
    )
    parser.add_argument("--pattern", choices=["blocks", "random"], default="blocks")
    parser.add_argument(
        "--chunk-on",
        choices=["host", "device"],
        default="host",
        help="cuda: pinned host or device chunk",
    )
    parser.add_argument(
        "--matmul-load", action="store_true", help="cuda: also time under a matmul load"
    )
    parser.add_argument(
        "--compare-isa",
        action="store_true",
        help="cpu: also time ours on the SSE2 path in the same round-robin (sse2_GBps, ours/sse2)",
    )


def add_layout_args(
    parser: argparse.ArgumentParser, layouts: list[str] | None, layouts_help: str
) -> None:
    """Adds ``--layouts`` (default ``layouts``) and ``--directions`` (gather, scatter, both)."""
    parser.add_argument("--layouts", type=parse_str_list, default=layouts, help=layouts_help)
    parser.add_argument(
        "--directions",
        type=parse_str_list,
        default=["gather", "scatter"],
        help="copy directions: gather,scatter,both (both: one of each at once)",
    )


def check_choices(
    parser: argparse.ArgumentParser, layouts: Sequence[str], directions: Sequence[str]
) -> None:
    """Refuses unknown layouts and directions with the known ones in the message."""
    for name in layouts:
        if name not in LAYOUTS:
            parser.error(f"--layouts: unknown layout {name!r}; known: {', '.join(LAYOUTS)}")
    for d in directions:
        if d not in DIRECTIONS:
            parser.error(f"--directions: unknown direction {d!r}; known: {', '.join(DIRECTIONS)}")


def run_case(
    args: argparse.Namespace,
    preset: ModelPreset,
    layout: str,
    tokens: int,
    block_size: int,
    dev: torch.device,
    load: MatmulLoad | None = None,
) -> list[dict[str, object]]:
    """The rows of one (layout, tokens, block size) case, one per ``args.directions``."""
    setup = make_setup(preset, layout, tokens, block_size, dev, args.chunk_on, args.pattern)
    rows = [measure(args, setup, direction, dev, load) for direction in args.directions]
    for r in rows:
        r["preset"] = preset.as_dict()
    return rows


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark with ``argv`` and prints its table; returns the exit code."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)

    dev = check_device(args.device)
    apply_threads(args.threads)
    preset = get_preset(args.preset)
    tokens = args.tokens or [1024, 8192, 32768]
    layouts = args.layouts or (["mla"] if preset.mla else ["flash_attn", "vllm_cpu"])
    check_choices(parser, layouts, args.directions)
    block_sizes = args.block_sizes or [preset.block_size]
    load = MatmulLoad(dev) if (args.matmul_load and dev.type == "cuda") else None

    rows: list[dict[str, object]] = []
    for layout in layouts:
        for bs in block_sizes:
            for n in tokens:
                for row in run_case(args, preset, layout, n, bs, dev, load):
                    rows.append(row)
                    print(
                        f"  {row['layout']:>10} {row['dir']:>7} {row['tokens']:>6} tok: "
                        f"ours/limit {row['ours/limit']:.2f}, ours/base {row['ours/base']:.2f}",
                        file=sys.stderr,
                        flush=True,
                    )
    cols = ["layout", "dir", "tokens", "block", "MB", "ours_GBps", "baseline_GBps", "limit_GBps"]
    cols += ["ours/limit", "ours/base"]
    if dev.type == "cpu" and any("sse2_GBps" in r for r in rows):
        cols += ["isa", "sse2_GBps", "ours/sse2"]
    if dev.type == "cuda":
        cols += ["memcpy_GBps", "ours/memcpy"]
        if load is not None:
            cols += ["ours_loaded_GBps", "memcpy_loaded_GBps"]
    title = (
        f"paged_kv_gather / paged_kv_scatter on {dev} -- {preset.describe()}; "
        "GB/s = (read + written) / s"
    )
    print_table(rows, cols, title)
    write_json(args.json, benchmark="paged_kv_copy", args=args, rows=rows, device=dev)
    return 0


def combined_row(row: dict[str, Any], device: str) -> dict[str, Any]:
    """A row of this benchmark -> a row of the combined table (GB/s of read + written)."""
    direction = str(row.get("dir"))
    goal = (
        ("memcpy>=0.9, base>=2", all_of(at_least("ours/memcpy", 0.9), at_least("ours/base", 2)))
        if device == "cuda"
        else (
            "base>=4, limit>=0.75",
            all_of(at_least("ours/base", 4), at_least("ours/limit", 0.75)),
        )
    )
    preset = row.get("preset")
    name = preset.get("name") if isinstance(preset, dict) else None
    extra: dict[str, Any] = {"layout": row.get("layout"), "dir": direction, "preset": name}
    if number(row.get("memcpy_GBps")) is not None:
        extra["memcpy"] = number(row["memcpy_GBps"])
        extra["ours/memcpy"] = number(row.get("ours/memcpy"))
    return make_row(
        "copy",
        f"{row.get('layout')} {direction}",
        **figures(row, "ours_GBps", "baseline_GBps", "limit_GBps"),
        names=(
            "paged_kv_gather + scatter" if direction == "both" else f"paged_kv_{direction}",
            "torch indexing per layer",
            str(row.get("limit", "contiguous copy")),
        ),
        tokens=row.get("tokens"),
        block=row.get("block"),
        payload_mb=number(row.get("MB")),
        ours_ms=number(row.get("ours_ms")),
        goal=goal,
        in_scope=goal_scope("copy", name, row.get("tokens")),
        **extra,
    )
