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
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from common import (
    ModelPreset,
    add_common_args,
    apply_threads,
    check_device,
    gbps,
    get_preset,
    parse_int_list,
    parse_str_list,
    preset_dict,
    print_table,
    ratio,
    time_fn,
    time_interleaved,
    write_json,
)
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


# --- torch advanced-indexing baselines (one layer at a time) --------------------------------------


def _amx_flat_index(layer: torch.Tensor, slots: torch.Tensor, b: int) -> torch.Tensor:
    """[2, T, H * D] element indices into ``layer.view(-1)`` of the rows of ``slots`` in a
    ``vllm_cpu_amx`` cache (the packing of ``testing/reference.py``'s ``amx_index``, as one
    index table per block offset)."""
    n, h, _, d2 = layer.shape
    d = d2 // 2
    p = 4 // layer.element_size()
    o = torch.arange(b, device=slots.device)[:, None]
    dim = torch.arange(d, device=slots.device)[None, :]
    k_idx = (o // 16) * 16 * d + (dim // p) * 16 * p + (o % 16) * p + dim % p  # [B, D]
    v_idx = b * d + (dim // 16) * 16 * b + (o // p) * 16 * p + o % p + (dim % 16) * p
    s0, s1 = layer.stride(0), layer.stride(1)
    blk, off = slots // b, slots % b
    heads = torch.arange(h, device=slots.device)[None, :, None] * s1
    base = blk[:, None, None] * s0 + heads  # [T, H, 1]
    t = slots.numel()
    k = (base + k_idx[off][:, None, :]).reshape(t, -1)
    v = (base + v_idx[off][:, None, :]).reshape(t, -1)
    return torch.stack((k, v))


def _torch_rows(layer: torch.Tensor, layout: str, slots: torch.Tensor, b: int) -> torch.Tensor:
    """[num_kv, T, row] rows of ``slots`` by advanced indexing (a new tensor)."""
    t = slots.numel()
    if layout == "vllm_cpu_amx":
        return layer.view(-1)[_amx_flat_index(layer, slots, b)]
    if layout == "flash_attn":
        return layer.flatten(1, 2).flatten(2)[:, slots]
    if layout == "mla":
        return layer.flatten(0, 1)[slots].unsqueeze(0)
    blk, off = slots // b, slots % b
    if layout == "flashinfer":  # [N, 2, B, H, D] -> [T, 2, H, D]
        return layer[blk, :, off].reshape(t, 2, -1).transpose(0, 1)
    if layout == "hnd":  # [N, 2, H, B, D] -> [T, 2, H, D]
        return layer[blk, :, :, off].reshape(t, 2, -1).transpose(0, 1)
    # vllm_cpu [N, H, B, 2D]: per (block, head) K as [D, B] then V as [B, D]
    n, h, _, d2 = layer.shape
    d = d2 // 2
    halves = layer.view(n, h, 2, b * d)
    k = halves[:, :, 0].view(n, h, d, b)[blk, :, :, off]  # [T, H, D]
    v = halves[:, :, 1].view(n, h, b, d)[blk, :, off]  # [T, H, D]
    return torch.stack((k.reshape(t, -1), v.reshape(t, -1)))


def _torch_put_rows(
    layer: torch.Tensor, layout: str, slots: torch.Tensor, b: int, rows: torch.Tensor
) -> None:
    """Writes [num_kv, T, row] ``rows`` into ``slots`` by advanced indexing (index_put)."""
    t = slots.numel()
    if layout == "vllm_cpu_amx":
        layer.view(-1)[_amx_flat_index(layer, slots, b)] = rows
        return
    if layout == "flash_attn":
        layer.flatten(1, 2).flatten(2)[:, slots] = rows
        return
    if layout == "mla":
        layer.flatten(0, 1)[slots] = rows[0]
        return
    blk, off = slots // b, slots % b
    if layout == "flashinfer":
        layer[blk, :, off] = rows.transpose(0, 1).reshape(t, 2, *layer.shape[3:])
        return
    if layout == "hnd":
        layer[blk, :, :, off] = rows.transpose(0, 1).reshape(t, 2, layer.shape[2], layer.shape[4])
        return
    n, h, _, d2 = layer.shape
    d = d2 // 2
    halves = layer.view(n, h, 2, b * d)
    halves[:, :, 0].view(n, h, d, b)[blk, :, :, off] = rows[0].view(t, h, d)
    halves[:, :, 1].view(n, h, b, d)[blk, :, off] = rows[1].view(t, h, d)


def torch_gather(s: Setup) -> None:
    for li, layer in enumerate(s.caches):
        s.chunk[:, li].copy_(_torch_rows(layer, s.layout, s.slots, s.block_size), non_blocking=True)


def torch_scatter(s: Setup) -> None:
    dev = s.stack.device
    for li, layer in enumerate(s.caches):
        rows = s.chunk[:, li].to(dev, non_blocking=True)
        _torch_put_rows(layer, s.layout, s.slots, s.block_size, rows)


# --- measurement ----------------------------------------------------------------------------------


def _both(
    fn_a: Callable[[], object], fn_b: Callable[[], object], dev: torch.device
) -> Callable[[], object]:
    """Runs two copies at once: on two CUDA streams from two host threads, or one after the
    other on the CPU (where each copy already uses every core)."""
    if dev.type != "cuda":

        def run_cpu() -> None:
            fn_a()
            fn_b()

        return run_cpu
    sa, sb = torch.cuda.Stream(dev), torch.cuda.Stream(dev)
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
        self.a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        self.b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        self.c = torch.empty(n, n, device=dev, dtype=torch.bfloat16)
        self.stream = torch.cuda.Stream(dev)
        self.dev = dev
        t = time_fn(
            lambda: torch.matmul(self.a, self.b, out=self.c), device=dev, warmup=2, repeat=3
        )
        self.seconds = t.median

    def time_loaded(self, fn: Callable[[], object], expected_seconds: float, repeat: int) -> float:
        """Median seconds of ``fn`` (host clock, current stream synchronised) while enough
        matmuls to outlast it (``expected_seconds`` unloaded) run on the side stream."""
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser)
    parser.add_argument("--tokens", type=parse_int_list, default=None, help="e.g. 1024,8192,32k")
    parser.add_argument(
        "--layouts",
        type=parse_str_list,
        default=None,
        help="default: flash_attn,vllm_cpu (any of lmcache_native.ops.LAYOUTS, e.g. vllm_cpu_amx)",
    )
    parser.add_argument(
        "--directions",
        type=parse_str_list,
        default=["gather", "scatter"],
        help="gather,scatter,both",
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
    args = parser.parse_args(argv)

    dev = check_device(args.device)
    apply_threads(args.threads)
    preset = get_preset(args.preset)
    tokens = args.tokens or [1024, 8192, 32768]
    layouts = args.layouts or (["mla"] if preset.mla else ["flash_attn", "vllm_cpu"])
    for name in layouts:
        if name not in LAYOUTS:
            parser.error(f"--layouts: unknown layout {name!r}; known: {', '.join(LAYOUTS)}")
    for d in args.directions:
        if d not in DIRECTIONS:
            parser.error(f"--directions: unknown direction {d!r}; known: {', '.join(DIRECTIONS)}")
    block_sizes = args.block_sizes or [preset.block_size]
    load = MatmulLoad(dev) if (args.matmul_load and dev.type == "cuda") else None

    rows: list[dict[str, object]] = []
    for layout in layouts:
        for bs in block_sizes:
            for n in tokens:
                setup = make_setup(preset, layout, n, bs, dev, args.chunk_on, args.pattern)
                for direction in args.directions:
                    rows.append(measure(args, setup, direction, dev, load))
                    print_progress(rows[-1])
                del setup
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
    for r in rows:
        r["preset"] = preset_dict(preset)
    write_json(args.json, benchmark="paged_kv_copy", args=args, rows=rows, device=dev)
    return 0


def print_progress(row: dict[str, object]) -> None:
    print(
        f"  {row['layout']:>10} {row['dir']:>7} {row['tokens']:>6} tok: "
        f"ours {row['ours_GBps']:.1f} GB/s, base {row['baseline_GBps']:.1f}, "
        f"limit {row['limit_GBps']:.1f}",
        file=sys.stderr,
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
