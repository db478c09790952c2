"""The CPU copy instruction sets.

The CPU copy instruction sets: the AVX2 transposed scatter into vllm_cpu's K (2-byte dtypes,
multiples of 16) against the reference on every path, and the switch that forces a path.
"""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import (
    SENTINEL,
    assert_all_same_bytes,
    assert_same_bytes,
    chunk_shape,
    expected_scatter,
    fill_sentinel,
    make_caches,
    random_bits,
)
from lmcache_native.ops import (
    copy_isa,
    copy_set_isa,
    copy_supported_isas,
    kv_cache_shape,
    paged_kv_scatter,
)

pytestmark = pytest.mark.usefixtures("each_copy_isa")
COPY_ISAS = copy_supported_isas()


# --- the AVX2 transposed scatter (vllm_cpu K, 2-byte dtypes, multiples of 16) -------------------


def _runs_case(block_size: int) -> list[int]:
    """Runs case.

    Runs that take every branch: whole blocks, half-block runs at offsets 0 and 16, runs not
    a multiple of 16, padding inside a run, a run cut by a block edge, single tokens.
    """
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
    block_size: int, head_size: int, dtype: torch.dtype, each_copy_isa: str
) -> None:
    """Vllm cpu transposed scatter paths.

    Every byte of every layer against the reference, on the run shapes the AVX2 path takes
    (direct streaming for block 16, the L1 tile for larger blocks) or hands back to SSE2.
    """
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
    assert_all_same_bytes(caches, exp)
    assert copy_isa() == each_copy_isa


@pytest.mark.parametrize("offset_elems", [1, 8, 24])
def test_vllm_cpu_transposed_scatter_into_a_misaligned_cache(offset_elems: int) -> None:
    """Vllm cpu transposed scatter into a misaligned cache.

    A cache that does not start on a 32-byte boundary: no aligned streaming store may be used
    on it (the direct path is refused), and the bytes still match.
    """
    shape = kv_cache_shape("vllm_cpu", 4, 16, 2, 32)
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
    assert COPY_ISAS[0] == "sse2"
    assert set(COPY_ISAS) <= {"sse2", "avx2"}
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
