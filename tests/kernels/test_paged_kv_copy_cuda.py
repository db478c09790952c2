"""The CUDA paged copies against the reference and the CPU twins.

Marked ``cuda``: they run where the build has CUDA kernels and torch sees a GPU (e.g.
benchmarks/gpu/run.sh), blocking and non-blocking.
"""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import (
    CHUNK_SIZES,
    DTYPES,
    LAYOUTS,
    STRIDED_KINDS,
    assert_all_same_bytes,
    assert_same_bytes,
    assert_untouched,
    chunk_shape,
    expected_gather,
    expected_gather_chunks,
    expected_scatter,
    expected_scatter_chunks,
    make_caches,
    mixed_slots,
    random_bits,
    random_chunks,
    sentinel_chunks,
    sentinel_copies,
    sentinel_like,
    strided_views,
    to_cuda,
)
from lmcache_native.ops import (
    CopyHandle,
    describe,
    paged_kv_gather,
    paged_kv_gather_chunks,
    paged_kv_scatter,
    paged_kv_scatter_chunks,
)
from lmcache_native.testing import reference as ref

# --- CUDA ----------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_gather_scatter_match_reference(layout: str, dtype: torch.dtype) -> None:
    caches = make_caches(layout, dtype)
    slots = mixed_slots(20, 4)
    exp_out = expected_gather(caches, slots, layout)
    out = sentinel_like(tuple(exp_out.shape), dtype, "cuda")
    paged_kv_gather(to_cuda(caches), torch.tensor(slots, device="cuda"), out, layout)
    assert_same_bytes(out, exp_out)

    dst = [sentinel_like(tuple(c.shape), dtype) for c in caches]
    chunk = random_bits(tuple(exp_out.shape), dtype, torch.Generator().manual_seed(8))
    exp = expected_scatter(chunk, dst, slots, layout)
    dst_cuda = to_cuda(dst)
    paged_kv_scatter(chunk.cuda(), dst_cuda, torch.tensor(slots, device="cuda"), layout)
    assert_all_same_bytes(dst_cuda, exp)


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
    paged_kv_gather(to_cuda(caches), slots.cuda(), out_gpu, layout)
    assert_same_bytes(out_gpu, out_cpu)

    chunk = random_bits(tuple(out_cpu.shape), torch.bfloat16, gen)
    cpu_dst = [c.clone() for c in caches]
    gpu_dst = to_cuda(caches)
    paged_kv_scatter(chunk, cpu_dst, slots, layout)
    paged_kv_scatter(chunk.cuda(), gpu_dst, slots.cuda(), layout)
    assert_all_same_bytes(gpu_dst, cpu_dst)


@pytest.mark.cuda
@pytest.mark.parametrize("layout", ["flash_attn", "hnd", "mla"])
def test_cuda_pinned_host_chunk(layout: str) -> None:
    caches = make_caches(
        layout, torch.float16, num_blocks=8, block_size=16, num_heads=2, head_size=64
    )
    slots = [*range(16, 48), -1, 127]
    exp_out = expected_gather(caches, slots, layout)
    out = sentinel_like(tuple(exp_out.shape), torch.float16).pin_memory()
    paged_kv_gather(to_cuda(caches), torch.tensor(slots), out, layout)  # CPU slot_mapping too
    assert_same_bytes(out, exp_out)

    chunk = random_bits(
        tuple(exp_out.shape), torch.float16, torch.Generator().manual_seed(4)
    ).pin_memory()
    dst = [sentinel_like(tuple(c.shape), torch.float16) for c in caches]
    exp = expected_scatter(chunk, dst, slots, layout)
    dst_cuda = to_cuda(dst)
    paged_kv_scatter(chunk, dst_cuda, torch.tensor(slots, device="cuda"), layout)
    assert_all_same_bytes(dst_cuda, exp)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", STRIDED_KINDS)
def test_cuda_non_contiguous_cache(kind: str) -> None:
    bases, cut, layout = strided_views(kind)
    caches = cut(bases)
    num_slots = describe(caches, layout).num_slots
    slots = [num_slots - 1, 3, 4, 5, -1, 0, 9]
    exp_out = expected_gather(caches, slots, layout)
    gpu_bases = to_cuda(bases)
    out = sentinel_like(tuple(exp_out.shape), exp_out.dtype, "cuda")
    paged_kv_gather(cut(gpu_bases), torch.tensor(slots, device="cuda"), out, layout)
    assert_same_bytes(out, exp_out)

    chunk = random_bits(tuple(exp_out.shape), exp_out.dtype, torch.Generator().manual_seed(5))
    exp_bases = [b.clone() for b in bases]
    ref.paged_kv_scatter(chunk, cut(exp_bases), slots, layout)
    paged_kv_scatter(chunk.cuda(), cut(gpu_bases), torch.tensor(slots, device="cuda"), layout)
    assert_all_same_bytes(gpu_bases, exp_bases)


@pytest.mark.cuda
def test_cuda_out_of_range_slot_writes_nothing() -> None:
    caches = to_cuda(make_caches("flash_attn", torch.bfloat16))
    slots = torch.tensor([0, 1, 19, -1, 20, 3], device="cuda", dtype=torch.int32)
    out = sentinel_like(chunk_shape(caches, "flash_attn", 6), torch.bfloat16, "cuda")
    with pytest.raises(IndexError, match=r"slot_mapping\[4\] = 20\b"):
        paged_kv_gather(caches, slots, out, "flash_attn")
    assert_untouched([out])
    before = [c.clone() for c in caches]
    with pytest.raises(IndexError, match=r"slot_mapping\[4\] = 20\b"):
        paged_kv_scatter(out, caches, slots, "flash_attn")
    assert_all_same_bytes(caches, before)


@pytest.mark.cuda
def test_cuda_more_layers_than_one_launch() -> None:
    caches = make_caches(
        "flashinfer", torch.float16, num_layers=300, num_blocks=2, num_heads=1, head_size=8
    )
    slots = [7, 0, -1, 3]
    exp_out = expected_gather(caches, slots, "flashinfer")
    out = sentinel_like(tuple(exp_out.shape), torch.float16, "cuda")
    paged_kv_gather(to_cuda(caches), torch.tensor(slots, device="cuda"), out, "flashinfer")
    assert_same_bytes(out, exp_out)


@pytest.mark.cuda
def test_cuda_device_rules() -> None:
    caches = to_cuda(make_caches("flash_attn", torch.float16))
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
    paged_kv_gather_chunks(to_cuda(caches), torch.tensor(slots, device="cuda"), outs, layout)
    assert_all_same_bytes(outs, want)

    dst = [sentinel_like(tuple(c.shape), torch.bfloat16) for c in caches]
    chunks = random_chunks(caches, layout, CHUNK_SIZES, seed=8)
    exp_caches = expected_scatter_chunks(chunks, dst, slots, layout)
    dst_cuda = to_cuda(dst)
    paged_kv_scatter_chunks(
        [c.pin_memory() for c in chunks], dst_cuda, torch.tensor(slots, device="cuda"), layout
    )
    assert_all_same_bytes(dst_cuda, exp_caches)


@pytest.mark.cuda
def test_cuda_chunks_more_than_one_launch_and_bad_slot() -> None:
    """Cuda chunks more than one launch and bad slot.

    More chunks than one launch carries (kMaxChunksPerLaunch = 64), empty ones among them;
    then a bad slot in the last chunk writes nothing to any chunk.
    """
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
    gpu = to_cuda(caches)
    paged_kv_gather_chunks(gpu, slots.cuda(), outs, "flash_attn")
    assert_all_same_bytes(outs, want)
    cpu_dst = [c.clone() for c in caches]
    paged_kv_scatter_chunks([o.cpu() for o in outs], cpu_dst, slots, "flash_attn")
    paged_kv_scatter_chunks(outs, gpu, slots.cuda(), "flash_attn")
    assert_all_same_bytes(gpu, cpu_dst)

    slots[-1] = 160
    outs = sentinel_chunks(caches, "flash_attn", sizes, "cuda")
    with pytest.raises(IndexError, match=r"slot_mapping\[149\] = 160\b"):
        paged_kv_gather_chunks(gpu, slots.cuda(), outs, "flash_attn")
    assert_untouched(outs)


# --- non-blocking copies: enqueued on the current stream, waited for through the handle ----------


@pytest.mark.cuda
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_non_blocking_copies_match_reference_after_wait(layout: str) -> None:
    """Cuda non blocking copies match reference after wait.

    Gather and scatter (single and batched) only enqueued; after ``wait()`` the bytes are the
    reference's, and the handle reports done.
    """
    caches = make_caches(layout, torch.bfloat16)
    slots = mixed_slots(20, 4)
    gpu = to_cuda(caches)
    out = sentinel_like(chunk_shape(caches, layout, len(slots)), torch.bfloat16, "cuda")
    handle = paged_kv_gather(gpu, torch.tensor(slots, device="cuda"), out, layout, blocking=False)
    assert isinstance(handle, CopyHandle)
    assert handle.event is not None
    handle.wait()
    assert handle.done()
    assert_same_bytes(out, expected_gather(caches, slots, layout))

    outs = sentinel_chunks(caches, layout, CHUNK_SIZES, "cuda")
    paged_kv_gather_chunks(gpu, torch.tensor(slots), outs, layout, blocking=False).wait()
    assert_all_same_bytes(outs, expected_gather_chunks(caches, slots, CHUNK_SIZES, layout))

    chunk = random_bits(tuple(out.shape), torch.bfloat16, 8)
    dst = to_cuda(sentinel_copies(caches))
    paged_kv_scatter(chunk.pin_memory(), dst, torch.tensor(slots), layout, blocking=False).wait()
    assert_all_same_bytes(dst, expected_scatter(chunk, sentinel_copies(caches), slots, layout))

    chunks = random_chunks(caches, layout, CHUNK_SIZES, seed=9)
    dst = to_cuda(sentinel_copies(caches))
    paged_kv_scatter_chunks(
        to_cuda(chunks), dst, torch.tensor(slots, device="cuda"), layout, blocking=False
    ).wait()
    assert_all_same_bytes(
        dst, expected_scatter_chunks(chunks, sentinel_copies(caches), slots, layout)
    )


@pytest.mark.cuda
def test_cuda_non_blocking_copy_orders_later_work_on_its_stream() -> None:
    """Cuda non blocking copy orders later work on its stream.

    Work enqueued after the copy on the same stream sees its result with no host wait in
    between; another stream orders itself after it through the handle's event.
    """
    caches = make_caches("flash_attn", torch.float16, num_blocks=64, block_size=16, num_heads=8)
    slots = torch.randperm(64 * 16, generator=torch.Generator().manual_seed(2))[:700]
    want = expected_gather(caches, slots.tolist(), "flash_attn")
    gpu = to_cuda(caches)
    out = sentinel_like(tuple(want.shape), torch.float16, "cuda")
    handle = paged_kv_gather(gpu, slots.cuda(), out, "flash_attn", blocking=False)
    snapshot = out.clone()  # same stream: runs after the copy
    handle.wait()
    assert_same_bytes(snapshot, want)

    side = torch.cuda.Stream()
    out2 = sentinel_like(tuple(want.shape), torch.float16, "cuda")
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        handle = paged_kv_gather(gpu, slots.cuda(), out2, "flash_attn", blocking=False)
    assert handle.event is not None
    torch.cuda.current_stream().wait_event(handle.event)
    snapshot = out2.clone()  # the default stream, after the side stream's copy
    handle.wait()
    assert_same_bytes(snapshot, want)


@pytest.mark.cuda
def test_cuda_non_blocking_bad_slot_raises_from_wait_and_writes_nothing() -> None:
    """Cuda non blocking bad slot raises from wait and writes nothing.

    The call itself does not raise: the slot check's result stays on the device until
    ``wait()``, which raises the blocking call's IndexError (every time it is called).
    """
    caches = to_cuda(make_caches("flash_attn", torch.bfloat16))
    slots = torch.tensor([0, 1, 19, -1, 20, 3], device="cuda", dtype=torch.int32)
    out = sentinel_like(chunk_shape(caches, "flash_attn", 6), torch.bfloat16, "cuda")
    handle = paged_kv_gather(caches, slots, out, "flash_attn", blocking=False)
    for _ in range(2):
        with pytest.raises(IndexError, match=r"slot_mapping\[4\] = 20 is out of range"):
            handle.wait()
    assert_untouched([out])
    before = [c.clone() for c in caches]
    chunks = sentinel_chunks(caches, "flash_attn", [2, 4], "cuda")
    handle = paged_kv_scatter_chunks(chunks, caches, slots, "flash_attn", blocking=False)
    with pytest.raises(IndexError, match=r"slot_mapping\[4\] = 20\b.*nothing was written"):
        handle.wait()
    assert_all_same_bytes(caches, before)


@pytest.mark.cuda
def test_cuda_non_blocking_zero_tokens_and_pinned_host_chunk() -> None:
    """Cuda non blocking zero tokens and pinned host chunk.

    A copy of nothing launches nothing and its handle waits cleanly; a gather into pinned
    host memory is readable after ``wait()``.
    """
    caches = make_caches("hnd", torch.float16, num_blocks=8, block_size=16, head_size=64)
    gpu = to_cuda(caches)
    empty = torch.empty(0, dtype=torch.int64, device="cuda")
    paged_kv_gather(
        gpu, empty, sentinel_chunks(caches, "hnd", [0], "cuda")[0], "hnd", blocking=False
    ).wait()
    slots = [*range(16, 48), -1, 127]
    out = sentinel_like(chunk_shape(caches, "hnd", len(slots)), torch.float16).pin_memory()
    paged_kv_gather(gpu, torch.tensor(slots), out, "hnd", blocking=False).wait()
    assert_same_bytes(out, expected_gather(caches, slots, "hnd"))
