"""Fixtures for the engine tests: a small paged cache and engines over chosen tiers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from engine_testlib import MakeEngine, clear_config_env, engine_factory
from lmcache_native import ops

NUM_LAYERS = 2
NUM_BLOCKS = 32
BLOCK_SIZE = 16
NUM_HEADS = 2
HEAD_SIZE = 16
CHUNK_SIZE = 16
NUM_SLOTS = NUM_BLOCKS * BLOCK_SIZE
LAYOUT = "flash_attn"
MODEL = "test/model"


def random_cache(seed: int, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """Per-layer flash-attn caches of seeded random bit patterns."""
    g = torch.Generator().manual_seed(seed)
    shape = (2, NUM_BLOCKS, BLOCK_SIZE, NUM_HEADS, HEAD_SIZE)
    elem = torch.empty((), dtype=dtype).element_size()
    out = {}
    for i in range(NUM_LAYERS):
        n = 1
        for s in shape:
            n *= s
        raw = torch.randint(0, 256, (n * elem,), dtype=torch.uint8, generator=g)
        out[f"model.layers.{i}.self_attn"] = raw.view(dtype).view(shape)
    return out


def read_rows(caches: dict[str, torch.Tensor], slots: torch.Tensor) -> torch.Tensor:
    """The KV rows at ``slots`` as a chunk-shaped tensor (through the native gather)."""
    paged = ops.describe(list(caches.values()), LAYOUT)
    out = torch.zeros(paged.chunk_shape(int(slots.numel())), dtype=paged.dtype)
    ops.paged_kv_gather(list(caches.values()), slots, out, LAYOUT)
    return out


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)
    )


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_config_env(monkeypatch)


@pytest.fixture
def make_engine() -> Iterator[MakeEngine]:
    """``make_engine(caches=None, model=MODEL, **config)`` -> a registered engine (closed after)."""
    with engine_factory(CHUNK_SIZE, LAYOUT, MODEL, lambda: random_cache(0)) as make:
        yield make
