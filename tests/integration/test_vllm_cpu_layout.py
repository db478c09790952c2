"""The CPU layouts against vLLM's own CPU cache writer (``cpu_attn_reshape_and_cache``).

vLLM's CPU attention packs K and V by ISA. For ``vec``/``vec16`` (what x86 without AMX and every
fp16/fp32 model use) each ``(block, head)`` holds K transposed ``[D, N]`` then V ``[N, D]``
(``vllm_cpu``); for ``amx`` (bf16 on a CPU with AMX tiles) the same region is packed for AMX
tiles (``vllm_cpu_amx``). These tests write K/V with vLLM's op for each ISA and check that
``paged_kv_gather`` returns exactly those token rows, and that ``paged_kv_scatter`` of the rows
writes exactly the bytes vLLM wrote.

vLLM's ``amx`` writer is plain stores (the AMX instructions are in its attention kernel), so the
``amx`` cases run on any CPU whose vLLM build has the writer (x86 with AVX-512, like this
project's CI machine); they skip only on a CPU without ``amx_tile`` whose vLLM build lacks it.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("vllm")

from lmcache_native import ops
from lmcache_native.integration.vllm.layout import (
    CPU_ISA_LAYOUTS,
    LayerGeometry,
    UnsupportedLayoutError,
    detect_layout,
)
from lmcache_native.integration.vllm.worker import cpu_attention_isa
from vllm import _custom_ops as vllm_ops

pytestmark = pytest.mark.vllm

NUM_BLOCKS, HEADS, HEAD = 5, 2, 64


def _cpu_has_amx_tiles() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return "amx_tile" in f.read().split()
    except OSError:
        return False


def _amx_writer_missing() -> str | None:
    """Why vLLM's ``amx`` cache writer cannot run here, or None when it can (always on AMX)."""
    if _cpu_has_amx_tiles():
        return None
    cache = torch.zeros(1, 1, 32, 2 * 32, dtype=torch.bfloat16)
    kv = torch.zeros(1, 1, 32, dtype=torch.bfloat16)
    try:
        _vllm_write(cache, kv, kv, torch.tensor([0]), "amx")
    except RuntimeError as e:
        return f"no amx_tile on this CPU and vLLM's build here has no amx cache writer: {e}"
    return None


def _vllm_write(
    cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slots: torch.Tensor, isa: str
) -> None:
    """Writes key/value [T, H, D] at slots with vLLM's CPU cache writer, as its backend does."""
    nb, h, n, _ = cache.shape
    kv = cache.view(nb, h, 2 * n, -1)
    key_cache, value_cache = kv.chunk(2, dim=2)
    vllm_ops.cpu_attn_reshape_and_cache(key, value, key_cache, value_cache, slots, isa)


def _case(dtype: torch.dtype, block: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    num_slots = NUM_BLOCKS * block
    slots = torch.randperm(num_slots, generator=gen)[: 3 * block // 2]  # scattered, some blocks
    t = slots.numel()
    key = torch.randn(t, HEADS, HEAD, generator=gen).to(dtype)
    value = torch.randn(t, HEADS, HEAD, generator=gen).to(dtype)
    return slots, key, value


def _skip_without_writer(isa: str) -> None:
    if isa == "amx" and (reason := _amx_writer_missing()) is not None:
        pytest.skip(reason)


@pytest.mark.parametrize("isa", sorted(CPU_ISA_LAYOUTS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("block", [32, 64])
def test_gather_reads_the_rows_vllm_wrote_and_scatter_writes_its_bytes(
    isa: str, dtype: torch.dtype, block: int
) -> None:
    _skip_without_writer(isa)
    slots, key, value = _case(dtype, block, seed=block)
    t = slots.numel()
    written = torch.zeros(NUM_BLOCKS, HEADS, block, 2 * HEAD, dtype=dtype)
    _vllm_write(written, key, value, slots, isa)

    # The layout the connector picks for this ISA, through its own detection.
    geo = LayerGeometry("CPU_ATTN", HEADS, HEAD, block, cpu_isa=isa)
    detected = detect_layout({"l0": written}, {"l0": geo})
    assert detected.layout == CPU_ISA_LAYOUTS[isa]
    layout, view = detected.layout, detected.kv_caches["l0"]

    chunk = torch.empty(2, 1, t, HEADS * HEAD, dtype=dtype)
    ops.paged_kv_gather([view], slots, chunk, layout)
    assert torch.equal(chunk[0, 0].view(torch.uint8), key.reshape(t, -1).view(torch.uint8))
    assert torch.equal(chunk[1, 0].view(torch.uint8), value.reshape(t, -1).view(torch.uint8))

    ours = torch.zeros_like(written)
    ops.paged_kv_scatter(chunk, [ours], slots, layout)
    assert torch.equal(ours.view(torch.uint8), written.view(torch.uint8))


@pytest.mark.parametrize("block", [32, 64])
def test_amx_cache_loads_into_a_vec_cache_with_the_same_rows_and_checksums(block: int) -> None:
    """A chunk stored from an AMX worker is token rows: a vec worker reads the same K/V."""
    _skip_without_writer("amx")
    slots, key, value = _case(torch.bfloat16, block, seed=11)
    amx = torch.zeros(NUM_BLOCKS, HEADS, block, 2 * HEAD, dtype=torch.bfloat16)
    vec = torch.zeros_like(amx)
    _vllm_write(amx, key, value, slots, "amx")
    _vllm_write(vec, key, value, slots, "vec")
    assert not torch.equal(amx, vec)  # different packings of the same rows

    chunk = torch.empty(2, 1, slots.numel(), HEADS * HEAD, dtype=torch.bfloat16)
    ops.paged_kv_gather([amx], slots, chunk, "vllm_cpu_amx")
    loaded = torch.zeros_like(vec)
    ops.paged_kv_scatter(chunk, [loaded], slots, "vllm_cpu")
    assert torch.equal(loaded.view(torch.uint8), vec.view(torch.uint8))
    assert ops.kv_chunk_md5([amx], slots, 16, "vllm_cpu_amx") == ops.kv_chunk_md5(
        [vec], slots, 16, "vllm_cpu"
    )


def test_fp8_amx_cache_is_refused_in_one_line() -> None:
    geo = LayerGeometry("CPU_ATTN", HEADS, HEAD, 32, cpu_isa="amx")
    cache = torch.zeros(NUM_BLOCKS, HEADS, 32, 2 * HEAD, dtype=torch.uint8)
    with pytest.raises(UnsupportedLayoutError, match="quantised"):
        detect_layout({"l0": cache}, {"l0": geo})


def test_cpu_attention_isa_reads_the_layer_then_asks_vllm() -> None:
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    config = SimpleNamespace(
        model_config=SimpleNamespace(dtype=torch.bfloat16),
        cache_config=SimpleNamespace(cache_dtype="auto"),
    )
    spec = SimpleNamespace(block_size=32, head_size=HEAD)
    assert cpu_attention_isa(config, SimpleNamespace(isa="vec16"), spec) == "vec16"  # type: ignore[arg-type]
    expected = _get_attn_isa(torch.bfloat16, 32, HEAD, "auto")
    assert cpu_attention_isa(config, SimpleNamespace(), spec) == expected  # type: ignore[arg-type]
    broken = SimpleNamespace(model_config=None, cache_config=None)
    assert cpu_attention_isa(broken, SimpleNamespace(), spec) is None  # type: ignore[arg-type]
