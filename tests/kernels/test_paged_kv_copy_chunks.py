"""The batched paged copies on the CPU.

paged_kv_gather_chunks / paged_kv_scatter_chunks (many chunk buffers in one call, CPU twins)
against the reference looped per chunk, bit for bit, on every CPU copy path this machine has.
"""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import (
    CHUNK_SIZES,
    DTYPES,
    LAYOUTS,
    as_bytes,
    assert_all_same_bytes,
    assert_same_bytes,
    assert_untouched,
    chunk_shape,
    expected_gather,
    expected_gather_chunks,
    expected_scatter,
    expected_scatter_chunks,
    fill_sentinel,
    make_caches,
    mixed_slots,
    random_bits,
    random_chunks,
    sentinel_chunks,
    sentinel_like,
    split_tokens,
)
from lmcache_native import _native
from lmcache_native.ops import (
    describe,
    paged_kv_gather,
    paged_kv_gather_chunks,
    paged_kv_scatter,
    paged_kv_scatter_chunks,
)
from lmcache_native.testing import reference as ref

pytestmark = pytest.mark.usefixtures("each_copy_isa")


# --- batched ops: many chunk buffers in one call -------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gather_chunks_matches_per_chunk_reference(layout: str, dtype: torch.dtype) -> None:
    caches = make_caches(layout, dtype)
    slots = mixed_slots(5 * 4, 4)
    assert sum(CHUNK_SIZES) == len(slots)
    assert slots[4] == -1
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
    assert_all_same_bytes(caches, exp)


@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("layout", ["flash_attn", "vllm_cpu", "hnd", "mla"])
def test_chunks_round_trip_equals_single_call(layout: str, slot_dtype: torch.dtype) -> None:
    """Chunks round trip equals single call.

    Whole blocks in random order (the engine's case) with padding runs; the batched gather
    equals one single-buffer gather cut into chunks, and scattering the chunks back into a
    sentinel cache restores exactly the gathered rows.
    """
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
    assert_all_same_bytes(dst, exp)


@pytest.mark.parametrize("bad_at", [0, 6, 13])
@pytest.mark.parametrize("layout", ["flash_attn", "vllm_cpu", "mla"])
def test_chunks_out_of_range_slot_writes_nothing_anywhere(layout: str, bad_at: int) -> None:
    """Chunks out of range slot writes nothing anywhere.

    A bad slot in the first, a middle or the last chunk: IndexError naming its position in
    the whole slot_mapping, and no chunk (gather) or cache (scatter) is touched.
    """
    caches = make_caches(layout, torch.float16)
    slots = mixed_slots(5 * 4, 4)
    slots[bad_at] = 20
    outs = sentinel_chunks(caches, layout, CHUNK_SIZES)
    with pytest.raises(IndexError, match=rf"slot_mapping\[{bad_at}\] = 20\b"):
        paged_kv_gather_chunks(caches, torch.tensor(slots), outs, layout)
    assert_untouched(outs)

    before = [c.clone() for c in caches]
    chunks = random_chunks(caches, layout, CHUNK_SIZES, seed=3)
    with pytest.raises(IndexError, match=rf"slot_mapping\[{bad_at}\] = 20\b"):
        paged_kv_scatter_chunks(chunks, caches, torch.tensor(slots), layout)
    assert_all_same_bytes(caches, before)


@pytest.mark.parametrize("sizes", [[4, 4], [4, 4, 4, 4, 4], [], [13, 0, 2]])
def test_chunks_token_count_mismatch_raises_value_error(sizes: list[int]) -> None:
    caches = make_caches("flash_attn", torch.float32)
    slots = torch.tensor(mixed_slots(5 * 4, 4))  # 14 tokens
    outs = sentinel_chunks(caches, "flash_attn", sizes)
    with pytest.raises(ValueError, match=rf"hold {sum(sizes)} tokens in all.*slot_mapping has 14"):
        paged_kv_gather_chunks(caches, slots, outs, "flash_attn")
    assert_untouched(outs)
    before = [c.clone() for c in caches]
    with pytest.raises(ValueError, match=r"slot_mapping has 14"):
        paged_kv_scatter_chunks(outs, caches, slots, "flash_attn")
    assert_all_same_bytes(caches, before)


def test_chunks_native_count_check() -> None:
    """The binding checks the counts too (a caller that bypasses the Python wrapper)."""
    caches = make_caches("flash_attn", torch.float32)
    kv = describe(caches, "flash_attn")
    slots = torch.tensor([0, 1, 2], dtype=torch.int64)
    out = sentinel_like(chunk_shape(caches, "flash_attn", 2), torch.float32)
    args = (kv.layer_ptrs, kv.layout, int(slots.data_ptr()), 3, 8)
    with pytest.raises(ValueError, match=r"outs hold 2 tokens in all, but slot_mapping has 3"):
        _native.C.paged_kv_gather_chunks_cpu(*args, [int(out.data_ptr())], [2])
    with pytest.raises(ValueError, match=r"chunks\[0\] has -1 tokens"):
        _native.C.paged_kv_scatter_chunks_cpu(*args, [int(out.data_ptr())] * 2, [-1, 4])
    assert_untouched([out])


def test_chunks_all_padding_and_zero_tokens() -> None:
    caches = make_caches("vllm_cpu", torch.bfloat16)
    before = [c.clone() for c in caches]
    outs = sentinel_chunks(caches, "vllm_cpu", [3, 4])
    paged_kv_gather_chunks(caches, torch.full((7,), -1), outs, "vllm_cpu")
    assert_untouched(outs)
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
    assert_all_same_bytes(caches, before)


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
    """Chunks multithreaded realistic.

    Realistic head geometry (8 heads x 128), whole 16-token blocks in random order, several
    chunks with a short tail and padding runs, split over threads: every dtype width through the
    streaming-store and SIMD-transpose paths, bit for bit against the per-chunk reference.
    """
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
        assert_all_same_bytes(outs, want)
        chunks = random_chunks(caches, layout, sizes, seed=23)
        exp_caches = expected_scatter_chunks(chunks, caches, slots.tolist(), layout)
        paged_kv_scatter_chunks(chunks, caches, slots, layout)
        assert_all_same_bytes(caches, exp_caches)
    finally:
        _native.set_num_threads(prev)


@pytest.mark.parametrize(
    "dtype", [torch.float8_e4m3fn, torch.bfloat16, torch.float32, torch.float64], ids=str
)
def test_vllm_cpu_block_size_32_last_token_of_each_block(dtype: torch.dtype) -> None:
    """Vllm cpu block size 32 last token of each block.

    Regression: vllm_cpu with block_size 32 (K stored transposed [head_size, 32]), 16 blocks,
    several hundred tokens, two threads. A build of an intermediate kernel state once returned
    wrong K values for the last token of each block; check those rows explicitly, then every
    byte, for the single-buffer ops and the batched ones, every dtype width.
    """
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
