"""Describe vLLM paged KV caches to the kernels: pointers, element strides, device, stream.

The kernels see a layer as ``(data_ptr, PagedKVLayout)``; this module derives the layout from
the tensors' real strides (so non-contiguous views work) and checks every argument, naming it
in the error. See ``csrc/kernels/paged_kv_layout.h`` for the index formula (plain strides, or
two-level strides for vLLM's AMX-packed CPU cache, ``vllm_cpu_amx``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from lmcache_native._native import PagedKVLayout

LAYOUTS: tuple[str, ...] = ("flash_attn", "flashinfer", "hnd", "mla", "vllm_cpu", "vllm_cpu_amx")

#: Layouts that exist only as CPU caches (vLLM's AMX-packed cache): the CUDA twins refuse them.
CPU_ONLY_LAYOUTS: frozenset[str] = frozenset({"vllm_cpu_amx"})

# Tokens (K) and dims (V) per AMX tile row group: an AMX B tile has 16 rows of 64 bytes.
_AMX_GROUP = 16

_RANK = {"flash_attn": 5, "flashinfer": 5, "hnd": 5, "mla": 3, "vllm_cpu": 4, "vllm_cpu_amx": 4}
_SHAPE_DOC = {
    "flash_attn": "[2, num_blocks, block_size, num_heads, head_size]",
    "flashinfer": "[num_blocks, 2, block_size, num_heads, head_size]",
    "hnd": "[num_blocks, 2, num_heads, block_size, head_size]",
    "mla": "[num_blocks, block_size, head_size]",
    "vllm_cpu": "[num_blocks, num_heads, block_size, 2 * head_size]",
    "vllm_cpu_amx": "[num_blocks, num_heads, block_size, 2 * head_size]",
}


def kv_cache_shape(
    layout: str, num_blocks: int, block_size: int, num_heads: int, head_size: int
) -> tuple[int, ...]:
    """Shape of one layer's paged cache in ``layout`` (the shapes ``describe`` accepts).

    Raises:
        ValueError: ``layout`` is not one of ``LAYOUTS``.
    """
    n, b, h, d = num_blocks, block_size, num_heads, head_size
    shapes = {
        "flash_attn": (2, n, b, h, d),
        "flashinfer": (n, 2, b, h, d),
        "hnd": (n, 2, h, b, d),
        "mla": (n, b, d),
        "vllm_cpu": (n, h, b, 2 * d),
        "vllm_cpu_amx": (n, h, b, 2 * d),
    }
    if layout not in shapes:
        raise ValueError(f"layout: unknown layout {layout!r}")
    return shapes[layout]


@dataclass(frozen=True)
class PagedKV:
    """A validated list of per-layer paged caches, ready for the kernels.

    Attributes:
        layer_ptrs: data pointer of each layer (same order as the input list).
        layout: the ``_C.PagedKVLayout`` of one layer (``csrc/kernels/paged_kv_layout.h``),
            built by field name and checked by the binding.
        num_kv: 2 (K and V) or 1 (MLA).
        num_layers, num_blocks, block_size, num_heads, head_size: the cache geometry.
        dtype: element dtype of every layer.
        device: device of every layer.
    """

    layer_ptrs: list[int]
    layout: PagedKVLayout
    num_kv: int
    num_layers: int
    num_blocks: int
    block_size: int
    num_heads: int
    head_size: int
    dtype: torch.dtype
    device: torch.device

    @property
    def num_slots(self) -> int:
        """Slots in one layer (``num_blocks * block_size``)."""
        return self.num_blocks * self.block_size

    @property
    def row_elems(self) -> int:
        """Elements of one token's row for one kv side (``num_heads * head_size``)."""
        return self.num_heads * self.head_size

    @property
    def elem_size(self) -> int:
        """Bytes per element."""
        return torch.empty((), dtype=self.dtype).element_size()

    def chunk_shape(self, num_tokens: int) -> tuple[int, int, int, int]:
        """Shape of the contiguous chunk buffer for ``num_tokens`` tokens."""
        return (self.num_kv, self.num_layers, num_tokens, self.row_elems)


def _both(x: int) -> tuple[int, int]:
    """The same value for K and V."""
    return (x, x)


def _build(t: torch.Tensor, **fields: Any) -> PagedKVLayout:
    """``PagedKVLayout(**fields)`` for cache ``t`` (its element size), refusing empty sizes."""
    if min(fields["block_size"], fields["num_heads"], fields["head_size"]) <= 0:
        raise ValueError(f"kv_caches has an empty dimension: shape {tuple(t.shape)}")
    return PagedKVLayout(elem_size=t.element_size(), **fields)


def _geometry(t: torch.Tensor, layout: str) -> PagedKVLayout:
    """The layout of one layer's cache ``t``, from its shape and real element strides."""
    s = t.stride()
    if layout == "flash_attn":
        kv2, n, b, h, d = t.shape
        if kv2 != 2:
            raise ValueError(
                f"kv_caches: flash_attn dim 0 must be 2 (K, V), got shape {tuple(t.shape)}"
            )
        return _build(
            t, num_kv=2, num_blocks=n, block_size=b, num_heads=h, head_size=d,
            kv_offset=(0, s[0]), block_stride=_both(s[1]), token_stride=_both(s[2]),
            head_stride=_both(s[3]), dim_stride=_both(s[4]),
        )  # fmt: skip
    if layout in ("flashinfer", "hnd"):
        if layout == "flashinfer":
            n, kv2, b, h, d = t.shape
            token, head = s[2], s[3]
        else:
            n, kv2, h, b, d = t.shape
            token, head = s[3], s[2]
        if kv2 != 2:
            raise ValueError(
                f"kv_caches: {layout} dim 1 must be 2 (K, V), got shape {tuple(t.shape)}"
            )
        return _build(
            t, num_kv=2, num_blocks=n, block_size=b, num_heads=h, head_size=d,
            kv_offset=(0, s[1]), block_stride=_both(s[0]), token_stride=_both(token),
            head_stride=_both(head), dim_stride=_both(s[4]),
        )  # fmt: skip
    if layout == "mla":
        n, b, d = t.shape
        return _build(
            t, num_kv=1, num_blocks=n, block_size=b, num_heads=1, head_size=d,
            kv_offset=(0, 0), block_stride=_both(s[0]), token_stride=_both(s[1]),
            head_stride=(0, 0), dim_stride=_both(s[2]),
        )  # fmt: skip
    if layout in ("vllm_cpu", "vllm_cpu_amx"):
        n, h, b, d2 = t.shape
        if d2 % 2 != 0:
            raise ValueError(f"kv_caches: {layout} last dim must be 2 * head_size, got {d2}")
        d = d2 // 2
        if s[3] != 1 or (b > 1 and s[2] != d2):
            raise ValueError(
                f"kv_caches: {layout} needs each (block, head) region [block_size, "
                f"2 * head_size] contiguous, got strides {tuple(s)}"
            )
        if layout == "vllm_cpu_amx":
            return _amx_layout(t.element_size(), n, b, h, d, s[0], s[1])
        # K is stored transposed [head_size, block_size], then V as [block_size, head_size].
        return _build(
            t, num_kv=2, num_blocks=n, block_size=b, num_heads=h, head_size=d,
            kv_offset=(0, b * d), block_stride=_both(s[0]), token_stride=(1, d),
            head_stride=_both(s[1]), dim_stride=(b, 1),
        )  # fmt: skip
    raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")


def check_packing(layout: str, elem_size: int, block_size: int, head_size: int) -> None:
    """Checks that ``layout`` is defined for this element width, block size and head size.

    Only packed layouts have limits: ``vllm_cpu_amx`` packs 2- or 4-byte elements (bf16,
    fp16, fp32: whole 32-bit words) and needs block and head sizes that are multiples of 16
    (AMX B tiles of 16 rows). Used by :func:`describe` and by the vLLM connector's layout
    detection, which decides on shape-only tensors.

    Raises:
        ValueError: the packing is not defined for these sizes (the message says why).
    """
    if layout != "vllm_cpu_amx":
        return
    if elem_size not in (2, 4):
        raise ValueError(
            f"kv_caches: vllm_cpu_amx packs 2- or 4-byte elements (bf16, fp16, fp32), got "
            f"{elem_size}-byte elements"
        )
    g = _AMX_GROUP
    if block_size % g != 0 or head_size % g != 0:
        raise ValueError(
            f"kv_caches: vllm_cpu_amx needs block_size and head_size multiples of {g}, got "
            f"block_size {block_size}, head_size {head_size}"
        )


def _amx_layout(
    es: int, n: int, b: int, h: int, d: int, s_block: int, s_head: int
) -> PagedKVLayout:
    """The layout of vLLM's AMX-packed CPU cache (``vllm_cpu_amx``).

    Each (block, head) region holds K in its first ``block_size * head_size`` elements and V in
    the rest, packed for AMX B tiles (16 rows of 64 bytes), with ``p = 4 / elem_size`` elements
    per 32-bit word (2 for bf16/fp16, 1 for fp32):

    - K: tokens in groups of 16 (``16 * head_size`` elements each); inside a group, word ``w``
      of every token (dims ``w*p .. w*p+p-1``) forms one 64-byte row of 16 tokens. Element
      ``(o, d)`` is at ``(o // 16) * 16 * D + (d // p) * 16 * p + (o % 16) * p + d % p``.
    - V: dims in groups of 16 (``16 * block_size`` elements each); inside a group, ``p``
      consecutive tokens share a word per dim, so a 64-byte row holds 16 dims of ``p`` tokens.
      Element ``(o, d)`` is at ``B * D + (d // 16) * 16 * B + (o // p) * 16 * p + o % p +
      (d % 16) * p``.

    Both are a two-level stride per coordinate: ``(x // group) * stride + (x % group) * inner``.
    """
    check_packing("vllm_cpu_amx", es, b, d)
    if min(b, h, d) <= 0:
        raise ValueError(f"kv_caches has an empty dimension: shape {(n, h, b, 2 * d)}")
    p = 4 // es
    g = _AMX_GROUP
    # Each pair is (K, V).
    return PagedKVLayout(
        num_kv=2, num_blocks=n, block_size=b, num_heads=h, head_size=d, elem_size=es,
        kv_offset=(0, b * d), block_stride=_both(s_block), head_stride=_both(s_head),
        token_group=(g, p), token_stride=(g * d, g * p), token_inner=(p, 1),
        dim_group=(p, g), dim_stride=(g * p, g * b), dim_inner=(1, p),
    )  # fmt: skip


def describe(kv_caches: Sequence[torch.Tensor], layout: str) -> PagedKV:
    """Validates per-layer caches and describes them for the kernels.

    Args:
        kv_caches: one tensor per layer, all with the same shape, strides, dtype and device,
            shaped as ``layout`` requires (see ``_SHAPE_DOC``); any dtype of 1, 2, 4 or 8 bytes
            (``vllm_cpu_amx``: 2 or 4 bytes, block_size and head_size multiples of 16, CPU only).
        layout: one of ``LAYOUTS``.

    Returns:
        The pointers and flat layout.

    Raises:
        TypeError: ``kv_caches`` is not a non-empty sequence of tensors.
        ValueError: bad layout name, shape, dtype, strides, or layers that differ; a CPU-only
            layout (``CPU_ONLY_LAYOUTS``) on another device.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    if isinstance(kv_caches, torch.Tensor) or not isinstance(kv_caches, Sequence):
        raise TypeError("kv_caches must be a list of per-layer tensors")
    if len(kv_caches) == 0:
        raise ValueError("kv_caches must hold at least one layer")
    first = kv_caches[0]
    for i, t in enumerate(kv_caches):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"kv_caches[{i}] must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != _RANK[layout]:
            raise ValueError(
                f"kv_caches[{i}] must be {_SHAPE_DOC[layout]} for layout {layout!r}, "
                f"got shape {tuple(t.shape)}"
            )
        if t.shape != first.shape or t.stride() != first.stride():
            raise ValueError(
                f"kv_caches[{i}] shape/strides {tuple(t.shape)}/{t.stride()} differ from "
                f"kv_caches[0] {tuple(first.shape)}/{first.stride()}"
            )
        if t.dtype != first.dtype:
            raise ValueError(
                f"kv_caches[{i}] dtype {t.dtype} differs from kv_caches[0] {first.dtype}"
            )
        if t.device != first.device:
            raise ValueError(
                f"kv_caches[{i}] device {t.device} differs from kv_caches[0] {first.device}"
            )
    if first.element_size() not in (1, 2, 4, 8) or first.is_complex():
        raise ValueError(
            f"kv_caches dtype {first.dtype} is not supported (1/2/4/8-byte real types)"
        )
    if any(st < 0 for st in first.stride()):
        raise ValueError(f"kv_caches strides must be non-negative, got {first.stride()}")
    if layout in CPU_ONLY_LAYOUTS and first.device.type != "cpu":
        raise ValueError(
            f"layout {layout!r} is a CPU cache layout (vLLM packs caches for AMX only on "
            f"CPUs); the kernels do not read it on {first.device.type}, got a cache on "
            f"{first.device}"
        )
    geo = _geometry(first, layout)
    return PagedKV(
        layer_ptrs=[int(t.data_ptr()) for t in kv_caches],
        layout=geo,
        num_kv=geo.num_kv,
        num_layers=len(kv_caches),
        num_blocks=geo.num_blocks,
        block_size=geo.block_size,
        num_heads=geo.num_heads,
        head_size=geo.head_size,
        dtype=first.dtype,
        device=first.device,
    )


def stream_of(device: torch.device) -> int:
    """The caller's current CUDA stream handle on ``device`` (0 for the CPU)."""
    if device.type != "cuda":
        return 0
    return int(torch.cuda.current_stream(device).cuda_stream)


def int64_slots(
    slots: torch.Tensor | npt.NDArray[np.integer[Any]] | Sequence[int],
    device: torch.device | str = "cpu",
    name: str = "slots",
) -> torch.Tensor:
    """Converts ``slots`` to a contiguous 1-D int64 tensor on ``device``.

    ``slots`` is an integer tensor or array, or a sequence of ints.

    Raises:
        TypeError: not integers, or not a tensor, array or sequence.
        ValueError: not 1-D, or a value beyond int64 (uint64 values are checked, not wrapped).
    """
    if isinstance(slots, torch.Tensor) or (
        hasattr(slots, "__array__") and not isinstance(slots, (str, bytes))
    ):
        t = torch.as_tensor(slots)
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"{name} must hold integers, got dtype {t.dtype}")
        # NOTE: the cast to int64 would wrap uint64 values above INT64_MAX into negatives (the
        # largest one into -1, which the kernels read as padding).
        if t.dtype == torch.uint64 and bool((t.view(torch.int64) < 0).any()):
            raise ValueError(f"{name} must be ints that fit in int64 (a uint64 value is larger)")
        return t.to(device=device, dtype=torch.int64).contiguous()
    if isinstance(slots, (str, bytes)) or not isinstance(slots, Sequence):
        raise TypeError(
            f"{name} must be a 1-D integer tensor or a sequence of ints, got {type(slots).__name__}"
        )
    try:
        t = torch.tensor(slots, dtype=torch.int64, device=device)
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise ValueError(f"{name} must be ints that fit in int64: {exc}") from None
    if t.dim() != 1:
        raise ValueError(f"{name} must be a flat sequence of ints, got shape {tuple(t.shape)}")
    return t
