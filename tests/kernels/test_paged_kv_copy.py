"""paged_kv_gather / paged_kv_scatter against the naive references, bit for bit.

Every destination (the chunk buffer for gather, every layer's whole cache for scatter) is
pre-filled with a sentinel byte and compared in full as raw bytes, so a stray write anywhere
fails. Payloads are random integers viewed as the dtype (NaN/Inf bit patterns included).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from lmcache_native import _native
from lmcache_native.ops import (
    copy_isa,
    copy_set_isa,
    copy_supported_isas,
    describe,
    paged_kv_gather,
    paged_kv_gather_chunks,
    paged_kv_scatter,
    paged_kv_scatter_chunks,
)
from lmcache_native.testing import reference as ref

SENTINEL = 0xA5
COPY_ISAS = copy_supported_isas()
# The layouts defined for any shape and element width; vllm_cpu_amx (2/4-byte elements, block and
# head sizes multiples of 16, CPU only) has its own module, test_vllm_cpu_amx.py.
LAYOUTS = ["flash_attn", "flashinfer", "hnd", "mla", "vllm_cpu"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float64]
_INT_OF_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


# --- every test runs on every CPU copy path this machine has ------------------------------------


@pytest.fixture(autouse=True, params=COPY_ISAS)
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Forces the CPU copy instruction set (``sse2``, ``avx2``) for the test, then restores it."""
    before = copy_isa()
    copy_set_isa(request.param)
    yield request.param
    copy_set_isa(before)


# --- helpers ------------------------------------------------------------------------------------


def random_bits(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Uniform random bit patterns of ``dtype`` (every NaN/Inf/denormal pattern can occur)."""
    width = torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 256, (*shape, width), dtype=torch.uint8, generator=gen)
    return raw.view(_INT_OF_WIDTH[width]).view(dtype).reshape(shape)


def cache_shape(layout: str, n: int, b: int, h: int, d: int) -> tuple[int, ...]:
    """Per-layer cache shape of ``layout`` for (num_blocks, block_size, num_heads, head_size)."""
    return {
        "flash_attn": (2, n, b, h, d),
        "flashinfer": (n, 2, b, h, d),
        "hnd": (n, 2, h, b, d),
        "mla": (n, b, d),
        "vllm_cpu": (n, h, b, 2 * d),
    }[layout]


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
    """Random per-layer caches (MLA uses one head)."""
    gen = torch.Generator().manual_seed(seed)
    h = 1 if layout == "mla" else num_heads
    shape = cache_shape(layout, num_blocks, block_size, h, head_size)
    return [random_bits(shape, dtype, gen) for _ in range(num_layers)]


def fill_sentinel(t: torch.Tensor) -> None:
    """Fills every byte of a contiguous tensor with the sentinel."""
    assert t.is_contiguous()
    t.view(torch.uint8).fill_(SENTINEL)


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of ``t`` (a contiguous copy for views), as a flat uint8 tensor on the CPU."""
    return t.contiguous().view(torch.uint8).reshape(-1).cpu()


def assert_same_bytes(actual: torch.Tensor, expected: torch.Tensor) -> None:
    a, e = as_bytes(actual), as_bytes(expected)
    assert a.shape == e.shape
    if not torch.equal(a, e):
        bad = (a != e).nonzero().reshape(-1)
        pytest.fail(f"{bad.numel()} bytes differ, first at byte {int(bad[0])}")


def sentinel_like(shape: tuple[int, ...], dtype: torch.dtype, device: str = "cpu") -> torch.Tensor:
    t = torch.empty(shape, dtype=dtype, device=device)
    t.view(torch.uint8).fill_(SENTINEL)
    return t


def chunk_shape(caches: list[torch.Tensor], layout: str, num_tokens: int) -> tuple[int, ...]:
    return describe(caches, layout).chunk_shape(num_tokens)


def mixed_slots(num_slots: int, block_size: int, seed: int = 1) -> list[int]:
    """Unique slots: a full block in order, a partial block, scattered slots, padding, last slot."""
    gen = torch.Generator().manual_seed(seed)
    first_block = list(range(2 * block_size, 3 * block_size))  # one whole block, offsets in order
    perm = (torch.randperm(num_slots - 2, generator=gen) + 1).tolist()  # 1 .. num_slots - 2
    rest = [s for s in perm if s not in first_block][:6]
    return [*first_block, -1, rest[0], rest[1], -1, num_slots - 1, *rest[2:], 0]


def expected_gather(caches: list[torch.Tensor], slots: list[int], layout: str) -> torch.Tensor:
    out = sentinel_like(chunk_shape(caches, layout, len(slots)), caches[0].dtype)
    ref.paged_kv_gather([c.cpu() for c in caches], slots, out, layout)
    return out


def expected_scatter(
    chunk: torch.Tensor, caches: list[torch.Tensor], slots: list[int], layout: str
) -> list[torch.Tensor]:
    exp = [c.cpu().clone() for c in caches]
    ref.paged_kv_scatter(chunk.cpu(), exp, slots, layout)
    return exp


# --- bit-exact over every layout and dtype --------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gather_matches_reference(layout: str, dtype: torch.dtype) -> None:
    caches = make_caches(layout, dtype)
    slots = mixed_slots(5 * 4, 4)
    out = sentinel_like(chunk_shape(caches, layout, len(slots)), dtype)
    paged_kv_gather(caches, torch.tensor(slots), out, layout)
    assert_same_bytes(out, expected_gather(caches, slots, layout))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_scatter_matches_reference(layout: str, dtype: torch.dtype) -> None:
    caches = make_caches(layout, dtype)
    for c in caches:
        fill_sentinel(c)
    slots = mixed_slots(5 * 4, 4)
    chunk = random_bits(
        chunk_shape(caches, layout, len(slots)), dtype, torch.Generator().manual_seed(7)
    )
    exp = expected_scatter(chunk, caches, slots, layout)
    paged_kv_scatter(chunk, caches, torch.tensor(slots), layout)
    for got, want in zip(caches, exp, strict=True):
        assert_same_bytes(got, want)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gather_scatter_round_trip(layout: str) -> None:
    src = make_caches(layout, torch.bfloat16, seed=3)
    slots = mixed_slots(5 * 4, 4, seed=4)
    chunk = sentinel_like(chunk_shape(src, layout, len(slots)), torch.bfloat16)
    paged_kv_gather(src, torch.tensor(slots), chunk, layout)
    dst = [sentinel_like(tuple(c.shape), c.dtype) for c in src]
    paged_kv_scatter(chunk, dst, torch.tensor(slots), layout)
    for d, s in zip(dst, src, strict=True):
        for slot in slots:
            if slot == -1:
                continue
            for kv in range(ref.num_kv(layout)):
                assert_same_bytes(ref.kv_row(d, layout, kv, slot), ref.kv_row(s, layout, kv, slot))
    # Every other slot still holds the sentinel: compare against the reference scatter.
    exp = expected_scatter(
        chunk, [sentinel_like(tuple(c.shape), c.dtype) for c in src], slots, layout
    )
    for d, e in zip(dst, exp, strict=True):
        assert_same_bytes(d, e)


# --- named edge cases -----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["flash_attn", "vllm_cpu", "mla"])
def test_zero_tokens(layout: str) -> None:
    caches = make_caches(layout, torch.float16)
    before = [c.clone() for c in caches]
    out = sentinel_like(chunk_shape(caches, layout, 0), torch.float16)
    paged_kv_gather(caches, torch.empty(0, dtype=torch.int64), out, layout)
    paged_kv_scatter(out, caches, torch.empty(0, dtype=torch.int64), layout)
    for c, b in zip(caches, before, strict=True):
        assert_same_bytes(c, b)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_all_padding_writes_nothing(layout: str) -> None:
    caches = make_caches(layout, torch.float32)
    before = [c.clone() for c in caches]
    slots = torch.full((7,), -1, dtype=torch.int64)
    out = sentinel_like(chunk_shape(caches, layout, 7), torch.float32)
    paged_kv_gather(caches, slots, out, layout)
    assert_same_bytes(out, sentinel_like(tuple(out.shape), torch.float32))
    chunk = random_bits(tuple(out.shape), torch.float32, torch.Generator().manual_seed(2))
    paged_kv_scatter(chunk, caches, slots, layout)
    for c, b in zip(caches, before, strict=True):
        assert_same_bytes(c, b)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_last_slot_of_last_block(layout: str) -> None:
    caches = make_caches(layout, torch.bfloat16, num_blocks=3, block_size=16)
    num_slots = 3 * 16
    slots = [num_slots - 1, 0, num_slots - 16]
    out = sentinel_like(chunk_shape(caches, layout, len(slots)), torch.bfloat16)
    paged_kv_gather(caches, torch.tensor(slots), out, layout)
    assert_same_bytes(out, expected_gather(caches, slots, layout))
    for c in caches:
        fill_sentinel(c)
    exp = expected_scatter(out, caches, slots, layout)
    paged_kv_scatter(out, caches, torch.tensor(slots), layout)
    for got, want in zip(caches, exp, strict=True):
        assert_same_bytes(got, want)


def _strided_views(
    kind: str,
) -> tuple[list[torch.Tensor], Callable[[list[torch.Tensor]], list[torch.Tensor]], str]:
    """Base tensors, the function that cuts the per-layer (non-contiguous) caches out of
    them, and the layout."""
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


@pytest.mark.parametrize(
    "kind",
    ["head_slice", "every_other_block", "dim_stride", "stacked_layers", "vllm_cpu_block_view"],
)
def test_non_contiguous_cache(kind: str) -> None:
    bases, cut, layout = _strided_views(kind)
    caches = cut(bases)
    assert not all(c.is_contiguous() for c in caches) or kind == "stacked_layers"
    num_slots = describe(caches, layout).num_slots
    slots = [num_slots - 1, 3, 4, 5, -1, 0, 9]
    out = sentinel_like(chunk_shape(caches, layout, len(slots)), caches[0].dtype)
    paged_kv_gather(caches, torch.tensor(slots), out, layout)
    assert_same_bytes(out, expected_gather(caches, slots, layout))

    # Scatter: compare the whole base tensors, so bytes a view skips must stay unchanged too.
    chunk = random_bits(tuple(out.shape), out.dtype, torch.Generator().manual_seed(5))
    exp_bases = [b.clone() for b in bases]
    ref.paged_kv_scatter(chunk, cut(exp_bases), slots, layout)
    paged_kv_scatter(chunk, caches, torch.tensor(slots), layout)
    for got, want in zip(bases, exp_bases, strict=True):
        assert_same_bytes(got, want)


@pytest.mark.parametrize("bad", [20, 21, -2, 2**40, -(2**40)])
@pytest.mark.parametrize("layout", ["flash_attn", "vllm_cpu", "mla"])
def test_out_of_range_slot_raises_and_writes_nothing(layout: str, bad: int) -> None:
    caches = make_caches(layout, torch.float16)  # 5 blocks of 4: slots 0..19
    slots = torch.tensor([0, 1, 2, 3, 19, -1, bad, 5])
    out = sentinel_like(chunk_shape(caches, layout, len(slots)), torch.float16)
    with pytest.raises(IndexError, match=rf"slot_mapping\[6\] = {bad}\b"):
        paged_kv_gather(caches, slots, out, layout)
    assert_same_bytes(out, sentinel_like(tuple(out.shape), torch.float16))

    before = [c.clone() for c in caches]
    chunk = random_bits(tuple(out.shape), torch.float16, torch.Generator().manual_seed(3))
    with pytest.raises(IndexError, match=r"slot_mapping\[6\]"):
        paged_kv_scatter(chunk, caches, slots, layout)
    for c, b in zip(caches, before, strict=True):
        assert_same_bytes(c, b)


def test_int32_slot_mapping() -> None:
    caches = make_caches("flashinfer", torch.bfloat16)
    slots = mixed_slots(20, 4)
    out = sentinel_like(chunk_shape(caches, "flashinfer", len(slots)), torch.bfloat16)
    paged_kv_gather(caches, torch.tensor(slots, dtype=torch.int32), out, "flashinfer")
    assert_same_bytes(out, expected_gather(caches, slots, "flashinfer"))
    with pytest.raises(IndexError, match=r"slot_mapping\[1\] = 20\b"):
        paged_kv_gather(
            caches, torch.tensor([0, 20], dtype=torch.int32), out[:, :, :2].clone(), "flashinfer"
        )


def test_non_contiguous_slot_mapping() -> None:
    caches = make_caches("flash_attn", torch.float32)
    base = torch.tensor([0, 99, 5, 99, 19, 99, -1, 99])
    slots = base[::2]
    out = sentinel_like(chunk_shape(caches, "flash_attn", 4), torch.float32)
    paged_kv_gather(caches, slots, out, "flash_attn")
    assert_same_bytes(out, expected_gather(caches, slots.tolist(), "flash_attn"))


@pytest.mark.parametrize("layout", ["flash_attn", "vllm_cpu"])
def test_many_layers(layout: str) -> None:
    caches = make_caches(
        layout, torch.float16, num_layers=130, num_blocks=2, head_size=4, num_heads=1
    )
    slots = [7, 0, -1, 3]
    out = sentinel_like(chunk_shape(caches, layout, len(slots)), torch.float16)
    paged_kv_gather(caches, torch.tensor(slots), out, layout)
    assert_same_bytes(out, expected_gather(caches, slots, layout))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float8_e4m3fn], ids=str)
@pytest.mark.parametrize("layout", ["flash_attn", "vllm_cpu", "hnd"])
def test_multithreaded_large_copy(layout: str, dtype: torch.dtype, threads: int) -> None:
    """Big enough to be split over threads, with whole 16-token blocks (streaming stores, SIMD
    transposes of vllm_cpu's K) and runs cut short by padding (the scalar edges)."""
    prev = _native.num_threads()
    _native.set_num_threads(threads)
    try:
        caches = make_caches(
            layout, dtype, num_layers=2, num_blocks=40, block_size=16, num_heads=4, head_size=64
        )
        gen = torch.Generator().manual_seed(9)
        blocks = torch.randperm(40, generator=gen)[:24]
        slots = (blocks[:, None] * 16 + torch.arange(16)).reshape(-1)
        slots[5] = -1
        slots[40:43] = slots[40:43].flip(0)
        out = sentinel_like(chunk_shape(caches, layout, slots.numel()), dtype)
        paged_kv_gather(caches, slots, out, layout)
        assert_same_bytes(out, expected_gather(caches, slots.tolist(), layout))
        chunk = random_bits(tuple(out.shape), dtype, gen)
        exp = expected_scatter(chunk, caches, slots.tolist(), layout)
        paged_kv_scatter(chunk, caches, slots, layout)
        for got, want in zip(caches, exp, strict=True):
            assert_same_bytes(got, want)
    finally:
        _native.set_num_threads(prev)


@pytest.mark.parametrize(
    ("num_heads", "head_size", "dtype"),
    [(10, 128, torch.float32), (2, 1024, torch.float64)],
    ids=["head_groups", "tile_larger_than_stage"],
)
def test_vllm_cpu_wide_heads(num_heads: int, head_size: int, dtype: torch.dtype) -> None:
    """Transposed K tiles that fill the staging buffer in several head groups, or exceed it."""
    caches = make_caches(
        "vllm_cpu",
        dtype,
        num_layers=1,
        num_blocks=3,
        block_size=16,
        num_heads=num_heads,
        head_size=head_size,
    )
    slots = [*range(32, 48), *range(0, 16), 20, 21, -1, 47]
    out = sentinel_like(chunk_shape(caches, "vllm_cpu", len(slots)), dtype)
    paged_kv_gather(caches, torch.tensor(slots), out, "vllm_cpu")
    assert_same_bytes(out, expected_gather(caches, slots, "vllm_cpu"))
    for c in caches:
        fill_sentinel(c)
    scatter_slots = slots[:-1]  # unique slots
    chunk = random_bits(tuple(out[:, :, :-1].shape), dtype, torch.Generator().manual_seed(6))
    exp = expected_scatter(chunk, caches, scatter_slots, "vllm_cpu")
    paged_kv_scatter(chunk, caches, torch.tensor(scatter_slots), "vllm_cpu")
    for got, want in zip(caches, exp, strict=True):
        assert_same_bytes(got, want)


def test_misaligned_chunk_buffer() -> None:
    """A contiguous chunk starting one element into its storage (not 16-byte aligned)."""
    caches = make_caches(
        "flash_attn", torch.float16, num_blocks=8, block_size=16, num_heads=4, head_size=64
    )
    slots = list(range(16, 64))
    shape = chunk_shape(caches, "flash_attn", len(slots))
    storage = sentinel_like((1 + torch.Size(shape).numel(),), torch.float16)
    out = storage[1:].view(shape)
    paged_kv_gather(caches, torch.tensor(slots), out, "flash_attn")
    assert_same_bytes(out.clone(), expected_gather(caches, slots, "flash_attn"))
    assert int(storage[:1].view(torch.uint8)[0]) == SENTINEL


# --- batched ops: many chunk buffers in one call -------------------------------------------------


def split_tokens(sizes: list[int]) -> list[tuple[int, int]]:
    """``[(begin, end)]`` of consecutive chunks of ``sizes`` tokens."""
    out, b = [], 0
    for n in sizes:
        out.append((b, b + n))
        b += n
    return out


def expected_gather_chunks(
    caches: list[torch.Tensor], slots: list[int], sizes: list[int], layout: str
) -> list[torch.Tensor]:
    """The reference gather looped per chunk, each into a sentinel-filled buffer."""
    return [expected_gather(caches, slots[b:e], layout) for b, e in split_tokens(sizes)]


def expected_scatter_chunks(
    chunks: list[torch.Tensor], caches: list[torch.Tensor], slots: list[int], layout: str
) -> list[torch.Tensor]:
    """The reference scatter looped per chunk, in order, over copies of ``caches``."""
    exp = [c.cpu().clone() for c in caches]
    for chunk, (b, e) in zip(chunks, split_tokens([int(c.shape[2]) for c in chunks]), strict=True):
        ref.paged_kv_scatter(chunk.cpu(), exp, slots[b:e], layout)
    return exp


def sentinel_chunks(
    caches: list[torch.Tensor], layout: str, sizes: list[int], device: str = "cpu"
) -> list[torch.Tensor]:
    return [sentinel_like(chunk_shape(caches, layout, n), caches[0].dtype, device) for n in sizes]


def random_chunks(
    caches: list[torch.Tensor], layout: str, sizes: list[int], seed: int
) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [random_bits(chunk_shape(caches, layout, n), caches[0].dtype, gen) for n in sizes]


# Uneven chunk sizes over the 14 tokens of mixed_slots(20, 4): a whole block, an empty chunk, a
# chunk that is all padding ([-1] alone at token 4), one with padding inside, the last slot of
# the last block alone, and a short tail.
CHUNK_SIZES = [4, 0, 1, 3, 1, 3, 2]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gather_chunks_matches_per_chunk_reference(layout: str, dtype: torch.dtype) -> None:
    caches = make_caches(layout, dtype)
    slots = mixed_slots(5 * 4, 4)
    assert sum(CHUNK_SIZES) == len(slots) and slots[4] == -1
    outs = sentinel_chunks(caches, layout, CHUNK_SIZES)
    paged_kv_gather_chunks(caches, torch.tensor(slots), outs, layout)
    for got, want in zip(
        outs, expected_gather_chunks(caches, slots, CHUNK_SIZES, layout), strict=True
    ):
        assert_same_bytes(got, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_scatter_chunks_matches_per_chunk_reference(layout: str, dtype: torch.dtype) -> None:
    caches = make_caches(layout, dtype)
    for c in caches:
        fill_sentinel(c)
    slots = mixed_slots(5 * 4, 4)
    chunks = random_chunks(caches, layout, CHUNK_SIZES, seed=7)
    exp = expected_scatter_chunks(chunks, caches, slots, layout)
    paged_kv_scatter_chunks(chunks, caches, torch.tensor(slots), layout)
    for got, want in zip(caches, exp, strict=True):
        assert_same_bytes(got, want)


@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("layout", ["flash_attn", "vllm_cpu", "hnd", "mla"])
def test_chunks_round_trip_equals_single_call(layout: str, slot_dtype: torch.dtype) -> None:
    """Whole blocks in random order (the engine's case) with padding runs; the batched gather
    equals one single-buffer gather cut into chunks, and scattering the chunks back into a
    sentinel cache restores exactly the gathered rows."""
    caches = make_caches(
        layout, torch.bfloat16, num_layers=2, num_blocks=12, block_size=8, num_heads=2, head_size=32
    )
    gen = torch.Generator().manual_seed(13)
    slots = (torch.randperm(12, generator=gen)[:10, None] * 8 + torch.arange(8)).reshape(-1)
    slots[17:21] = -1
    slots = slots.to(slot_dtype)
    sizes = [32, 32, 13, 3]  # a chunk that ends mid-block, then a short tail
    assert sum(sizes) == slots.numel()
    whole = sentinel_like(chunk_shape(caches, layout, slots.numel()), torch.bfloat16)
    paged_kv_gather(caches, slots, whole, layout)
    outs = sentinel_chunks(caches, layout, sizes)
    paged_kv_gather_chunks(caches, slots, outs, layout)
    for out, (b, e) in zip(outs, split_tokens(sizes), strict=True):
        assert_same_bytes(out, whole[:, :, b:e])
    dst = [sentinel_like(tuple(c.shape), c.dtype) for c in caches]
    paged_kv_scatter_chunks(outs, dst, slots, layout)
    exp = [sentinel_like(tuple(c.shape), c.dtype) for c in caches]
    paged_kv_scatter(whole, exp, slots, layout)
    for d, e in zip(dst, exp, strict=True):
        assert_same_bytes(d, e)


@pytest.mark.parametrize("bad_at", [0, 6, 13])
@pytest.mark.parametrize("layout", ["flash_attn", "vllm_cpu", "mla"])
def test_chunks_out_of_range_slot_writes_nothing_anywhere(layout: str, bad_at: int) -> None:
    """A bad slot in the first, a middle or the last chunk: IndexError naming its position in
    the whole slot_mapping, and no chunk (gather) or cache (scatter) is touched."""
    caches = make_caches(layout, torch.float16)
    slots = mixed_slots(5 * 4, 4)
    slots[bad_at] = 20
    outs = sentinel_chunks(caches, layout, CHUNK_SIZES)
    with pytest.raises(IndexError, match=rf"slot_mapping\[{bad_at}\] = 20\b"):
        paged_kv_gather_chunks(caches, torch.tensor(slots), outs, layout)
    for out in outs:
        assert_same_bytes(out, sentinel_like(tuple(out.shape), torch.float16))

    before = [c.clone() for c in caches]
    chunks = random_chunks(caches, layout, CHUNK_SIZES, seed=3)
    with pytest.raises(IndexError, match=rf"slot_mapping\[{bad_at}\] = 20\b"):
        paged_kv_scatter_chunks(chunks, caches, torch.tensor(slots), layout)
    for c, b in zip(caches, before, strict=True):
        assert_same_bytes(c, b)


@pytest.mark.parametrize("sizes", [[4, 4], [4, 4, 4, 4, 4], [], [13, 0, 2]])
def test_chunks_token_count_mismatch_raises_value_error(sizes: list[int]) -> None:
    caches = make_caches("flash_attn", torch.float32)
    slots = torch.tensor(mixed_slots(5 * 4, 4))  # 14 tokens
    outs = sentinel_chunks(caches, "flash_attn", sizes)
    with pytest.raises(ValueError, match=rf"hold {sum(sizes)} tokens in all.*slot_mapping has 14"):
        paged_kv_gather_chunks(caches, slots, outs, "flash_attn")
    for out in outs:
        assert_same_bytes(out, sentinel_like(tuple(out.shape), torch.float32))
    before = [c.clone() for c in caches]
    with pytest.raises(ValueError, match=r"slot_mapping has 14"):
        paged_kv_scatter_chunks(outs, caches, slots, "flash_attn")
    for c, b in zip(caches, before, strict=True):
        assert_same_bytes(c, b)


def test_chunks_native_count_check() -> None:
    """The binding checks the counts too (a caller that bypasses the Python wrapper)."""
    caches = make_caches("flash_attn", torch.float32)
    kv = describe(caches, "flash_attn")
    slots = torch.tensor([0, 1, 2], dtype=torch.int64)
    out = sentinel_like(chunk_shape(caches, "flash_attn", 2), torch.float32)
    with pytest.raises(ValueError, match=r"outs hold 2 tokens in all, but slot_mapping has 3"):
        _native.C.paged_kv_gather_chunks(
            kv.layer_ptrs,
            kv.flat,
            int(slots.data_ptr()),
            3,
            8,
            [int(out.data_ptr())],
            [2],
            -1,
            0,
            0,
        )
    with pytest.raises(ValueError, match=r"chunks\[0\] has -1 tokens"):
        _native.C.paged_kv_scatter_chunks(
            [int(out.data_ptr()), int(out.data_ptr())],
            [-1, 4],
            kv.layer_ptrs,
            kv.flat,
            int(slots.data_ptr()),
            3,
            8,
            -1,
            0,
            0,
        )
    assert_same_bytes(out, sentinel_like(tuple(out.shape), torch.float32))


def test_chunks_all_padding_and_zero_tokens() -> None:
    caches = make_caches("vllm_cpu", torch.bfloat16)
    before = [c.clone() for c in caches]
    outs = sentinel_chunks(caches, "vllm_cpu", [3, 4])
    paged_kv_gather_chunks(caches, torch.full((7,), -1), outs, "vllm_cpu")
    for out in outs:
        assert_same_bytes(out, sentinel_like(tuple(out.shape), torch.bfloat16))
    paged_kv_scatter_chunks(
        random_chunks(caches, "vllm_cpu", [3, 4], 1), caches, torch.full((7,), -1), "vllm_cpu"
    )
    paged_kv_gather_chunks(caches, torch.empty(0, dtype=torch.int64), [], "vllm_cpu")
    paged_kv_scatter_chunks(
        sentinel_chunks(caches, "vllm_cpu", [0, 0]),
        caches,
        torch.empty(0, dtype=torch.int64),
        "vllm_cpu",
    )
    for c, b in zip(caches, before, strict=True):
        assert_same_bytes(c, b)


def test_chunks_bad_arguments_name_the_chunk() -> None:
    caches = make_caches("flash_attn", torch.float16)
    slots = torch.tensor([0, 1, 2])
    good = sentinel_chunks(caches, "flash_attn", [2, 1])
    with pytest.raises(TypeError, match="outs must be a list of chunk tensors"):
        paged_kv_gather_chunks(caches, slots, good[0], "flash_attn")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"outs\[1\] must be a torch.Tensor"):
        paged_kv_gather_chunks(caches, slots, [good[0], 3], "flash_attn")  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"outs\[1\] dtype"):
        paged_kv_gather_chunks(caches, slots, [good[0], good[1].float()], "flash_attn")
    with pytest.raises(ValueError, match=r"outs\[0\] must have shape \(2, 3, num_tokens, 16\)"):
        paged_kv_gather_chunks(caches, slots, [good[0][:1].clone(), good[1]], "flash_attn")
    with pytest.raises(ValueError, match=r"chunks\[1\] must be contiguous"):
        paged_kv_scatter_chunks(
            [good[0], torch.empty(2, 3, 1, 32, dtype=torch.float16)[..., ::2]],
            caches,
            slots,
            "flash_attn",
        )


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "dtype", [torch.float8_e4m3fn, torch.bfloat16, torch.float32, torch.float64], ids=str
)
@pytest.mark.parametrize("layout", ["flash_attn", "vllm_cpu", "hnd"])
def test_chunks_multithreaded_realistic(layout: str, dtype: torch.dtype, threads: int) -> None:
    """Realistic head geometry (8 heads x 128), whole 16-token blocks in random order, several
    chunks with a short tail and padding runs, split over threads: every dtype width through the
    streaming-store and SIMD-transpose paths, bit for bit against the per-chunk reference."""
    prev = _native.num_threads()
    _native.set_num_threads(threads)
    try:
        caches = make_caches(
            layout, dtype, num_layers=2, num_blocks=24, block_size=16, num_heads=8, head_size=128
        )
        gen = torch.Generator().manual_seed(19)
        slots = (torch.randperm(24, generator=gen)[:20, None] * 16 + torch.arange(16)).reshape(-1)
        slots[37:41] = -1
        sizes = [128, 128, 64]  # 320 tokens: two full chunks and a short tail
        outs = sentinel_chunks(caches, layout, sizes)
        paged_kv_gather_chunks(caches, slots, outs, layout)
        want = expected_gather_chunks(caches, slots.tolist(), sizes, layout)
        for got, exp in zip(outs, want, strict=True):
            assert_same_bytes(got, exp)
        chunks = random_chunks(caches, layout, sizes, seed=23)
        exp_caches = expected_scatter_chunks(chunks, caches, slots.tolist(), layout)
        paged_kv_scatter_chunks(chunks, caches, slots, layout)
        for got, exp in zip(caches, exp_caches, strict=True):
            assert_same_bytes(got, exp)
    finally:
        _native.set_num_threads(prev)


@pytest.mark.parametrize(
    "dtype", [torch.float8_e4m3fn, torch.bfloat16, torch.float32, torch.float64], ids=str
)
def test_vllm_cpu_block_size_32_last_token_of_each_block(dtype: torch.dtype) -> None:
    """Regression: vllm_cpu with block_size 32 (K stored transposed [head_size, 32]), 16 blocks,
    several hundred tokens, two threads. A build of an intermediate kernel state once returned
    wrong K values for the last token of each block; check those rows explicitly, then every
    byte, for the single-buffer ops and the batched ones, every dtype width."""
    prev = _native.num_threads()
    _native.set_num_threads(2)
    try:
        bs, nb = 32, 16
        caches = make_caches(
            "vllm_cpu",
            dtype,
            num_layers=2,
            num_blocks=nb,
            block_size=bs,
            num_heads=8,
            head_size=128,
            seed=29,
        )
        gen = torch.Generator().manual_seed(31)
        blocks = torch.randperm(nb, generator=gen)[:12]
        slots = (blocks[:, None] * bs + torch.arange(bs)).reshape(-1)  # 384 tokens, whole blocks
        n = slots.numel()
        out = sentinel_like(chunk_shape(caches, "vllm_cpu", n), dtype)
        paged_kv_gather(caches, slots, out, "vllm_cpu")
        sizes = [100, 156, 128]  # chunk edges fall inside blocks
        outs = sentinel_chunks(caches, "vllm_cpu", sizes)
        paged_kv_gather_chunks(caches, slots, outs, "vllm_cpu")
        batched = torch.cat(outs, dim=2)
        for i in range(bs - 1, n, bs):  # the last token of each block
            slot = int(slots[i])
            assert slot % bs == bs - 1
            for li, layer in enumerate(caches):
                for kv in range(2):
                    want = ref.kv_row(layer, "vllm_cpu", kv, slot)
                    assert torch.equal(as_bytes(out[kv, li, i]), as_bytes(want)), (i, li, kv)
                    assert torch.equal(as_bytes(batched[kv, li, i]), as_bytes(want)), (i, li, kv)
        assert_same_bytes(out, expected_gather(caches, slots.tolist(), "vllm_cpu"))
        assert_same_bytes(batched, out)

        chunk = random_bits(tuple(out.shape), dtype, gen)
        single = [sentinel_like(tuple(c.shape), dtype) for c in caches]
        paged_kv_scatter(chunk, single, slots, "vllm_cpu")
        many = [sentinel_like(tuple(c.shape), dtype) for c in caches]
        parts = [chunk[:, :, b:e].contiguous() for b, e in split_tokens(sizes)]
        paged_kv_scatter_chunks(parts, many, slots, "vllm_cpu")
        for i in range(bs - 1, n, bs):
            slot = int(slots[i])
            for li in range(2):
                for kv in range(2):
                    got = ref.kv_row(single[li], "vllm_cpu", kv, slot)
                    assert torch.equal(as_bytes(got), as_bytes(chunk[kv, li, i])), (i, li, kv)
        exp = expected_scatter(
            chunk,
            [sentinel_like(tuple(c.shape), dtype) for c in caches],
            slots.tolist(),
            "vllm_cpu",
        )
        for s_, m_, e_ in zip(single, many, exp, strict=True):
            assert_same_bytes(s_, e_)
            assert_same_bytes(m_, e_)
    finally:
        _native.set_num_threads(prev)


# --- the AVX2 transposed scatter (vllm_cpu K, 2-byte dtypes, multiples of 16) -------------------


def _runs_case(block_size: int) -> list[int]:
    """Runs that take every branch: whole blocks, half-block runs at offsets 0 and 16, runs not
    a multiple of 16, padding inside a run, a run cut by a block edge, single tokens."""
    b = block_size
    slots = [*range(3 * b, 4 * b), *range(0, b)]  # two whole blocks
    slots += [*range(b + 16, b + 32)] if b >= 32 else []  # 16 tokens at offset 16
    slots += [*range(5 * b, 5 * b + 16)]  # 16 tokens at offset 0 of a block
    slots += [*range(2 * b, 2 * b + 5), -1, 2 * b + 6, -1]  # short run, padding
    slots += [*range(6 * b - 3, 6 * b + 14)]  # 17 tokens across a block edge
    slots += [4 * b + 7, 7 * b - 1]
    return slots


@pytest.mark.parametrize("block_size", [16, 32, 48, 64])
@pytest.mark.parametrize("head_size", [16, 64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_vllm_cpu_transposed_scatter_paths(
    block_size: int, head_size: int, dtype: torch.dtype, isa: str
) -> None:
    """Every byte of every layer against the reference, on the run shapes the AVX2 path takes
    (direct streaming for block 16, the L1 tile for larger blocks) or hands back to SSE2."""
    caches = make_caches(
        "vllm_cpu",
        dtype,
        num_layers=2,
        num_blocks=7,
        block_size=block_size,
        num_heads=3,
        head_size=head_size,
        seed=block_size + head_size,
    )
    for c in caches:
        fill_sentinel(c)
    slots = _runs_case(block_size)
    chunk = random_bits(
        chunk_shape(caches, "vllm_cpu", len(slots)), dtype, torch.Generator().manual_seed(3)
    )
    exp = expected_scatter(chunk, caches, slots, "vllm_cpu")
    paged_kv_scatter(chunk, caches, torch.tensor(slots), "vllm_cpu")
    for got, want in zip(caches, exp, strict=True):
        assert_same_bytes(got, want)
    assert copy_isa() == isa


@pytest.mark.parametrize("offset_elems", [1, 8, 24])
def test_vllm_cpu_transposed_scatter_into_a_misaligned_cache(offset_elems: int, isa: str) -> None:
    """A cache that does not start on a 32-byte boundary: no aligned streaming store may be used
    on it (the direct path is refused), and the bytes still match."""
    shape = cache_shape("vllm_cpu", 4, 16, 2, 32)
    numel = 1
    for d in shape:
        numel *= d
    base = torch.empty(numel + offset_elems, dtype=torch.bfloat16)
    base.view(torch.uint8).fill_(SENTINEL)
    cache = base[offset_elems:].view(shape)
    assert cache.data_ptr() % 32 != 0
    slots = [*range(16, 32), *range(48, 64), 3, 4, 5]
    chunk = random_bits(
        chunk_shape([cache], "vllm_cpu", len(slots)),
        torch.bfloat16,
        torch.Generator().manual_seed(9),
    )
    exp = expected_scatter(chunk, [cache], slots, "vllm_cpu")
    paged_kv_scatter(chunk, [cache], torch.tensor(slots), "vllm_cpu")
    assert_same_bytes(cache, exp[0])
    assert torch.equal(
        base.view(torch.uint8)[: offset_elems * 2],
        torch.full((offset_elems * 2,), SENTINEL, dtype=torch.uint8),
    )


def test_copy_isa_can_be_forced_and_refuses_unknown_names() -> None:
    assert COPY_ISAS[0] == "sse2" and set(COPY_ISAS) <= {"sse2", "avx2"}
    before = copy_isa()
    try:
        for name in COPY_ISAS:
            copy_set_isa(name)
            assert copy_isa() == name
        with pytest.raises(ValueError, match="unknown copy ISA"):
            copy_set_isa("neon")
        if "avx2" not in COPY_ISAS:
            with pytest.raises(ValueError, match="not supported"):
                copy_set_isa("avx2")
    finally:
        copy_set_isa(before)


# --- argument checks ---------------------------------------------------------------------------


def test_bad_arguments_name_the_argument() -> None:
    caches = make_caches("flash_attn", torch.float16)
    slots = torch.tensor([0, 1])
    good = sentinel_like(chunk_shape(caches, "flash_attn", 2), torch.float16)
    with pytest.raises(TypeError, match="out dtype"):
        paged_kv_gather(caches, slots, good.to(torch.float32), "flash_attn")
    with pytest.raises(ValueError, match="out must have shape"):
        paged_kv_gather(caches, slots, good[:, :, :1].clone(), "flash_attn")
    with pytest.raises(ValueError, match="out must be contiguous"):
        paged_kv_gather(
            caches, slots, good.transpose(2, 3).contiguous().transpose(2, 3), "flash_attn"
        )
    with pytest.raises(ValueError, match="out must be on the CPU"):
        paged_kv_gather(
            caches, slots, torch.empty(good.shape, dtype=torch.float16, device="meta"), "flash_attn"
        )
    with pytest.raises(TypeError, match="out must be a torch.Tensor"):
        paged_kv_gather(caches, slots, [0.0], "flash_attn")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="slot_mapping must be int32 or int64"):
        paged_kv_gather(caches, slots.float(), good, "flash_attn")
    with pytest.raises(TypeError, match="slot_mapping must be a torch.Tensor"):
        paged_kv_gather(caches, [0, 1], good, "flash_attn")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="slot_mapping must be 1-D"):
        paged_kv_gather(caches, slots.view(1, 2), good, "flash_attn")
    with pytest.raises(ValueError, match="layout must be one of"):
        paged_kv_gather(caches, slots, good, "nhd")
    with pytest.raises(ValueError, match=r"kv_caches\[1\]"):
        paged_kv_gather([caches[0], caches[1][:, :4]], slots, good, "flash_attn")
    with pytest.raises(TypeError, match="chunk dtype"):
        paged_kv_scatter(good.to(torch.bfloat16), caches, slots, "flash_attn")
    with pytest.raises(ValueError, match="chunk must have shape"):
        paged_kv_scatter(good[:1], caches, slots, "flash_attn")
    with pytest.raises(ValueError, match="chunk must be on the CPU"):
        paged_kv_scatter(
            torch.empty(good.shape, dtype=torch.float16, device="meta"), caches, slots, "flash_attn"
        )


# --- CUDA ----------------------------------------------------------------------------------------


def _cuda(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.cuda() for t in ts]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_gather_scatter_match_reference(layout: str, dtype: torch.dtype) -> None:
    caches = make_caches(layout, dtype)
    slots = mixed_slots(20, 4)
    exp_out = expected_gather(caches, slots, layout)
    out = sentinel_like(tuple(exp_out.shape), dtype, "cuda")
    paged_kv_gather(_cuda(caches), torch.tensor(slots, device="cuda"), out, layout)
    assert_same_bytes(out, exp_out)

    dst = [sentinel_like(tuple(c.shape), dtype) for c in caches]
    chunk = random_bits(tuple(exp_out.shape), dtype, torch.Generator().manual_seed(8))
    exp = expected_scatter(chunk, dst, slots, layout)
    dst_cuda = _cuda(dst)
    paged_kv_scatter(chunk.cuda(), dst_cuda, torch.tensor(slots, device="cuda"), layout)
    for got, want in zip(dst_cuda, exp, strict=True):
        assert_same_bytes(got, want)


@pytest.mark.cuda
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_cpu_parity(layout: str) -> None:
    """The CPU twin and the CUDA kernel produce the same bytes on the same input."""
    caches = make_caches(
        layout, torch.bfloat16, num_blocks=16, block_size=16, num_heads=4, head_size=64
    )
    gen = torch.Generator().manual_seed(21)
    slots = torch.randperm(256, generator=gen)[:100]
    slots[::7] = -1
    out_cpu = sentinel_like(chunk_shape(caches, layout, 100), torch.bfloat16)
    out_gpu = sentinel_like(tuple(out_cpu.shape), torch.bfloat16, "cuda")
    paged_kv_gather(caches, slots, out_cpu, layout)
    paged_kv_gather(_cuda(caches), slots.cuda(), out_gpu, layout)
    assert_same_bytes(out_gpu, out_cpu)

    chunk = random_bits(tuple(out_cpu.shape), torch.bfloat16, gen)
    cpu_dst = [c.clone() for c in caches]
    gpu_dst = _cuda(caches)
    paged_kv_scatter(chunk, cpu_dst, slots, layout)
    paged_kv_scatter(chunk.cuda(), gpu_dst, slots.cuda(), layout)
    for g, c in zip(gpu_dst, cpu_dst, strict=True):
        assert_same_bytes(g, c)


@pytest.mark.cuda
@pytest.mark.parametrize("layout", ["flash_attn", "hnd", "mla"])
def test_cuda_pinned_host_chunk(layout: str) -> None:
    caches = make_caches(
        layout, torch.float16, num_blocks=8, block_size=16, num_heads=2, head_size=64
    )
    slots = [*range(16, 48), -1, 127]
    exp_out = expected_gather(caches, slots, layout)
    out = sentinel_like(tuple(exp_out.shape), torch.float16).pin_memory()
    paged_kv_gather(_cuda(caches), torch.tensor(slots), out, layout)  # CPU slot_mapping too
    assert_same_bytes(out, exp_out)

    chunk = random_bits(
        tuple(exp_out.shape), torch.float16, torch.Generator().manual_seed(4)
    ).pin_memory()
    dst = [sentinel_like(tuple(c.shape), torch.float16) for c in caches]
    exp = expected_scatter(chunk, dst, slots, layout)
    dst_cuda = _cuda(dst)
    paged_kv_scatter(chunk, dst_cuda, torch.tensor(slots, device="cuda"), layout)
    for got, want in zip(dst_cuda, exp, strict=True):
        assert_same_bytes(got, want)


@pytest.mark.cuda
@pytest.mark.parametrize(
    "kind",
    ["head_slice", "every_other_block", "dim_stride", "stacked_layers", "vllm_cpu_block_view"],
)
def test_cuda_non_contiguous_cache(kind: str) -> None:
    bases, cut, layout = _strided_views(kind)
    caches = cut(bases)
    num_slots = describe(caches, layout).num_slots
    slots = [num_slots - 1, 3, 4, 5, -1, 0, 9]
    exp_out = expected_gather(caches, slots, layout)
    gpu_bases = _cuda(bases)
    out = sentinel_like(tuple(exp_out.shape), exp_out.dtype, "cuda")
    paged_kv_gather(cut(gpu_bases), torch.tensor(slots, device="cuda"), out, layout)
    assert_same_bytes(out, exp_out)

    chunk = random_bits(tuple(exp_out.shape), exp_out.dtype, torch.Generator().manual_seed(5))
    exp_bases = [b.clone() for b in bases]
    ref.paged_kv_scatter(chunk, cut(exp_bases), slots, layout)
    paged_kv_scatter(chunk.cuda(), cut(gpu_bases), torch.tensor(slots, device="cuda"), layout)
    for got, want in zip(gpu_bases, exp_bases, strict=True):
        assert_same_bytes(got, want)


@pytest.mark.cuda
def test_cuda_out_of_range_slot_writes_nothing() -> None:
    caches = _cuda(make_caches("flash_attn", torch.bfloat16))
    slots = torch.tensor([0, 1, 19, -1, 20, 3], device="cuda", dtype=torch.int32)
    out = sentinel_like(chunk_shape(caches, "flash_attn", 6), torch.bfloat16, "cuda")
    with pytest.raises(IndexError, match=r"slot_mapping\[4\] = 20\b"):
        paged_kv_gather(caches, slots, out, "flash_attn")
    assert_same_bytes(out, sentinel_like(tuple(out.shape), torch.bfloat16))
    before = [c.clone() for c in caches]
    with pytest.raises(IndexError, match=r"slot_mapping\[4\] = 20\b"):
        paged_kv_scatter(out, caches, slots, "flash_attn")
    for c, b in zip(caches, before, strict=True):
        assert_same_bytes(c, b)


@pytest.mark.cuda
def test_cuda_more_layers_than_one_launch() -> None:
    caches = make_caches(
        "flashinfer", torch.float16, num_layers=300, num_blocks=2, num_heads=1, head_size=8
    )
    slots = [7, 0, -1, 3]
    exp_out = expected_gather(caches, slots, "flashinfer")
    out = sentinel_like(tuple(exp_out.shape), torch.float16, "cuda")
    paged_kv_gather(_cuda(caches), torch.tensor(slots, device="cuda"), out, "flashinfer")
    assert_same_bytes(out, exp_out)


@pytest.mark.cuda
def test_cuda_device_rules() -> None:
    caches = _cuda(make_caches("flash_attn", torch.float16))
    slots = torch.tensor([0, 1], device="cuda")
    shape = chunk_shape(caches, "flash_attn", 2)
    with pytest.raises(ValueError, match="pinned"):
        paged_kv_gather(caches, slots, torch.empty(shape, dtype=torch.float16), "flash_attn")
    with pytest.raises(ValueError, match="slot_mapping must be on the cache's device"):
        paged_kv_gather(
            make_caches("flash_attn", torch.float16),
            slots,
            torch.empty(shape, dtype=torch.float16),
            "flash_attn",
        )
    with pytest.raises(ValueError, match="chunk must be on the CPU"):
        paged_kv_scatter(
            torch.empty(shape, dtype=torch.float16, device="cuda"),
            make_caches("flash_attn", torch.float16),
            slots.cpu(),
            "flash_attn",
        )


@pytest.mark.cuda
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_chunks_match_per_chunk_reference(layout: str) -> None:
    caches = make_caches(layout, torch.bfloat16)
    slots = mixed_slots(20, 4)
    want = expected_gather_chunks(caches, slots, CHUNK_SIZES, layout)
    outs = sentinel_chunks(caches, layout, CHUNK_SIZES, "cuda")
    paged_kv_gather_chunks(_cuda(caches), torch.tensor(slots, device="cuda"), outs, layout)
    for got, exp in zip(outs, want, strict=True):
        assert_same_bytes(got, exp)

    dst = [sentinel_like(tuple(c.shape), torch.bfloat16) for c in caches]
    chunks = random_chunks(caches, layout, CHUNK_SIZES, seed=8)
    exp_caches = expected_scatter_chunks(chunks, dst, slots, layout)
    dst_cuda = _cuda(dst)
    paged_kv_scatter_chunks(
        [c.pin_memory() for c in chunks], dst_cuda, torch.tensor(slots, device="cuda"), layout
    )
    for got, exp in zip(dst_cuda, exp_caches, strict=True):
        assert_same_bytes(got, exp)


@pytest.mark.cuda
def test_cuda_chunks_more_than_one_launch_and_bad_slot() -> None:
    """More chunks than one launch carries (kMaxChunksPerLaunch = 64), empty ones among them;
    then a bad slot in the last chunk writes nothing to any chunk."""
    caches = make_caches(
        "flash_attn", torch.float16, num_layers=2, num_blocks=40, block_size=4, num_heads=2
    )
    gen = torch.Generator().manual_seed(3)
    slots = torch.randperm(160, generator=gen)[:150]
    slots[::11] = -1
    sizes = [2, 0, 1, 3] * 25 + [0] * 5 + [0, 0]  # 102 chunks, 150 tokens
    sizes[-1] = 150 - sum(sizes)
    want = expected_gather_chunks(caches, slots.tolist(), sizes, "flash_attn")
    outs = sentinel_chunks(caches, "flash_attn", sizes, "cuda")
    gpu = _cuda(caches)
    paged_kv_gather_chunks(gpu, slots.cuda(), outs, "flash_attn")
    for got, exp in zip(outs, want, strict=True):
        assert_same_bytes(got, exp)
    cpu_dst = [c.clone() for c in caches]
    paged_kv_scatter_chunks([o.cpu() for o in outs], cpu_dst, slots, "flash_attn")
    paged_kv_scatter_chunks(outs, gpu, slots.cuda(), "flash_attn")
    for g, c in zip(gpu, cpu_dst, strict=True):
        assert_same_bytes(g, c)

    slots[-1] = 160
    outs = sentinel_chunks(caches, "flash_attn", sizes, "cuda")
    with pytest.raises(IndexError, match=r"slot_mapping\[149\] = 160\b"):
        paged_kv_gather_chunks(gpu, slots.cuda(), outs, "flash_attn")
    for out in outs:
        assert_same_bytes(out, sentinel_like(tuple(out.shape), torch.float16))
