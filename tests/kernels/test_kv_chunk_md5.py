"""kv_chunk_md5 and the multi-buffer MD5 engine against hashlib and testing/reference.py.

Every instruction set this CPU supports (scalar, AVX2, AVX-512) is forced in turn; digests
must be identical to hashlib's bit for bit.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from kernel_testlib import make_caches
from lmcache_native import _native, ops
from lmcache_native.ops.kv_chunk_md5 import (
    md5_bytes,
    md5_isa,
    md5_set_isa,
    md5_supported_isas,
)
from lmcache_native.testing import reference as ref

ISAS = md5_supported_isas()
LAYOUTS = ["flash_attn", "flashinfer", "hnd", "mla", "vllm_cpu"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.uint8]
if hasattr(torch, "float8_e4m3fn"):
    DTYPES.append(torch.float8_e4m3fn)
MD5_LENGTHS = [0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 4103]


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Forces one instruction set for the test, restoring the previous one afterwards."""
    before = md5_isa()
    md5_set_isa(request.param)
    yield request.param
    md5_set_isa(before)


def _caches(
    layout: str,
    dtype: torch.dtype,
    layers: int,
    blocks: int,
    block_size: int,
    heads: int,
    head_size: int,
    seed: int = 0,
) -> list[torch.Tensor]:
    """Random caches: ``kernel_testlib.make_caches`` with every size given, in order."""
    return make_caches(
        layout,
        dtype,
        num_layers=layers,
        num_blocks=blocks,
        block_size=block_size,
        num_heads=heads,
        head_size=head_size,
        seed=seed,
    )


def _check_all_isas(
    kv: list[torch.Tensor], slots: list[int], chunk_size: int, layout: str
) -> tuple[list[list[str]], list[str]]:
    """Asserts every instruction set matches the reference; returns the reference result."""
    expected = ref.kv_chunk_md5(kv, slots, chunk_size, layout)
    before = md5_isa()
    try:
        for name in ISAS:
            md5_set_isa(name)
            got = ops.kv_chunk_md5(kv, torch.tensor(slots, dtype=torch.int64), chunk_size, layout)
            assert got == expected, f"isa={name}"
    finally:
        md5_set_isa(before)
    return expected


# ---- the raw MD5 engine --------------------------------------------------------------------


def test_this_machine_runs_simd_paths() -> None:
    # The project's reference machine has AVX-512; say so loudly if the paths are not exercised.
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        flags = f.read()
    if " avx512f" in flags:
        assert "avx512" in ISAS
    if " avx2" in flags:
        assert "avx2" in ISAS
    assert ISAS[0] == "scalar"
    assert md5_isa() in ISAS


@pytest.mark.parametrize("length", MD5_LENGTHS)
@pytest.mark.parametrize("count", [1, 3, 8, 9, 16, 17, 33, 50])
@pytest.mark.usefixtures("isa")
def test_md5_bytes_matches_hashlib(length: int, count: int) -> None:
    gen = torch.Generator().manual_seed(length * 100 + count)
    msgs = [
        torch.randint(0, 256, (length,), dtype=torch.uint8, generator=gen).numpy().tobytes()
        for _ in range(count)
    ]
    assert md5_bytes(*msgs) == [hashlib.md5(m).hexdigest() for m in msgs]


@pytest.mark.usefixtures("isa")
def test_md5_bytes_mixed_lengths_keep_order() -> None:
    gen = torch.Generator().manual_seed(7)
    lengths = [MD5_LENGTHS[i % len(MD5_LENGTHS)] for i in range(61)]
    msgs = [
        torch.randint(0, 256, (n,), dtype=torch.uint8, generator=gen).numpy().tobytes()
        for n in lengths
    ]
    assert md5_bytes(*msgs) == [hashlib.md5(m).hexdigest() for m in msgs]


def test_md5_single_buffer_entry() -> None:
    data = bytes(range(256)) * 5
    assert _native.C.md5(data) == hashlib.md5(data).hexdigest()
    assert _native.C.md5(b"") == hashlib.md5(b"").hexdigest()
    assert _native.C.md5(memoryview(data)[3:200]) == hashlib.md5(data[3:200]).hexdigest()


def test_md5_set_isa_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="isa must be"):
        md5_set_isa("sse9")


def test_md5_isa_env_var_selects_scalar() -> None:
    code = "from lmcache_native.ops.kv_chunk_md5 import md5_isa; print(md5_isa())"
    env = dict(os.environ, LMC_MD5_ISA="scalar")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "scalar"


# ---- kv_chunk_md5 against the reference -----------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_and_dtype(layout: str, dtype: torch.dtype) -> None:
    # 18 layers: a full 16-lane group plus a 2-lane leftover per chunk length.
    kv = _caches(layout, dtype, 18, 5, 4, 2, 8)
    gen = torch.Generator().manual_seed(1)
    slots = torch.randperm(20, generator=gen)[:14].tolist()
    slots[2] = -1  # padding inside a chunk
    # chunks of 4: [.., -1, ..], full chunks, short tail of 2
    per_layer, combined = _check_all_isas(kv, slots, 4, layout)
    assert len(per_layer) == 18
    assert all(len(p) == 4 for p in per_layer)
    assert len(combined) == 4


@pytest.mark.parametrize("length", [1, 55, 56, 63, 64, 65, 119, 120, 128, 200])
def test_message_lengths_through_the_cache(length: int) -> None:
    # MLA with uint8 elements and one slot per chunk: each message is exactly head_size bytes.
    kv = _caches("mla", torch.uint8, 17, 3, 4, 1, length)
    slots = [11, 0, 5, 5, 3]
    per_layer, _ = _check_all_isas(kv, slots, 1, "mla")
    row = kv[4][11 // 4, 11 % 4].numpy().tobytes()
    assert len(row) == length
    assert per_layer[4][0] == hashlib.md5(row).hexdigest()


@pytest.mark.parametrize("head_size", [8, 24, 32, 40])
def test_heads_across_block_boundaries(head_size: int) -> None:
    # HND keeps each head separate: 64-byte blocks straddle head segments unless 64 | head bytes.
    kv = _caches("hnd", torch.float16, 9, 4, 4, 3, head_size)
    _check_all_isas(kv, [15, 14, 0, 1, 2, 9, 8], 3, "hnd")


def test_short_tail_padding_and_all_padding_chunks() -> None:
    kv = _caches("flash_attn", torch.bfloat16, 10, 4, 4, 2, 16)
    slots = [0, 1, 2, 3, -1, -1, -1, -1, 15, -1, 7]
    per_layer, combined = _check_all_isas(kv, slots, 4, "flash_attn")
    empty = hashlib.md5(b"").hexdigest()
    assert all(per_layer[layer][1] == empty for layer in range(10))
    assert combined[1] == hashlib.md5((empty * 10).encode()).hexdigest()


def test_last_slot_of_last_block() -> None:
    kv = _caches("flashinfer", torch.float32, 3, 4, 8, 2, 16)
    _check_all_isas(kv, [31, 30, 0], 2, "flashinfer")


def test_non_contiguous_view() -> None:
    # Dims sliced out of a larger cache: head_stride != head_size, rows are not contiguous.
    full = _caches("flash_attn", torch.float16, 17, 4, 4, 3, 40)
    kv = [t[..., 4:36] for t in full]
    assert not kv[0].is_contiguous()
    _check_all_isas(kv, [3, 9, 10, 11, 0, 14, 2], 4, "flash_attn")


@pytest.mark.parametrize(
    ("dtype", "block_size", "head_size"),
    [
        (torch.float16, 16, 16),  # 16x16 SIMD transposes of 16-bit elements
        (torch.bfloat16, 32, 32),
        (torch.float32, 16, 8),  # 8x8 SIMD transposes of 32-bit elements
        (torch.uint8, 16, 16),  # scalar transposes
        (torch.bfloat16, 16, 8),  # head_size not a multiple of 16: scalar transposes
        (torch.float16, 4, 16),  # block_size not a multiple of 16: scalar transposes
    ],
    ids=str,
)
@pytest.mark.parametrize("layout", ["vllm_cpu", "hnd"])
def test_block_tiles(layout: str, dtype: torch.dtype, block_size: int, head_size: int) -> None:
    # vllm_cpu's K: consecutive slots of one 16-token span go through a transposed tile of the
    # span; lone slots are gathered element by element. Mix both, revisit blocks, and pad (HND:
    # the same slots through per-head segments).
    kv = _caches(layout, dtype, 18, 4, block_size, 2, head_size, block_size)
    b = block_size
    slots = [
        *range(2 * b, 3 * b),  # block 2 in order
        *(b - 1, b - 2, -1, 1),  # block 0, reversed, with padding
        3 * b + 5 % b,  # a lone slot of block 3
        *(2 * b + 3, 2 * b + 4, 2 * b + 3),  # block 2 again, duplicates
        *(b + 7, -1, b + 8),  # block 1 around padding
        *(b + 14, b + 15, b + 16),  # across 16-token spans of a 32-token block
    ]
    _check_all_isas(kv, [s % (4 * b) if s >= 0 else s for s in slots], 7, layout)


def test_chunk_size_larger_than_slots() -> None:
    kv = _caches("vllm_cpu", torch.float16, 4, 3, 4, 2, 8)
    _per_layer, combined = _check_all_isas(kv, [5, 6, 7], 1000, "vllm_cpu")
    assert len(combined) == 1


def test_combined_is_md5_of_layer_hex_digests() -> None:
    kv = _caches("flash_attn", torch.float16, 5, 2, 4, 1, 16)
    per_layer, combined = ops.kv_chunk_md5(kv, [0, 1, 2, 3, 4], 2, "flash_attn")
    for c in range(3):
        joined = "".join(per_layer[layer][c] for layer in range(5))
        assert combined[c] == hashlib.md5(joined.encode()).hexdigest()


def test_thread_counts_agree() -> None:
    kv = _caches("flash_attn", torch.bfloat16, 20, 8, 4, 2, 32)
    slots = list(range(32))
    before = _native.num_threads()
    try:
        _native.set_num_threads(1)
        one = ops.kv_chunk_md5(kv, slots, 4, "flash_attn")
        _native.set_num_threads(2)
        two = ops.kv_chunk_md5(kv, slots, 4, "flash_attn")
    finally:
        _native.set_num_threads(before)
    assert one == two


# ---- edge cases and errors ------------------------------------------------------------------


def test_zero_slots() -> None:
    kv = _caches("flash_attn", torch.float16, 3, 2, 4, 1, 8)
    assert ops.kv_chunk_md5(kv, torch.empty(0, dtype=torch.int64), 4, "flash_attn") == (
        [[], [], []],
        [],
    )
    assert ref.kv_chunk_md5(kv, [], 4, "flash_attn") == ([[], [], []], [])


@pytest.mark.parametrize("bad", [8, 1000, -2])
def test_out_of_range_slot_raises_index_error(bad: int) -> None:
    kv = _caches("flash_attn", torch.float16, 2, 2, 4, 1, 8)
    with pytest.raises(IndexError, match=rf"slot_mapping\[2\] = {bad} "):
        ops.kv_chunk_md5(kv, [0, 1, bad, 3], 2, "flash_attn")


@pytest.mark.parametrize("chunk_size", [0, -4])
def test_chunk_size_must_be_positive(chunk_size: int) -> None:
    kv = _caches("mla", torch.float16, 1, 2, 4, 1, 8)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        ops.kv_chunk_md5(kv, [0, 1], chunk_size, "mla")


def test_argument_types() -> None:
    kv = _caches("mla", torch.float16, 1, 2, 4, 1, 8)
    with pytest.raises(TypeError, match="chunk_size"):
        ops.kv_chunk_md5(kv, [0, 1], 2.0, "mla")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="slot_mapping"):
        ops.kv_chunk_md5(kv, torch.tensor([0.0, 1.0]), 2, "mla")
    with pytest.raises(ValueError, match="slot_mapping must be 1-D"):
        ops.kv_chunk_md5(kv, torch.zeros(2, 2, dtype=torch.int64), 2, "mla")
    with pytest.raises(ValueError, match="layout"):
        ops.kv_chunk_md5(kv, [0, 1], 2, "paged")
    with pytest.raises(ValueError, match="slot_mapping must be ints that fit in int64"):
        ops.kv_chunk_md5(kv, [0, 2**64], 2, "mla")


def test_uint64_slots_are_checked_not_wrapped_into_padding() -> None:
    kv = _caches("mla", torch.float16, 1, 2, 4, 1, 8)
    # 2**64 - 1 would become -1 (padding, silently skipped) in a plain cast to int64.
    with pytest.raises(ValueError, match="fit in int64"):
        ops.kv_chunk_md5(kv, torch.tensor([0, 2**64 - 1], dtype=torch.uint64), 2, "mla")
    ok = ops.kv_chunk_md5(kv, np.array([0, 1], dtype=np.uint64), 2, "mla")
    assert ok == ops.kv_chunk_md5(kv, [0, 1], 2, "mla")


def test_int32_slot_tensor() -> None:
    kv = _caches("hnd", torch.float16, 2, 2, 4, 2, 8)
    got = ops.kv_chunk_md5(kv, torch.tensor([7, -1, 0], dtype=torch.int32), 2, "hnd")
    assert got == ref.kv_chunk_md5(kv, [7, -1, 0], 2, "hnd")


# ---- CUDA -----------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_matches_cpu(layout: str, dtype: torch.dtype) -> None:
    kv = _caches(layout, dtype, 6, 6, 16, 2, 32)
    slots = torch.randperm(96, generator=torch.Generator().manual_seed(3))[:70]
    slots[5] = -1
    cpu = ops.kv_chunk_md5(kv, slots, 16, layout)
    cuda = ops.kv_chunk_md5([t.cuda() for t in kv], slots.cuda(), 16, layout)
    assert cuda == cpu
    assert cpu == ref.kv_chunk_md5(kv, slots.tolist(), 16, layout)


@pytest.mark.cuda
@pytest.mark.parametrize("head_size", [1, 7, 55, 64, 65])
def test_cuda_generic_path_lengths(head_size: int) -> None:
    kv = _caches("mla", torch.uint8, 3, 3, 4, 1, head_size)
    slots = [11, 0, -1, 5, 3]
    assert ops.kv_chunk_md5([t.cuda() for t in kv], slots, 2, "mla") == ref.kv_chunk_md5(
        kv, slots, 2, "mla"
    )


@pytest.mark.cuda
def test_cuda_out_of_range_slot() -> None:
    kv = [t.cuda() for t in _caches("flash_attn", torch.float16, 2, 2, 4, 1, 64)]
    with pytest.raises(IndexError, match=r"slot_mapping\[3\] = 8 "):
        ops.kv_chunk_md5(kv, torch.tensor([0, 1, -1, 8], device="cuda"), 2, "flash_attn")


@pytest.mark.cuda
def test_cuda_zero_slots_and_padding() -> None:
    kv = [t.cuda() for t in _caches("flash_attn", torch.float16, 2, 2, 4, 1, 64)]
    assert ops.kv_chunk_md5(
        kv, torch.empty(0, dtype=torch.int64, device="cuda"), 2, "flash_attn"
    ) == ([[], []], [])
    empty = hashlib.md5(b"").hexdigest()
    per_layer, _ = ops.kv_chunk_md5(kv, [-1, -1, 3], 2, "flash_attn")
    assert per_layer[0][0] == empty
    assert per_layer[1][0] == empty
