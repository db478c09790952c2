"""Helpers shared by the kernel tests.

Random caches, sentinel buffers, byte comparisons and the naive reference copies they are
compared against.

Every destination is pre-filled with a sentinel byte and compared in full as raw bytes, so a
stray write anywhere fails. Payloads are random integers viewed as the dtype (NaN/Inf bit
patterns included).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from lmcache_native.ops import describe, kv_cache_shape
from lmcache_native.testing import reference as ref

SENTINEL = 0xA5
# The layouts defined for any shape and element width; vllm_cpu_amx (2/4-byte elements, block and
# head sizes multiples of 16, CPU only) has its own module, test_vllm_cpu_amx.py.
LAYOUTS = ["flash_attn", "flashinfer", "hnd", "mla", "vllm_cpu"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float64]
_INT_OF_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
# Uneven chunk sizes over the 14 tokens of mixed_slots(20, 4): a whole block, an empty chunk, a
# chunk that is all padding ([-1] alone at token 4), one with padding inside, the last slot of
# the last block alone, and a short tail.
CHUNK_SIZES = [4, 0, 1, 3, 1, 3, 2]
STRIDED_KINDS = [
    "head_slice",
    "every_other_block",
    "dim_stride",
    "stacked_layers",
    "vllm_cpu_block_view",
]


def random_bits(
    shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator | int
) -> torch.Tensor:
    """Random bits.

    Uniform random bit patterns of ``dtype`` (every NaN/Inf/denormal pattern can occur);
    ``gen`` is a generator or a seed.
    """
    if isinstance(gen, int):
        gen = torch.Generator().manual_seed(gen)
    width = torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 256, (*shape, width), dtype=torch.uint8, generator=gen)
    return raw.view(_INT_OF_WIDTH[width]).view(dtype).reshape(shape)


def make_caches(
    layout: str,
    dtype: torch.dtype,
    *,
    num_layers: int = 3,
    num_blocks: int = 5,
    block_size: int = 4,
    num_heads: int = 2,
    head_size: int = 8,
    seed: int = 0,
) -> list[torch.Tensor]:
    """Random per-layer caches of ``layout`` (MLA uses one head)."""
    gen = torch.Generator().manual_seed(seed)
    h = 1 if layout == "mla" else num_heads
    shape = kv_cache_shape(layout, num_blocks, block_size, h, head_size)
    return [random_bits(shape, dtype, gen) for _ in range(num_layers)]


def fill_sentinel(t: torch.Tensor) -> None:
    """Fills every byte of a contiguous tensor with the sentinel."""
    assert t.is_contiguous()
    t.view(torch.uint8).fill_(SENTINEL)


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of ``t`` (a contiguous copy for views), as a flat uint8 tensor on the CPU."""
    return t.contiguous().view(torch.uint8).reshape(-1).cpu()


def assert_same_bytes(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Fails naming the count and first position of differing bytes."""
    a, e = as_bytes(actual), as_bytes(expected)
    assert a.shape == e.shape
    if not torch.equal(a, e):
        bad = (a != e).nonzero().reshape(-1)
        pytest.fail(f"{bad.numel()} bytes differ, first at byte {int(bad[0])}")


def assert_all_same_bytes(actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> None:
    """``assert_same_bytes`` pairwise over two equally long lists."""
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert_same_bytes(got, want)


def sentinel_like(shape: tuple[int, ...], dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
    """A tensor of ``shape`` whose every byte is the sentinel."""
    t = torch.empty(shape, dtype=dtype, device=device)
    t.view(torch.uint8).fill_(SENTINEL)
    return t


def sentinel_copies(caches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Sentinel-filled CPU tensors shaped like ``caches``."""
    return [sentinel_like(tuple(c.shape), c.dtype) for c in caches]


def assert_untouched(ts: Sequence[torch.Tensor]) -> None:
    """Every byte of every tensor still holds the sentinel."""
    assert_all_same_bytes(ts, sentinel_copies(ts))


def chunk_shape(caches: Sequence[torch.Tensor], layout: str, num_tokens: int) -> tuple[int, ...]:
    """Shape of the chunk buffer of ``num_tokens`` tokens for ``caches``."""
    return describe(caches, layout).chunk_shape(num_tokens)


def mixed_slots(num_slots: int, block_size: int, seed: int = 1) -> list[int]:
    """Unique slots: a full block in order, a partial block, scattered slots, padding, last slot."""
    gen = torch.Generator().manual_seed(seed)
    first_block = list(range(2 * block_size, 3 * block_size))  # one whole block, offsets in order
    perm = (torch.randperm(num_slots - 2, generator=gen) + 1).tolist()  # 1 .. num_slots - 2
    rest = [s for s in perm if s not in first_block][:6]
    return [*first_block, -1, rest[0], rest[1], -1, num_slots - 1, *rest[2:], 0]


def expected_gather(caches: Sequence[torch.Tensor], slots: list[int], layout: str) -> torch.Tensor:
    """The reference gather into a sentinel-filled buffer."""
    out = sentinel_like(chunk_shape(caches, layout, len(slots)), caches[0].dtype)
    ref.paged_kv_gather([c.cpu() for c in caches], slots, out, layout)
    return out


def expected_scatter(
    chunk: torch.Tensor, caches: Sequence[torch.Tensor], slots: list[int], layout: str
) -> list[torch.Tensor]:
    """The reference scatter into CPU copies of ``caches``."""
    exp = [c.cpu().clone() for c in caches]
    ref.paged_kv_scatter(chunk.cpu(), exp, slots, layout)
    return exp


def split_tokens(sizes: list[int]) -> list[tuple[int, int]]:
    """``[(begin, end)]`` of consecutive chunks of ``sizes`` tokens."""
    out, b = [], 0
    for n in sizes:
        out.append((b, b + n))
        b += n
    return out


def expected_gather_chunks(
    caches: Sequence[torch.Tensor], slots: list[int], sizes: list[int], layout: str
) -> list[torch.Tensor]:
    """The reference gather looped per chunk, each into a sentinel-filled buffer."""
    return [expected_gather(caches, slots[b:e], layout) for b, e in split_tokens(sizes)]


def expected_scatter_chunks(
    chunks: Sequence[torch.Tensor], caches: Sequence[torch.Tensor], slots: list[int], layout: str
) -> list[torch.Tensor]:
    """The reference scatter looped per chunk, in order, over copies of ``caches``."""
    exp = [c.cpu().clone() for c in caches]
    for chunk, (b, e) in zip(chunks, split_tokens([int(c.shape[2]) for c in chunks]), strict=True):
        ref.paged_kv_scatter(chunk.cpu(), exp, slots[b:e], layout)
    return exp


def sentinel_chunks(
    caches: Sequence[torch.Tensor], layout: str, sizes: list[int], device: str = "cpu"
) -> list[torch.Tensor]:
    """Sentinel-filled chunk buffers of ``sizes`` tokens."""
    return [sentinel_like(chunk_shape(caches, layout, n), caches[0].dtype, device) for n in sizes]


def random_chunks(
    caches: Sequence[torch.Tensor], layout: str, sizes: list[int], seed: int
) -> list[torch.Tensor]:
    """Random chunk buffers of ``sizes`` tokens."""
    gen = torch.Generator().manual_seed(seed)
    return [random_bits(chunk_shape(caches, layout, n), caches[0].dtype, gen) for n in sizes]


def strided_views(
    kind: str,
) -> tuple[list[torch.Tensor], Callable[[list[torch.Tensor]], list[torch.Tensor]], str]:
    """Strided views.

    Base tensors, the function that cuts the per-layer (non-contiguous) caches out of
    them, and the layout (``kind`` one of ``STRIDED_KINDS``).
    """
    gen = torch.Generator().manual_seed(11)
    if kind == "head_slice":  # flash_attn, head_size half of the stored dim: per-head rows
        bases = [random_bits((2, 5, 4, 3, 16), torch.float16, gen) for _ in range(2)]
        return bases, lambda bs: [b[..., :8] for b in bs], "flash_attn"
    if kind == "every_other_block":  # flashinfer, block stride doubled: rows stay contiguous
        bases = [random_bits((10, 2, 4, 2, 8), torch.float32, gen) for _ in range(2)]
        return bases, lambda bs: [b[::2] for b in bs], "flashinfer"
    if kind == "dim_stride":  # hnd with every other element of the head dim: fully strided
        bases = [random_bits((5, 2, 2, 4, 16), torch.bfloat16, gen) for _ in range(2)]
        return bases, lambda bs: [b[..., ::2] for b in bs], "hnd"
    if kind == "stacked_layers":  # one tensor for all layers, layer views into it (vLLM style)
        bases = [random_bits((3, 2, 5, 4, 2, 8), torch.float16, gen)]
        return bases, lambda bs: [bs[0][i] for i in range(3)], "flash_attn"
    if kind == "vllm_cpu_block_view":  # vllm_cpu with every other block
        bases = [random_bits((10, 2, 4, 16), torch.float16, gen) for _ in range(2)]
        return bases, lambda bs: [b[1::2] for b in bs], "vllm_cpu"
    raise AssertionError(kind)


def to_cuda(ts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """CUDA copies of ``ts``."""
    return [t.cuda() for t in ts]
