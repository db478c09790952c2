"""kv_cache_shape and describe agree: the shape built for a layout is the one it accepts."""

from __future__ import annotations

import pytest
import torch
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
