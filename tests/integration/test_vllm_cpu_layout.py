"""The ``vllm_cpu`` layout against vLLM's own CPU cache writer (``cpu_attn_reshape_and_cache``).

vLLM's CPU attention packs K and V by ISA. For ``vec``/``vec16`` (what x86 without AMX and every
fp16/fp32 model use) each ``(block, head)`` holds K transposed ``[D, N]`` then V ``[N, D]``:
these tests write K/V with vLLM's op and check that ``paged_kv_gather`` returns exactly those
token rows, and that ``paged_kv_scatter`` of the rows writes exactly the bytes vLLM wrote. For
``amx`` the packing differs, which is why the connector refuses it.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("vllm")

from lmcache_native import ops  # noqa: E402
from lmcache_native.integration.vllm.layout import (  # noqa: E402
    CPU_ISAS,
    LayerGeometry,
    UnsupportedLayoutError,
    detect_layout,
)
from lmcache_native.integration.vllm.worker import cpu_attention_isa  # noqa: E402
from vllm import _custom_ops as vllm_ops  # noqa: E402

pytestmark = pytest.mark.vllm

NUM_BLOCKS, HEADS, HEAD = 5, 2, 64


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


@pytest.mark.parametrize("isa", sorted(CPU_ISAS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("block", [32, 64])
def test_gather_reads_the_rows_vllm_wrote_and_scatter_writes_its_bytes(
    isa: str, dtype: torch.dtype, block: int
) -> None:
    slots, key, value = _case(dtype, block, seed=block)
    t = slots.numel()
    written = torch.zeros(NUM_BLOCKS, HEADS, block, 2 * HEAD, dtype=dtype)
    _vllm_write(written, key, value, slots, isa)

    chunk = torch.empty(2, 1, t, HEADS * HEAD, dtype=dtype)
    ops.paged_kv_gather([written], slots, chunk, "vllm_cpu")
    assert torch.equal(chunk[0, 0].view(torch.uint8), key.reshape(t, -1).view(torch.uint8))
    assert torch.equal(chunk[1, 0].view(torch.uint8), value.reshape(t, -1).view(torch.uint8))

    ours = torch.zeros_like(written)
    ops.paged_kv_scatter(chunk, [ours], slots, "vllm_cpu")
    assert torch.equal(ours.view(torch.uint8), written.view(torch.uint8))


def test_amx_packs_differently_so_it_is_refused() -> None:
    block = 32
    slots, key, value = _case(torch.bfloat16, block, seed=7)
    written = torch.zeros(NUM_BLOCKS, HEADS, block, 2 * HEAD, dtype=torch.bfloat16)
    _vllm_write(written, key, value, slots, "amx")
    chunk = torch.empty(2, 1, slots.numel(), HEADS * HEAD, dtype=torch.bfloat16)
    ops.paged_kv_gather([written], slots, chunk, "vllm_cpu")
    assert not torch.equal(chunk[0, 0], key.reshape(slots.numel(), -1))

    geo = LayerGeometry("CPU_ATTN", HEADS, HEAD, block, cpu_isa="amx")
    with pytest.raises(UnsupportedLayoutError, match="ISA 'amx'"):
        detect_layout({"l0": written}, {"l0": geo})


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
