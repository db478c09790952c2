"""CacheEngine: store/retrieve/lookup semantics, switches, checksums, metadata, metrics."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from lmcache_native.engine import CacheEngine
from lmcache_native.errors import InvalidSlotsError, NoKVCacheError, UnknownBackendError
from lmcache_native.testing import reference

from tests.engine.conftest import (
    CHUNK_SIZE,
    LAYOUT,
    NUM_SLOTS,
    MakeEngine,
    random_cache,
    read_rows,
    same_bytes,
)

SENTINEL = 0x5A


def fill_slots(caches: dict[str, torch.Tensor], slots: torch.Tensor, byte: int = SENTINEL) -> None:
    """Writes ``byte`` into every element byte of the rows at ``slots`` (all layers, K and V)."""
    for layer in caches.values():
        for s in slots.tolist():
            for kv in range(2):
                row = reference.kv_row(layer, LAYOUT, kv, s)
                reference.set_kv_row(
                    layer,
                    LAYOUT,
                    kv,
                    s,
                    torch.full_like(row.view(torch.uint8), byte).view(row.dtype),
                )


def sentinel_rows(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full(
        (like.shape[0], like.shape[1], n, like.shape[3] * 2), SENTINEL, dtype=torch.uint8
    ).view(like.dtype)


def test_store_then_retrieve_into_other_slots_is_bit_identical(make_engine: MakeEngine) -> None:
    caches = random_cache(1)
    e = make_engine(caches)
    src = torch.arange(0, 64)
    dst = torch.arange(256, 320)
    expected = read_rows(caches, src)
    fill_slots(caches, dst)
    tokens = list(range(100, 164))
    r = e.store(tokens, src)
    assert (r.num_tokens, r.num_stored_tokens, r.num_skipped_chunks, r.reason) == (64, 64, 0, None)
    assert e.lookup(tokens) == 64
    rr = e.retrieve(tokens, dst)
    assert rr.num_retrieved == 64
    assert rr.mask.dtype == torch.bool
    assert bool(rr.mask.all())
    assert same_bytes(read_rows(caches, dst), expected)


def test_only_chunks_not_yet_stored_are_copied(make_engine: MakeEngine) -> None:
    e = make_engine()
    tokens = list(range(96))
    assert e.store(tokens[:64], torch.arange(64)).num_stored_tokens == 64
    gathered = e.metrics.value("lmcache_copy_bytes_total", {"direction": "gather"})
    r = e.store(tokens, torch.arange(96))
    assert (r.num_stored_tokens, r.num_skipped_chunks, r.reason) == (32, 4, None)
    chunk_bytes = e.metadata_dict()["chunk_bytes"]
    assert (
        e.metrics.value("lmcache_copy_bytes_total", {"direction": "gather"})
        == gathered + 2 * chunk_bytes
    )
    again = e.store(tokens, torch.arange(96))
    assert (again.num_stored_tokens, again.num_skipped_chunks, again.reason) == (
        0,
        6,
        "already stored",
    )


def test_short_and_unfull(make_engine: MakeEngine) -> None:
    caches = random_cache(2)
    e = make_engine(caches)
    assert e.store(list(range(10)), torch.arange(10)).reason == "shorter than chunk_size"
    r = e.store(list(range(40)), torch.arange(40))
    assert (r.num_stored_tokens, r.reason) == (32, "unfull chunk not saved")
    assert e.lookup(list(range(40))) == 32
    # a runtime change reaches the engine: the tail is stored and found from now on
    assert e.config.update({"save_unfull_chunk": True})[1] == {}
    r = e.store(list(range(40)), torch.arange(40))
    assert (r.num_stored_tokens, r.num_skipped_chunks) == (8, 2)
    assert e.lookup(list(range(40))) == 40
    expected = read_rows(caches, torch.arange(40))
    dst = torch.arange(300, 340)
    assert e.retrieve(list(range(40)), dst).num_retrieved == 40
    assert same_bytes(read_rows(caches, dst), expected)


def test_min_retrieve_tokens(make_engine: MakeEngine) -> None:
    caches = random_cache(3)
    e = make_engine(caches)
    e.store(list(range(48)), torch.arange(48))
    e.config.update({"min_retrieve_tokens": 64})
    dst = torch.arange(200, 248)
    fill_slots(caches, dst)
    rr = e.retrieve(list(range(48)), dst)
    assert rr.num_retrieved == 0
    assert not bool(rr.mask.any())
    assert rr.reason == "below min_retrieve_tokens"
    assert same_bytes(read_rows(caches, dst), sentinel_rows(48, read_rows(caches, dst)))
    e.config.update({"min_retrieve_tokens": 48})
    assert e.retrieve(list(range(48)), dst).num_retrieved == 48


def test_mask_is_a_contiguous_prefix_and_later_chunks_are_not_loaded(
    make_engine: MakeEngine,
) -> None:
    caches = random_cache(4)
    e = make_engine(caches)
    tokens = list(range(64))
    e.store(tokens, torch.arange(64))
    keys = e.chunk_keys(tokens)
    assert e.storage.remove(keys[2]) == 1  # a gap at chunk 2
    assert e.lookup(tokens) == 32
    dst = torch.arange(400, 464)
    fill_slots(caches, dst)
    rr = e.retrieve(tokens, dst)
    assert rr.num_retrieved == 32
    assert rr.mask.tolist() == [True] * 32 + [False] * 32
    after = read_rows(caches, dst)
    assert same_bytes(after[:, :, :32], read_rows(caches, torch.arange(32)))
    assert same_bytes(after[:, :, 32:], sentinel_rows(32, after))  # chunk 3 not scattered


def test_padding_slots(make_engine: MakeEngine) -> None:
    caches = random_cache(5)
    e = make_engine(caches)
    tokens = list(range(64))
    slots = torch.arange(64)
    slots[40] = -1
    r = e.store(tokens, slots)  # chunk 2 has padding: store stops there
    assert (r.num_stored_tokens, r.reason) == (32, "padding slots")
    e.store(tokens, torch.arange(64))
    # retrieve leaves -1 slots alone (vLLM already holds those tokens) but counts the prefix
    dst = torch.arange(128, 192)
    fill_slots(caches, dst)
    dst_with_pad = dst.clone()
    dst_with_pad[:16] = -1
    rr = e.retrieve(tokens, dst_with_pad)
    assert rr.num_retrieved == 64
    after = read_rows(caches, dst)
    assert same_bytes(after[:, :, :16], sentinel_rows(16, after))
    assert same_bytes(after[:, :, 16:], read_rows(caches, torch.arange(16, 64)))


def test_bad_slots(make_engine: MakeEngine) -> None:
    e = make_engine()
    with pytest.raises(InvalidSlotsError):
        e.store(list(range(16)), torch.arange(NUM_SLOTS - 8, NUM_SLOTS + 8))
    with pytest.raises(InvalidSlotsError):
        e.retrieve(list(range(16)), torch.full((16,), -2))
    with pytest.raises(ValueError, match="slots for"):
        e.store(list(range(16)), torch.arange(15))


def test_no_kv_cache() -> None:
    from lmcache_native.config import LMCacheEngineConfig
    from lmcache_native.engine import EngineMetadata

    e = CacheEngine(LMCacheEngineConfig.from_defaults(max_local_cpu_size=0.01), EngineMetadata("m"))
    assert not e.has_kv_caches
    assert e.layer_names == []
    for call in (
        lambda: e.store([1], torch.zeros(1, dtype=torch.long)),
        lambda: e.retrieve([1], torch.zeros(1, dtype=torch.long)),
        lambda: e.kv_checksums(torch.zeros(1, dtype=torch.long), 1, False),
        e.kv_info,
        lambda: e.num_slots,
    ):
        with pytest.raises(NoKVCacheError):
            call()
    assert e.metadata_dict()["num_layers"] == 0
    e.close()


def test_freeze(make_engine: MakeEngine, tmp_path: Path) -> None:
    e = make_engine(local_disk=str(tmp_path / "d"))
    e.store(list(range(32)), torch.arange(32))
    e.flush()
    e.clear(["LocalCPUBackend"])  # now only on disk
    e.freeze(True)
    assert e.is_frozen
    r = e.store(list(range(200, 232)), torch.arange(32))
    assert (r.num_stored_tokens, r.num_skipped_chunks, r.reason) == (0, 2, "frozen")
    assert e.lookup(list(range(32))) == 0  # disk not consulted while frozen
    assert e.retrieve(list(range(32)), torch.arange(32)).num_retrieved == 0
    e.freeze(False)
    assert e.lookup(list(range(32))) == 32
    assert e.lookup(list(range(200, 232))) == 0


def test_hot_cache_switch(make_engine: MakeEngine) -> None:
    e = make_engine()
    e.store(list(range(32)), torch.arange(32))
    e.set_hot_cache(False)
    assert not e.hot_cache_enabled
    assert e.lookup(list(range(32))) == 0
    r = e.store(list(range(32)), torch.arange(32))
    assert (r.num_stored_tokens, r.reason) == (0, "hot cache disabled")
    e.set_hot_cache(True)
    assert e.store(list(range(32)), torch.arange(32)).num_stored_tokens == 32


def test_bypass_and_clear(make_engine: MakeEngine, tmp_path: Path) -> None:
    e = make_engine(local_disk=str(tmp_path / "d"))
    assert e.all_backends() == ["LocalCPUBackend", "LocalDiskBackend"]
    with pytest.raises(
        UnknownBackendError,
        match=r"Backend 'Foo' not found. Available: \['LocalCPUBackend', 'LocalDiskBackend'\]",
    ):
        e.bypass_add("Foo")
    assert e.bypass_add("LocalCPUBackend") is False
    assert e.bypassed_backends() == ["LocalCPUBackend"]
    e.store(list(range(32)), torch.arange(32))
    e.flush()
    stats = e.storage.stats()
    assert stats["LocalCPUBackend"]["num_chunks"] == 0
    assert stats["LocalDiskBackend"]["num_chunks"] == 2
    assert e.bypass_remove("LocalCPUBackend") is True
    assert e.bypass_remove("LocalCPUBackend") is False
    e.store(list(range(100, 132)), torch.arange(32))
    e.flush()
    assert e.clear(["LocalCPUBackend"]) == {"LocalCPUBackend": 2}
    assert e.clear() == {"LocalCPUBackend": 0, "LocalDiskBackend": 4}
    with pytest.raises(UnknownBackendError):
        e.clear(["RemoteBackend"])


def test_record_slot_logging(make_engine: MakeEngine, caplog: pytest.LogCaptureFixture) -> None:
    e = make_engine()
    slots = torch.cat([torch.arange(0, 30), torch.tensor([40, 41])])
    with caplog.at_level(logging.INFO, logger="lmcache_native.engine.cache_engine"):
        e.store(list(range(32)), slots)
        assert "slot_mapping" not in caplog.text
        e.set_record_slot(True)
        assert e.record_slot_enabled
        e.store(list(range(32)), slots)
        e.retrieve(list(range(32)), slots)
    lines = [r.getMessage() for r in caplog.records if "slot_mapping" in r.getMessage()]
    assert len(lines) == 2
    assert "store" in lines[0]
    assert "[[0, 29], 40, 41]" in lines[0]
    assert "retrieve" in lines[1]


def test_kv_checksums_match_reference_and_survive_a_round_trip(make_engine: MakeEngine) -> None:
    caches = random_cache(6)
    e = make_engine(caches)
    slots = torch.tensor([3, 4, 5, 60, 61, 7, 100])
    per_layer, combined = reference.kv_chunk_md5(list(caches.values()), slots.tolist(), 3, LAYOUT)
    assert e.kv_checksums(slots, 3, False) == combined
    assert e.kv_checksums(slots, 3, True) == dict(zip(caches, per_layer, strict=True))
    # the /cache/kvcache/check use: stored slots and the slots retrieved into agree
    src, dst = torch.arange(0, 32), torch.arange(480, 512)
    e.store(list(range(32)), src)
    e.retrieve(list(range(32)), dst)
    assert e.kv_checksums(src, CHUNK_SIZE, True) == e.kv_checksums(dst, CHUNK_SIZE, True)
    with pytest.raises(InvalidSlotsError):
        e.kv_checksums(torch.tensor([NUM_SLOTS]), 1, False)


def test_kv_info_and_metadata(make_engine: MakeEngine) -> None:
    e = make_engine()
    info = e.kv_info()
    assert info["num_layers"] == 2
    assert info["layers"]["model.layers.0.self_attn"] == {
        "shape": [2, 32, 16, 2, 16],
        "dtype": "torch.bfloat16",
        "device": "cpu",
    }
    meta = e.metadata_dict()
    json.dumps(meta)
    assert meta["model_name"] == "test/model"
    assert meta["worker_id"] == 0
    assert meta["world_size"] == 1
    assert meta["kv_dtype"] == "torch.bfloat16"
    assert meta["chunk_size"] == CHUNK_SIZE
    assert meta["kv_shape"] == [2, 2, CHUNK_SIZE, 2, 16]
    assert meta["layer_names"] == e.layer_names == list(info["layers"])
    assert meta["layout"] == LAYOUT
    assert meta["num_slots"] == NUM_SLOTS


def test_cpu_size_change_resizes_the_tier(make_engine: MakeEngine) -> None:
    e = make_engine()
    for i in range(8):
        e.store(list(range(i * 1000, i * 1000 + 32)), torch.arange(32))
    chunk_bytes = e.metadata_dict()["chunk_bytes"]
    assert e.storage.stats()["LocalCPUBackend"]["num_chunks"] == 16
    assert e.config.update({"max_local_cpu_size": 3 * chunk_bytes / 1024**3})[1] == {}
    st = e.storage.stats()["LocalCPUBackend"]
    assert st["num_chunks"] == 3
    assert st["capacity_bytes"] == 3 * chunk_bytes
    assert e.pool.capacity_bytes == 3 * chunk_bytes


def test_metrics_move(make_engine: MakeEngine) -> None:
    from prometheus_client import generate_latest

    e = make_engine()
    e.store(list(range(32)), torch.arange(32))
    e.retrieve(list(range(48)), torch.arange(48))
    m = e.metrics
    assert m.value("lmcache_stored_tokens_total") == 32
    assert m.value("lmcache_retrieved_tokens_total", {"tier": "LocalCPUBackend"}) == 32
    assert m.value("lmcache_hit_chunks_total", {"tier": "LocalCPUBackend"}) == 2
    # One batched native call per store / retrieve, whatever the chunk count.
    assert m.value("lmcache_copy_seconds_count", {"direction": "gather"}) == 1
    assert m.value("lmcache_copy_seconds_count", {"direction": "scatter"}) == 1
    assert m.value("lmcache_tier_stored_tokens_total", {"tier": "LocalCPUBackend"}) == 32
    assert m.value("lmcache_tier_chunks", {"tier": "LocalCPUBackend"}) == 2
    assert m.value("lmcache_requests_total", {"op": "retrieve"}) == 1
    text = generate_latest(m.registry).decode()
    assert "lmcache_checksum_failures_total" in text
    assert "lmcache_pool_used_bytes" in text
