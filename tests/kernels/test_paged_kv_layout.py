"""The paged-KV layout.

The paged-KV layout: kv_cache_shape and describe agree, describe builds the bound
``_C.PagedKVLayout`` by field name, and the binding checks every field when it is built.
"""

from __future__ import annotations

import pytest
import torch
from lmcache_native._native import PagedKVLayout
from lmcache_native.ops import LAYOUTS, describe, kv_cache_shape


@pytest.mark.parametrize("layout", LAYOUTS)
def test_kv_cache_shape_round_trips_through_describe(layout: str) -> None:
    n, b, h, d = 3, 16, 2, 16
    shape = kv_cache_shape(layout, n, b, h, d)
    kv = describe([torch.zeros(shape, dtype=torch.float16)] * 2, layout)
    heads = 1 if layout == "mla" else h
    assert (kv.num_blocks, kv.block_size, kv.num_heads, kv.head_size) == (n, b, heads, d)
    assert kv.num_kv == (1 if layout == "mla" else 2)


def test_kv_cache_shape_rejects_an_unknown_layout() -> None:
    with pytest.raises(ValueError, match="unknown layout 'nhd'"):
        kv_cache_shape("nhd", 1, 16, 1, 8)


def test_describe_builds_the_layout_by_field_name() -> None:
    """Describe builds the layout by field name.

    flash_attn [2, N, B, H, D]: K at 0, V one whole K half further; block, token, head and dim
    strides of a contiguous tensor; plain (unpacked) two-level fields.
    """
    n, b, h, d = 3, 16, 2, 8
    kv = describe(
        [torch.zeros(kv_cache_shape("flash_attn", n, b, h, d), dtype=torch.bfloat16)], "flash_attn"
    )
    lay = kv.layout
    assert isinstance(lay, PagedKVLayout)
    assert (lay.num_kv, lay.num_blocks, lay.block_size, lay.num_heads, lay.head_size) == (
        2, n, b, h, d,
    )  # fmt: skip
    assert lay.elem_size == 2
    assert lay.kv_offset == (0, n * b * h * d)
    assert lay.block_stride == (b * h * d, b * h * d)
    assert lay.token_stride == (h * d, h * d)
    assert lay.head_stride == (d, d)
    assert lay.dim_stride == (1, 1)
    assert (lay.token_group, lay.token_inner, lay.dim_group, lay.dim_inner) == (
        (1, 1), (0, 0), (1, 1), (0, 0),
    )  # fmt: skip
    assert (lay.num_slots, lay.row_elems, lay.packed) == (n * b, h * d, False)
    assert repr(lay).startswith("PagedKVLayout(num_kv=2, num_blocks=3, block_size=16,")


def test_vllm_cpu_k_is_transposed_and_amx_is_packed() -> None:
    n, b, h, d = 2, 16, 2, 32
    cpu = describe([torch.zeros(kv_cache_shape("vllm_cpu", n, b, h, d))], "vllm_cpu").layout
    assert cpu.token_stride == (1, d)
    assert cpu.dim_stride == (b, 1)
    assert cpu.kv_offset == (0, b * d)
    assert not cpu.packed
    amx = describe(
        [torch.zeros(kv_cache_shape("vllm_cpu_amx", n, b, h, d), dtype=torch.bfloat16)],
        "vllm_cpu_amx",
    ).layout
    assert amx.packed
    assert (amx.token_group, amx.dim_group) == ((16, 2), (2, 16))


_FIELDS = {
    "num_kv": 2,
    "num_blocks": 4,
    "block_size": 16,
    "num_heads": 2,
    "head_size": 8,
    "elem_size": 2,
    "kv_offset": (0, 1024),
    "block_stride": (256, 256),
    "token_stride": (16, 16),
    "head_stride": (8, 8),
    "dim_stride": (1, 1),
}


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("num_kv", 3, "num_kv must be 1 or 2, got 3"),
        ("num_blocks", -1, "num_blocks must be >= 0"),
        ("block_size", 0, "block_size must be > 0"),
        ("num_heads", 0, "num_heads must be > 0"),
        ("head_size", -8, "head_size must be > 0"),
        ("elem_size", 3, "elem_size must be 1, 2, 4 or 8 bytes, got 3"),
        ("token_group", (0, 1), "token/dim groups must be >= 1"),
        ("dim_group", (3, 3), "groups must divide block_size and head_size"),
    ],
)
def test_layout_refuses_a_bad_field_naming_it(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PagedKVLayout(**{**_FIELDS, field: value})


def test_layout_is_keyword_only_and_read_only() -> None:
    lay = PagedKVLayout(**_FIELDS)  # type: ignore[arg-type]
    assert lay.num_slots == 64
    with pytest.raises(TypeError):
        PagedKVLayout(*_FIELDS.values())  # type: ignore[call-arg]
    with pytest.raises(AttributeError):
        lay.block_size = 32  # type: ignore[misc]
    with pytest.raises(TypeError):
        PagedKVLayout(**{**_FIELDS, "kv_offset": (0, 1, 2)})
