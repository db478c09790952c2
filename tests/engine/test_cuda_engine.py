"""The engine on CUDA caches: pinned host chunk buffers, bit-identical round trips, checksums."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lmcache_native.testing import reference

from tests.engine.conftest import LAYOUT, MakeEngine, random_cache, read_rows, same_bytes


@pytest.mark.cuda
@pytest.mark.parametrize("tiers", [{}, {"local_cpu": False, "local_disk": "DISK"}])
def test_cuda_store_retrieve_is_bit_identical(
    make_engine: MakeEngine, tmp_path: Path, tiers: dict
) -> None:
    cpu_caches = random_cache(31)
    caches = {k: v.cuda() for k, v in cpu_caches.items()}
    cfg = {k: (str(tmp_path / "disk") if v == "DISK" else v) for k, v in tiers.items()}
    e = make_engine(caches, **cfg)
    assert e.pool.pin_memory is True
    src = torch.arange(0, 64, device="cuda")
    dst = torch.arange(256, 320, device="cuda")
    tokens = list(range(64))
    assert e.store(tokens, src).num_stored_tokens == 64
    e.flush()
    rr = e.retrieve(tokens, dst)
    assert rr.num_retrieved == 64
    assert rr.mask.device.type == "cpu"
    torch.cuda.synchronize()
    back = {k: v.cpu() for k, v in caches.items()}
    assert same_bytes(read_rows(back, dst.cpu()), read_rows(cpu_caches, src.cpu()))
    per_layer, combined = reference.kv_chunk_md5(list(back.values()), dst.tolist(), 16, LAYOUT)
    assert e.kv_checksums(dst, 16, False) == combined
    assert e.kv_checksums(dst, 16, True) == dict(zip(caches, per_layer, strict=True))
