"""The built-in benchmark set: runs in-process from an installed wheel (no source checkout).

Each case times, round-robin after a warm-up (so a loaded machine slows all alike):

* ``copy``: ``ops.paged_kv_gather`` / ``ops.paged_kv_scatter`` over all layers in one call;
  baseline: torch advanced indexing one layer at a time; limit: a contiguous ``copy_`` of the
  same bytes. GB/s = (bytes read + bytes written) / s.
* ``md5``: ``ops.kv_chunk_md5`` straight from the paged cache; baseline: ``hashlib.md5`` on one
  thread over the same bytes, contiguous; limit: a contiguous copy of the same bytes.
  Hash GB/s = bytes hashed / s (the copy's GB/s counts read + written, as everywhere).
* ``slot``: ``ops.parse_slot_mapping`` + ``ops.compress_slot_mapping`` of a slot string;
  baseline: the pure-Python parser of ``testing/reference.py``; limit: a contiguous copy moving
  as many bytes as the parse does. GB/s = (text bytes read + int64 slots written) / s.

Before timing, each case checks ours against the baseline on part of the data (a wrong kernel
must not produce a fast figure).
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from lmcache_native.bench._util import (
    Preset,
    all_of,
    at_least,
    gbps,
    goal_scope,
    interleaved,
    make_row,
)
from lmcache_native.ops import kv_cache_shape

#: One unit of work for the progress bar: a label and a function returning rows.
Case = tuple[str, Callable[[], list[dict[str, Any]]]]

COPY_LAYOUTS: tuple[str, ...] = ("flash_attn", "vllm_cpu")
SLOT_SHAPES: tuple[str, ...] = ("blocks", "mixed", "singles")


@dataclass(frozen=True)
class Settings:
    """What the built-in set runs.

    Attributes:
        preset: model geometry.
        tokens: token counts (rounded up to whole blocks).
        block_sizes: block sizes of the copy sweep.
        layouts: copy layouts (``flash_attn``, ``vllm_cpu``).
        directions: ``gather`` and/or ``scatter``.
        slots: slots per slot string.
        chunk_size: tokens per MD5 chunk.
        warmup, repeat: untimed rounds, timed rounds (medians).
        benches: which of ``copy``, ``md5``, ``slot`` to run.
    """

    preset: Preset
    tokens: list[int]
    block_sizes: list[int]
    layouts: list[str]
    directions: list[str]
    slots: int
    chunk_size: int
    warmup: int
    repeat: int
    benches: list[str]


def _dtype(p: Preset) -> torch.dtype:
    return getattr(torch, p.dtype)


def _layer_shape(layout: str, n: int, b: int, h: int, d: int) -> tuple[int, ...]:
    if layout not in ("flash_attn", "vllm_cpu", "mla"):
        raise ValueError(f"the built-in set times flash_attn, vllm_cpu and mla, not {layout!r}")
    return kv_cache_shape(layout, n, b, h, d)


def _block_slots(num_blocks: int, block_size: int, seed: int) -> torch.Tensor:
    """All slots of ``num_blocks`` whole blocks, blocks in a random order (as vLLM hands out)."""
    order = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed))
    return (order[:, None] * block_size + torch.arange(block_size)).reshape(-1)


def _random_bytes(
    shape: tuple[int, ...] | torch.Size, seed: int, like: torch.Tensor
) -> torch.Tensor:
    """Seeded random bytes viewed as ``like``'s dtype in ``shape``."""
    n = math.prod(shape) * like.element_size()
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g).view(like.dtype).view(shape)


def _fill_random(stack: torch.Tensor, seed: int) -> None:
    """Fills every page of ``[num_layers, ...]`` ``stack`` (no shared zero page): layer 0 with
    seeded random bytes, the other layers with copies of it (hash and copy speed do not depend
    on the bytes; drawing them once keeps the set-up short)."""
    stack[0].copy_(_random_bytes(stack.shape[1:], seed, like=stack))
    if stack.shape[0] > 1:
        stack[1:] = stack[0]


# --- torch baselines ------------------------------------------------------------------------------


def _vllm_cpu_views(layer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K as ``[N, H, D, B]`` and V as ``[N, H, B, D]`` views of a ``vllm_cpu`` layer."""
    n, h, b, d2 = layer.shape
    d = d2 // 2
    halves = layer.view(n, h, 2, b * d)
    return halves[:, :, 0].view(n, h, d, b), halves[:, :, 1].view(n, h, b, d)


def torch_rows(layer: torch.Tensor, layout: str, slots: torch.Tensor) -> torch.Tensor:
    """``[num_kv, T, row]`` rows of ``slots`` by torch advanced indexing (a new tensor)."""
    if layout == "flash_attn":
        return layer.flatten(1, 2).flatten(2)[:, slots]
    if layout == "mla":
        return layer.flatten(0, 1)[slots].unsqueeze(0)
    k, v = _vllm_cpu_views(layer)
    b = layer.shape[2]
    blk, off = slots // b, slots % b
    t = slots.numel()
    # Advanced indices split by a slice: the indexed axis comes first -> [T, H, D].
    return torch.stack((k[blk, :, :, off].reshape(t, -1), v[blk, :, off].reshape(t, -1)))


def torch_put_rows(
    layer: torch.Tensor, layout: str, slots: torch.Tensor, rows: torch.Tensor
) -> None:
    """Writes ``[num_kv, T, row]`` ``rows`` into ``slots`` by torch advanced indexing."""
    if layout == "flash_attn":
        layer.flatten(1, 2).flatten(2)[:, slots] = rows
        return
    if layout == "mla":
        layer.flatten(0, 1)[slots] = rows[0]
        return
    k, v = _vllm_cpu_views(layer)
    n, h, b, d2 = layer.shape
    blk, off = slots // b, slots % b
    t = slots.numel()
    k[blk, :, :, off] = rows[0].view(t, h, d2 // 2)
    v[blk, :, off] = rows[1].view(t, h, d2 // 2)


# --- copy -----------------------------------------------------------------------------------------


def copy_case(s: Settings, layout: str, block_size: int, tokens: int) -> list[dict[str, Any]]:
    """Gather and/or scatter rows of one (layout, block size, tokens) case."""
    from lmcache_native.ops import paged_kv_gather, paged_kv_scatter

    p = s.preset
    num_blocks = math.ceil(tokens / block_size)
    tokens = num_blocks * block_size
    shape = _layer_shape(layout, num_blocks, block_size, p.num_kv_heads, p.head_size)
    stack = torch.empty((p.num_layers, *shape), dtype=_dtype(p))
    _fill_random(stack, seed=0)
    caches = list(stack.unbind(0))
    slots = _block_slots(num_blocks, block_size, seed=tokens + block_size)
    num_kv = 1 if p.mla else 2
    chunk = torch.empty(
        (num_kv, p.num_layers, tokens, p.num_kv_heads * p.head_size), dtype=stack.dtype
    )
    chunk.view(torch.uint8).fill_(0x5A)
    payload = chunk.numel() * chunk.element_size()
    flat_cache, flat_chunk = stack.view(-1), chunk.view(-1)

    # Correctness first: ours == torch on layer 0 (gather), and a scatter round trip.
    paged_kv_gather(caches, slots, chunk, layout)
    want = torch_rows(caches[0], layout, slots)
    if not torch.equal(chunk[:, 0].view(torch.uint8), want.view(torch.uint8)):
        raise AssertionError(f"paged_kv_gather disagrees with torch indexing ({layout})")
    chunk[:, 0].copy_(_random_bytes(chunk[:, 0].shape, seed=2, like=chunk))
    paged_kv_scatter(chunk, caches, slots, layout)
    back = torch_rows(caches[0], layout, slots)
    if not torch.equal(back.view(torch.uint8), chunk[:, 0].view(torch.uint8)):
        raise AssertionError(f"paged_kv_scatter disagrees with torch indexing ({layout})")

    def base_gather() -> None:
        for li, layer in enumerate(caches):
            chunk[:, li].copy_(torch_rows(layer, layout, slots))

    def base_scatter() -> None:
        for li, layer in enumerate(caches):
            torch_put_rows(layer, layout, slots, chunk[:, li])

    variants: dict[str, tuple[Callable[[], object], Callable[[], object], Callable[[], object]]] = {
        "gather": (
            lambda: paged_kv_gather(caches, slots, chunk, layout),
            base_gather,
            lambda: flat_chunk.copy_(flat_cache),
        ),
        "scatter": (
            lambda: paged_kv_scatter(chunk, caches, slots, layout),
            base_scatter,
            lambda: flat_cache.copy_(flat_chunk),
        ),
    }
    rows = []
    for direction in s.directions:
        ours, base, limit = variants[direction]
        t = interleaved(
            {"ours": ours, "baseline": base, "limit": limit}, warmup=s.warmup, repeat=s.repeat
        )
        moved = 2 * payload
        rows.append(
            make_row(
                "copy",
                f"{layout} {direction}",
                ours=gbps(moved, t["ours"]),
                baseline=gbps(moved, t["baseline"]),
                limit=gbps(moved, t["limit"]),
                names=(f"paged_kv_{direction}", "torch indexing per layer", "contiguous copy"),
                tokens=tokens,
                block=block_size,
                payload_mb=payload / 1e6,
                ours_ms=t["ours"] * 1e3,
                goal=(
                    "base>=4, limit>=0.75",
                    all_of(at_least("ours/base", 4), at_least("ours/limit", 0.75)),
                ),
                in_scope=goal_scope("copy", p.name, tokens),
                layout=layout,
                dir=direction,
                preset=p.name,
            )
        )
    return rows


# --- md5 ------------------------------------------------------------------------------------------


def md5_case(s: Settings, tokens: int) -> list[dict[str, Any]]:
    """``kv_chunk_md5`` over ``tokens`` slots of every layer against ``hashlib`` and a copy."""
    from lmcache_native.ops import kv_chunk_md5
    from lmcache_native.testing import reference

    p = s.preset
    layout = "mla" if p.mla else "flash_attn"
    b = p.block_size
    num_blocks = math.ceil(tokens / b)
    tokens = num_blocks * b
    shape = _layer_shape(layout, num_blocks, b, p.num_kv_heads, p.head_size)
    stack = torch.empty((p.num_layers, *shape), dtype=_dtype(p))
    raw = stack.view(torch.uint8).view(-1)
    _fill_random(stack, seed=1)
    caches = list(stack.unbind(0))
    slots = _block_slots(num_blocks, b, seed=tokens)
    payload = raw.numel()
    per_layer = stack.view(torch.uint8).reshape(p.num_layers, -1)
    views = [per_layer[i].numpy().data for i in range(p.num_layers)]
    dst = torch.empty_like(raw)

    head = slots[: min(s.chunk_size, tokens)].tolist()
    want, _ = reference.kv_chunk_md5(caches[:1], head, s.chunk_size, layout)
    got, _ = kv_chunk_md5(caches, slots, s.chunk_size, layout)
    if got[0][0] != want[0][0]:
        raise AssertionError("kv_chunk_md5 disagrees with hashlib on layer 0, chunk 0")

    def base() -> None:
        for mv in views:
            hashlib.md5(mv).digest()

    t = interleaved(
        {
            "ours": lambda: kv_chunk_md5(caches, slots, s.chunk_size, layout),
            "baseline": base,
            "limit": lambda: dst.copy_(raw),
        },
        warmup=s.warmup,
        repeat=s.repeat,
    )
    try:
        from lmcache_native.ops.kv_chunk_md5 import md5_isa

        isa = md5_isa()
    except ImportError:
        isa = "?"
    return [
        make_row(
            "md5",
            f"{layout} {isa}",
            ours=gbps(payload, t["ours"]),
            baseline=gbps(payload, t["baseline"]),
            limit=gbps(2 * payload, t["limit"]),
            names=("kv_chunk_md5", "hashlib.md5, 1 thread", "contiguous copy"),
            tokens=tokens,
            block=b,
            payload_mb=payload / 1e6,
            ours_ms=t["ours"] * 1e3,
            goal=("base>=8", at_least("ours/base", 8)),
            in_scope=goal_scope("md5", p.name, tokens),
            layout=layout,
            isa=isa,
            preset=p.name,
        )
    ]


# --- slot ranges ----------------------------------------------------------------------------------


def slot_text(shape: str, num_slots: int, seed: int = 0) -> str:
    """A slot string of about ``num_slots`` slots.

    ``blocks``: one ``[a,b]`` per 16-slot block, blocks shuffled; ``mixed``: runs of 1-8 slots
    at random places (runs of 3 or more as ranges); ``singles``: every slot as a number, shuffled.
    """
    rng = random.Random(seed)
    if shape == "blocks":
        order = list(range(max(1, num_slots // 16)))
        rng.shuffle(order)
        return ",".join(f"[{16 * i},{16 * i + 15}]" for i in order)
    if shape == "mixed":
        parts: list[str] = []
        left = num_slots
        while left > 0:
            n = min(left, rng.randint(1, 8))
            a = rng.randrange(0, 1 << 24)
            parts.append(f"[{a},{a + n - 1}]" if n >= 3 else ",".join(str(a + i) for i in range(n)))
            left -= n
        return ",".join(parts)
    if shape == "singles":
        slots = list(range(num_slots))
        rng.shuffle(slots)
        return ",".join(map(str, slots))
    raise ValueError(f"unknown slot shape {shape!r}; known: {', '.join(SLOT_SHAPES)}")


def slot_case(s: Settings, shape: str) -> list[dict[str, Any]]:
    """Parse + compress of one slot string against the pure-Python reference.

    Two rows: compressed to the Python list (the admin API's JSON form) and to the int64 run
    table (``compress_slot_ranges``, no Python object per item).
    """
    from lmcache_native.ops import compress_slot_mapping, compress_slot_ranges, parse_slot_mapping
    from lmcache_native.testing import reference

    text = slot_text(shape, s.slots)
    max_slots = 1 << 26
    parsed = parse_slot_mapping(text, max_slots)
    ref = reference.parse_slot_mapping(text, max_slots)
    ref_items = reference.compress_slot_mapping(ref)
    if (
        parsed.tolist() != ref
        or compress_slot_mapping(parsed) != ref_items
        or compress_slot_ranges(parsed).tolist() != reference.compress_slot_ranges(ref)
    ):
        raise AssertionError(f"slot_ranges disagrees with the reference ({shape})")
    moved = len(text) + 8 * len(ref)  # text read + int64 slots written
    src = torch.empty((moved + 1) // 2, dtype=torch.uint8).fill_(7)
    dst = torch.empty_like(src)

    t = interleaved(
        {
            "list": lambda: compress_slot_mapping(parse_slot_mapping(text, max_slots)),
            "table": lambda: compress_slot_ranges(parse_slot_mapping(text, max_slots)),
            "baseline": lambda: reference.compress_slot_mapping(
                reference.parse_slot_mapping(text, max_slots)
            ),
            "limit": lambda: dst.copy_(src),
        },
        warmup=s.warmup,
        repeat=s.repeat,
    )
    return [
        make_row(
            "slot",
            f"parse+compress{'->table' if form == 'table' else ''} {shape}",
            ours=gbps(moved, t[form]),
            baseline=gbps(moved, t["baseline"]),
            limit=gbps(2 * src.numel(), t["limit"]),
            names=(
                f"parse_slot_mapping + {fn}",
                "pure Python (reference.py)",
                "contiguous copy",
            ),
            tokens=len(ref),
            payload_mb=moved / 1e6,
            ours_ms=t[form] * 1e3,
            goal=("base>=30", at_least("ours/base", 30)),
            in_scope=goal_scope("slot", None, len(ref)),
            shape=shape,
            form=form,
        )
        for form, fn in (("list", "compress_slot_mapping"), ("table", "compress_slot_ranges"))
    ]


def cases(s: Settings) -> Iterator[Case]:
    """The cases of ``s`` in table order, for a progress bar."""
    p = s.preset
    if "copy" in s.benches:
        layouts = ["mla"] if p.mla else s.layouts
        for layout in layouts:
            for bs in s.block_sizes:
                for n in s.tokens:
                    yield (
                        f"copy {layout} b{bs} {n} tok",
                        functools.partial(copy_case, s, layout, bs, n),
                    )
    if "md5" in s.benches:
        for n in s.tokens:
            yield f"md5 {n} tok", functools.partial(md5_case, s, n)
    if "slot" in s.benches:
        for shape in SLOT_SHAPES:
            yield f"slot {shape}", functools.partial(slot_case, s, shape)
