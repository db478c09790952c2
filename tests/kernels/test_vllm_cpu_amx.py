"""The ``vllm_cpu_amx`` layout (vLLM's AMX-packed CPU cache) against the pure-Python reference.

``testing/reference.py`` spells vLLM's packing out per token and dim (``amx_index``); the
native CPU twins read it through ``PagedKVLayout``'s two-level strides. Every destination is
pre-filled with a sentinel and compared in full as raw bytes, on both CPU copy paths (``sse2``,
``avx2``) and every MD5 instruction set this CPU has. This runs on any CPU: the packing is plain
index math, no AMX instruction is involved (the comparison with vLLM's own writer is in
``tests/integration/test_vllm_cpu_layout.py``).
"""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import (
    assert_all_same_bytes,
    assert_same_bytes,
    assert_untouched,
    random_bits,
    sentinel_like,
)
from lmcache_native import _native
from lmcache_native.ops import (
    LAYOUTS,
    describe,
    kv_cache_shape,
    kv_chunk_md5,
    paged_kv_gather,
    paged_kv_gather_chunks,
    paged_kv_scatter,
    paged_kv_scatter_chunks,
)
from lmcache_native.ops.kv_chunk_md5 import md5_isa, md5_set_isa, md5_supported_isas
from lmcache_native.testing import reference as ref

AMX = "vllm_cpu_amx"
NUM_BLOCKS, HEADS, HEAD = 4, 2, 32
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
BLOCKS = [32, 64]


pytestmark = pytest.mark.usefixtures("each_copy_isa")


def caches(dtype: torch.dtype, block: int, layers: int = 2, seed: int = 0) -> list[torch.Tensor]:
    shape = kv_cache_shape(AMX, NUM_BLOCKS, block, HEADS, HEAD)
    return [random_bits(shape, dtype, seed + i) for i in range(layers)]


def mixed_slots(block: int) -> list[int]:
    """Mixed slots.

    A whole block in order, a run across a 16-token group edge, lone slots, padding, the
    last slot of the last block and slot 0.
    """
    last = NUM_BLOCKS * block - 1
    return [
        *range(block, 2 * block),  # block 1, in order
        -1,
        *range(2 * block + 13, 2 * block + 21),  # crosses the K token group at offset 16
        -1,
        3 * block + 5,  # lone
        last,
        7,
        0,
        2 * block + 31,
        2 * block + 30,  # descending pair
    ]


def chunk_shape(cs: list[torch.Tensor], n: int) -> tuple[int, ...]:
    return describe(cs, AMX).chunk_shape(n)


def expected_gather(cs: list[torch.Tensor], slots: list[int]) -> torch.Tensor:
    out = sentinel_like(chunk_shape(cs, len(slots)), cs[0].dtype)
    ref.paged_kv_gather(cs, slots, out, AMX)
    return out


def test_layout_is_listed() -> None:
    assert AMX in LAYOUTS
    assert kv_cache_shape(AMX, 3, 32, 2, 64) == (3, 2, 32, 128)


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gather_matches_reference(dtype: torch.dtype, block: int) -> None:
    cs = caches(dtype, block)
    slots = mixed_slots(block)
    out = sentinel_like(chunk_shape(cs, len(slots)), dtype)
    paged_kv_gather(cs, torch.tensor(slots), out, AMX)
    assert_same_bytes(out, expected_gather(cs, slots))


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_scatter_matches_reference(dtype: torch.dtype, block: int) -> None:
    cs = [sentinel_like(tuple(c.shape), dtype) for c in caches(dtype, block)]
    slots = mixed_slots(block)
    chunk = random_bits(chunk_shape(cs, len(slots)), dtype, 9)
    exp = [c.clone() for c in cs]
    ref.paged_kv_scatter(chunk, exp, slots, AMX)
    paged_kv_scatter(chunk, cs, torch.tensor(slots, dtype=torch.int32), AMX)
    assert_all_same_bytes(cs, exp)


@pytest.mark.parametrize("block", BLOCKS)
def test_whole_cache_round_trips(block: int) -> None:
    """Every slot of every block, in order: each 16-token K group and V word is written whole."""
    src = caches(torch.bfloat16, block, seed=5)
    slots = torch.arange(NUM_BLOCKS * block)
    chunk = sentinel_like(chunk_shape(src, slots.numel()), torch.bfloat16)
    paged_kv_gather(src, slots, chunk, AMX)
    assert_same_bytes(chunk, expected_gather(src, slots.tolist()))
    dst = [sentinel_like(tuple(c.shape), torch.bfloat16) for c in src]
    paged_kv_scatter(chunk, dst, slots, AMX)
    assert_all_same_bytes(dst, src)


# Uneven chunks over mixed_slots(block)'s tokens: empty, all padding, lone and tail chunks.
def chunk_sizes(n: int, block: int) -> list[int]:
    sizes = [block, 0, 1, 5, 4, 1]
    return [*sizes, n - sum(sizes)]


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gather_chunks_matches_per_chunk_reference(dtype: torch.dtype, block: int) -> None:
    cs = caches(dtype, block, seed=2)
    slots = mixed_slots(block)
    sizes = chunk_sizes(len(slots), block)
    assert slots[block] == -1
    assert sizes[2] == 1
    outs = [sentinel_like(chunk_shape(cs, n), dtype) for n in sizes]
    paged_kv_gather_chunks(cs, torch.tensor(slots), outs, AMX)
    begin = 0
    for out, n in zip(outs, sizes, strict=True):
        assert_same_bytes(out, expected_gather(cs, slots[begin : begin + n]))
        begin += n


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_scatter_chunks_matches_per_chunk_reference(dtype: torch.dtype, block: int) -> None:
    cs = [sentinel_like(tuple(c.shape), dtype) for c in caches(dtype, block)]
    slots = mixed_slots(block)
    sizes = chunk_sizes(len(slots), block)
    chunks = [random_bits(chunk_shape(cs, n), dtype, 20 + i) for i, n in enumerate(sizes)]
    exp = [c.clone() for c in cs]
    begin = 0
    for chunk, n in zip(chunks, sizes, strict=True):
        ref.paged_kv_scatter(chunk, exp, slots[begin : begin + n], AMX)
        begin += n
    paged_kv_scatter_chunks(chunks, cs, torch.tensor(slots), AMX)
    assert_all_same_bytes(cs, exp)


@pytest.mark.parametrize("md5", md5_supported_isas())
@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kv_chunk_md5_matches_hashlib(dtype: torch.dtype, block: int, md5: str) -> None:
    cs = caches(dtype, block, layers=3, seed=4)
    slots = mixed_slots(block)
    before = md5_isa()
    md5_set_isa(md5)
    try:
        for chunk_size in (16, 7, len(slots)):
            assert kv_chunk_md5(cs, slots, chunk_size, AMX) == ref.kv_chunk_md5(
                cs, slots, chunk_size, AMX
            )
    finally:
        md5_set_isa(before)


@pytest.mark.parametrize("block", BLOCKS)
def test_chunk_from_amx_loads_into_vec_cache_and_back(block: int) -> None:
    """The chunk buffer is token rows: AMX -> chunk -> vllm_cpu (vec) -> chunk -> AMX."""
    amx = caches(torch.bfloat16, block, seed=8)
    slots = [s for s in mixed_slots(block) if s != -1]
    t = torch.tensor(slots)
    chunk = sentinel_like(chunk_shape(amx, len(slots)), torch.bfloat16)
    paged_kv_gather(amx, t, chunk, AMX)

    vec_shape = kv_cache_shape("vllm_cpu", NUM_BLOCKS, block, HEADS, HEAD)
    vec = [sentinel_like(vec_shape, torch.bfloat16) for _ in amx]
    paged_kv_scatter(chunk, vec, t, "vllm_cpu")
    again = sentinel_like(tuple(chunk.shape), torch.bfloat16)
    paged_kv_gather(vec, t, again, "vllm_cpu")
    assert_same_bytes(again, chunk)
    assert kv_chunk_md5(vec, slots, 16, "vllm_cpu") == kv_chunk_md5(amx, slots, 16, AMX)

    back = [sentinel_like(tuple(c.shape), torch.bfloat16) for c in amx]
    paged_kv_scatter(again, back, t, AMX)
    for b, a in zip(back, amx, strict=True):
        for slot in slots:
            for kv in (0, 1):
                assert_same_bytes(ref.kv_row(b, AMX, kv, slot), ref.kv_row(a, AMX, kv, slot))


@pytest.mark.parametrize("block", BLOCKS)
def test_last_slot_of_last_block_alone(block: int) -> None:
    cs = caches(torch.float16, block, seed=6)
    last = NUM_BLOCKS * block - 1
    out = sentinel_like(chunk_shape(cs, 2), torch.float16)
    paged_kv_gather(cs, torch.tensor([-1, last]), out, AMX)
    assert_same_bytes(out, expected_gather(cs, [-1, last]))
    dst = [sentinel_like(tuple(c.shape), torch.float16) for c in cs]
    paged_kv_scatter(out, dst, torch.tensor([-1, last]), AMX)
    exp = [sentinel_like(tuple(c.shape), torch.float16) for c in cs]
    ref.paged_kv_scatter(out, exp, [-1, last], AMX)
    assert_all_same_bytes(dst, exp)


@pytest.mark.parametrize("bad", [-2, NUM_BLOCKS * 32])
def test_bad_slot_raises_index_error_and_writes_nothing(bad: int) -> None:
    cs = caches(torch.bfloat16, 32, seed=3)
    before = [c.clone() for c in cs]
    slots = torch.tensor([0, 1, 40, bad, 5])
    out = sentinel_like(chunk_shape(cs, 5), torch.bfloat16)
    with pytest.raises(IndexError, match=rf"slot_mapping\[3\] = {bad}"):
        paged_kv_gather(cs, slots, out, AMX)
    assert_untouched([out])
    chunk = random_bits(tuple(out.shape), torch.bfloat16, 1)
    with pytest.raises(IndexError, match=rf"slot_mapping\[3\] = {bad}"):
        paged_kv_scatter(chunk, cs, slots, AMX)
    with pytest.raises(IndexError, match=rf"slot_mapping\[3\] = {bad}"):
        paged_kv_scatter_chunks(
            [chunk[:, :, :2].contiguous(), chunk[:, :, 2:].contiguous()], cs, slots, AMX
        )
    assert_all_same_bytes(cs, before)
    with pytest.raises(IndexError, match=rf"slot_mapping\[3\] = {bad}"):
        kv_chunk_md5(cs, slots, 4, AMX)


@pytest.mark.parametrize(
    ("dtype", "block", "head", "match"),
    [
        (torch.float8_e4m3fn, 32, 32, "2- or 4-byte elements"),
        (torch.float64, 32, 32, "2- or 4-byte elements"),
        (torch.bfloat16, 8, 32, "multiples of 16"),
        (torch.bfloat16, 32, 8, "multiples of 16"),
    ],
)
def test_describe_refuses_what_the_packing_does_not_define(
    dtype: torch.dtype, block: int, head: int, match: str
) -> None:
    shape = kv_cache_shape(AMX, 2, block, HEADS, head)
    with pytest.raises(ValueError, match=match):
        describe([torch.zeros(shape, dtype=dtype)], AMX)


def test_describe_refuses_a_non_cpu_cache() -> None:
    shape = kv_cache_shape(AMX, 2, 32, HEADS, HEAD)
    with pytest.raises(ValueError, match="CPU cache layout"):
        describe([torch.empty(shape, dtype=torch.bfloat16, device="meta")], AMX)


def test_bindings_refuse_the_packed_layout_on_a_device() -> None:
    """A caller that bypasses the Python wrapper: the binding refuses it before any launch."""
    cs = caches(torch.bfloat16, 32)
    kv = describe(cs, AMX)
    slots = torch.tensor([0, 1], dtype=torch.int64)
    out = sentinel_like(chunk_shape(cs, 2), torch.bfloat16)
    args = (kv.layer_ptrs, kv.layout, int(slots.data_ptr()), 2, 8, int(out.data_ptr()))
    cuda = (0, 0, 0, True)  # device, stream, bad_pos, blocking: refused before they are read
    with pytest.raises(ValueError, match=r"packed .* CPU caches"):
        _native.C.paged_kv_gather_cuda(*args, *cuda)
    with pytest.raises(ValueError, match=r"packed .* CPU caches"):
        _native.C.paged_kv_scatter_cuda(*args, *cuda)
    with pytest.raises(ValueError, match=r"packed .* CPU caches"):
        _native.C.kv_chunk_md5_cuda(
            kv.layer_ptrs, 0, kv.layout, int(slots.data_ptr()), 2, 2, 0, 0, 0, 0
        )
    assert_untouched([out])


@pytest.mark.cuda
def test_cuda_cache_is_refused_with_value_error() -> None:
    shape = kv_cache_shape(AMX, 2, 32, HEADS, HEAD)
    cache = torch.zeros(shape, dtype=torch.bfloat16, device="cuda")
    out = torch.empty((2, 1, 1, HEADS * HEAD), dtype=torch.bfloat16, device="cuda")
    with pytest.raises(ValueError, match="CPU cache layout"):
        paged_kv_gather([cache], torch.tensor([0], device="cuda"), out, AMX)
    with pytest.raises(ValueError, match="CPU cache layout"):
        kv_chunk_md5([cache], [0], 16, AMX)
