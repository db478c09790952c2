"""The single-buffer paged copies on the CPU.

paged_kv_gather / paged_kv_scatter (one chunk buffer, CPU twins) against the naive references,
bit for bit, on every CPU copy path this machine has; their argument checks and handles.

The batched forms are in test_paged_kv_copy_chunks.py, the instruction-set paths of the
transposed scatter in test_paged_kv_copy_isa.py, the CUDA kernels in test_paged_kv_copy_cuda.py.
"""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import (
    DTYPES,
    LAYOUTS,
    SENTINEL,
    STRIDED_KINDS,
    assert_all_same_bytes,
    assert_same_bytes,
    assert_untouched,
    chunk_shape,
    expected_gather,
    expected_scatter,
    fill_sentinel,
    make_caches,
    mixed_slots,
    random_bits,
    sentinel_like,
    strided_views,
)
from lmcache_native import _native
from lmcache_native.ops import (
    CopyHandle,
    describe,
    paged_kv_gather,
    paged_kv_scatter,
    paged_kv_scatter_chunks,
)
from lmcache_native.testing import reference as ref

pytestmark = pytest.mark.usefixtures("each_copy_isa")


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
    assert_all_same_bytes(caches, exp)


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
    assert_all_same_bytes(dst, exp)


# --- named edge cases -----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["flash_attn", "vllm_cpu", "mla"])
def test_zero_tokens(layout: str) -> None:
    caches = make_caches(layout, torch.float16)
    before = [c.clone() for c in caches]
    out = sentinel_like(chunk_shape(caches, layout, 0), torch.float16)
    paged_kv_gather(caches, torch.empty(0, dtype=torch.int64), out, layout)
    paged_kv_scatter(out, caches, torch.empty(0, dtype=torch.int64), layout)
    assert_all_same_bytes(caches, before)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_all_padding_writes_nothing(layout: str) -> None:
    caches = make_caches(layout, torch.float32)
    before = [c.clone() for c in caches]
    slots = torch.full((7,), -1, dtype=torch.int64)
    out = sentinel_like(chunk_shape(caches, layout, 7), torch.float32)
    paged_kv_gather(caches, slots, out, layout)
    assert_untouched([out])
    chunk = random_bits(tuple(out.shape), torch.float32, torch.Generator().manual_seed(2))
    paged_kv_scatter(chunk, caches, slots, layout)
    assert_all_same_bytes(caches, before)


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
    assert_all_same_bytes(caches, exp)


@pytest.mark.parametrize("kind", STRIDED_KINDS)
def test_non_contiguous_cache(kind: str) -> None:
    bases, cut, layout = strided_views(kind)
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
    assert_all_same_bytes(bases, exp_bases)


@pytest.mark.parametrize("bad", [20, 21, -2, 2**40, -(2**40)])
@pytest.mark.parametrize("layout", ["flash_attn", "vllm_cpu", "mla"])
def test_out_of_range_slot_raises_and_writes_nothing(layout: str, bad: int) -> None:
    caches = make_caches(layout, torch.float16)  # 5 blocks of 4: slots 0..19
    slots = torch.tensor([0, 1, 2, 3, 19, -1, bad, 5])
    out = sentinel_like(chunk_shape(caches, layout, len(slots)), torch.float16)
    with pytest.raises(IndexError, match=rf"slot_mapping\[6\] = {bad}\b"):
        paged_kv_gather(caches, slots, out, layout)
    assert_untouched([out])

    before = [c.clone() for c in caches]
    chunk = random_bits(tuple(out.shape), torch.float16, torch.Generator().manual_seed(3))
    with pytest.raises(IndexError, match=r"slot_mapping\[6\]"):
        paged_kv_scatter(chunk, caches, slots, layout)
    assert_all_same_bytes(caches, before)


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
    """Multithreaded large copy.

    Big enough to be split over threads, with whole 16-token blocks (streaming stores, SIMD
    transposes of vllm_cpu's K) and runs cut short by padding (the scalar edges).
    """
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
        assert_all_same_bytes(caches, exp)
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
    assert_all_same_bytes(caches, exp)


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
    with pytest.raises(TypeError, match=r"out must be a torch.Tensor"):
        paged_kv_gather(caches, slots, [0.0], "flash_attn")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="slot_mapping must be int32 or int64"):
        paged_kv_gather(caches, slots.float(), good, "flash_attn")
    with pytest.raises(TypeError, match=r"slot_mapping must be a torch.Tensor"):
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


# --- the completion handle and the binding's entry points ----------------------------------------


def test_non_blocking_cpu_copies_return_a_done_handle() -> None:
    """On the CPU a copy always finishes before it returns, ``blocking=False`` or not."""
    caches = make_caches("flash_attn", torch.float16)
    slots = mixed_slots(5 * 4, 4)
    out = sentinel_like(chunk_shape(caches, "flash_attn", len(slots)), torch.float16)
    handle = paged_kv_gather(caches, torch.tensor(slots), out, "flash_attn", blocking=False)
    assert isinstance(handle, CopyHandle)
    assert handle.done()
    assert handle.event is None
    handle.wait()
    assert_same_bytes(out, expected_gather(caches, slots, "flash_attn"))
    assert paged_kv_scatter(out, caches, torch.tensor(slots), "flash_attn").done()


def test_blocking_must_be_a_bool() -> None:
    caches = make_caches("flash_attn", torch.float16)
    out = sentinel_like(chunk_shape(caches, "flash_attn", 1), torch.float16)
    with pytest.raises(TypeError, match="blocking must be a bool, got int"):
        paged_kv_gather(caches, torch.tensor([0]), out, "flash_attn", blocking=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="blocking must be a bool, got str"):
        paged_kv_scatter_chunks([out], caches, torch.tensor([0]), "flash_attn", blocking="no")  # type: ignore[arg-type]


def test_bad_slot_message_is_the_cpu_twins() -> None:
    """Bad slot message is the cpu twins.

    The non-blocking CUDA path forms its IndexError with the binding's message: a CPU copy's
    text, plus that nothing was written.
    """
    caches = make_caches("flash_attn", torch.float16)
    out = sentinel_like(chunk_shape(caches, "flash_attn", 3), torch.float16)
    with pytest.raises(IndexError) as err:
        paged_kv_gather(caches, torch.tensor([0, 1, 20]), out, "flash_attn")
    message = _native.C.paged_kv_bad_slot_message(2, 20, 20)
    assert message.startswith(str(err.value))
    assert message.endswith("; nothing was written")


@pytest.mark.parametrize("op", ["paged_kv_gather", "paged_kv_scatter"])
def test_cuda_entry_points_check_their_target(op: str) -> None:
    """Cuda entry points check their target.

    The CUDA entry points refuse a bad device or a null slot-check word before any launch,
    and on a build without CUDA kernels say so (RuntimeError) instead of launching.
    """
    caches = make_caches("flash_attn", torch.float16)
    kv = describe(caches, "flash_attn")
    slots = torch.tensor([0, 1], dtype=torch.int64)
    buf = sentinel_like(chunk_shape(caches, "flash_attn", 2), torch.float16)
    single = getattr(_native.C, f"{op}_cuda")
    chunks = getattr(_native.C, f"{op}_chunks_cuda")
    args = (kv.layer_ptrs, kv.layout, int(slots.data_ptr()), 2, 8)
    word = torch.zeros(1, dtype=torch.int64)
    with pytest.raises(ValueError, match=rf"{op}: device must be a CUDA device index >= 0, got -1"):
        single(*args, int(buf.data_ptr()), -1, 0, int(word.data_ptr()), True)
    with pytest.raises(ValueError, match=rf"{op}_chunks: bad_pos .* must not be null"):
        chunks(*args, [int(buf.data_ptr())], [2], 0, 0, 0, False)
    if not _native.HAS_CUDA:
        with pytest.raises(RuntimeError, match="built without CUDA kernels"):
            single(*args, int(buf.data_ptr()), 0, 0, int(word.data_ptr()), False)
    assert_untouched([buf])
