"""Cache Operations: store, retrieve, clear, kvcache check / record_slot / info."""

from __future__ import annotations

import asyncio

import pytest
import torch
from api_testlib import CHUNK_SIZE, LAYOUT, NUM_SLOTS, assert_error
from lmcache_native.api.controllers import cache as cache_controller
from lmcache_native.testing import reference


def _check(client, slot_mapping: str, chunk_size: int = CHUNK_SIZE, layerwise: bool = False):
    params = {"slot_mapping": slot_mapping, "chunk_size": chunk_size}
    if layerwise:
        params["layerwise"] = "true"
    r = client.get("/cache/kvcache/check", params=params)
    assert r.status_code == 200, r.text
    return r.json()


# --- store / retrieve ------------------------------------------------------------------------


def test_store_full_chunks(client):
    r = client.post("/cache/store?tokens_mock=0,64")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "success"
    assert body["num_tokens"] == 64
    assert body["num_stored_tokens"] == 64
    assert body["num_skipped_chunks"] == 0


def test_store_partial_tail_not_stored(client):
    body = client.post("/cache/store?tokens_mock=0,40").json()
    assert body["num_tokens"] == 40
    assert body["num_stored_tokens"] == 32  # two full chunks of 16; save_unfull_chunk is off


def test_store_shorter_than_chunk_reports_reason(client):
    body = client.post("/cache/store?tokens_mock=0,10").json()
    assert body["num_tokens"] == 10
    assert body["num_stored_tokens"] == 0
    assert body["reason"]


def test_store_twice_stores_nothing_new(client):
    client.post("/cache/store?tokens_mock=0,32")
    body = client.post("/cache/store?tokens_mock=0,32").json()
    assert body["num_stored_tokens"] == 0
    assert body["num_skipped_chunks"] == 2


def test_retrieve_before_store_is_zero(client):
    r = client.post("/cache/retrieve?tokens_mock=0,64")
    assert r.status_code == 200
    assert r.json() == {"status": "success", "num_tokens": 64, "num_retrieved": 0}


def test_store_then_retrieve_restores_kv_bytes(client, kv_caches):
    before = _check(client, "[0,63]", layerwise=True)
    assert client.post("/cache/store?tokens_mock=0,64").json()["num_stored_tokens"] == 64
    for layer in kv_caches.values():  # flash_attn: slots 0..63 are blocks 0..3
        layer[:, 0:4].view(torch.int16).fill_(0x1234)
    assert _check(client, "[0,63]", layerwise=True) != before
    r = client.post("/cache/retrieve?tokens_mock=0,64")
    assert r.json() == {"status": "success", "num_tokens": 64, "num_retrieved": 64}
    assert _check(client, "[0,63]", layerwise=True) == before


def test_retrieve_prefix_only(client):
    client.post("/cache/store?tokens_mock=0,32")
    assert client.post("/cache/retrieve?tokens_mock=0,64").json()["num_retrieved"] == 32
    # A different prefix (tokens 1..64) shares no chunk with tokens 0..31.
    assert client.post("/cache/retrieve?tokens_mock=1,65").json()["num_retrieved"] == 0


def test_tokens_input_store_and_retrieve(client):
    ids = ",".join(str(7 * i + 3) for i in range(CHUNK_SIZE))
    body = client.post("/cache/store", params={"tokens_input": ids}).json()
    assert body["num_tokens"] == CHUNK_SIZE
    assert body["num_stored_tokens"] == CHUNK_SIZE
    r = client.post("/cache/retrieve", params={"tokens_input": ids})
    assert r.json()["num_retrieved"] == CHUNK_SIZE
    # The same ids as tokens_mock would be a different sequence: not found.
    assert client.post("/cache/retrieve?tokens_mock=0,16").json()["num_retrieved"] == 0


def test_tokens_input_whitespace(client):
    ids = " , ".join(str(i) for i in range(CHUNK_SIZE))
    client.post("/cache/store", params={"tokens_input": ids})
    assert client.post("/cache/retrieve?tokens_mock=0,16").json()["num_retrieved"] == CHUNK_SIZE


@pytest.mark.parametrize("path", ["/cache/store", "/cache/retrieve"])
def test_missing_tokens(client, path):
    assert_error(
        client.post(path),
        400,
        "Missing parameters",
        "Must specify either tokens_input or tokens_mock",
    )


@pytest.mark.parametrize("path", ["/cache/store", "/cache/retrieve"])
def test_both_token_parameters(client, path):
    assert_error(
        client.post(f"{path}?tokens_mock=0,16&tokens_input=1,2"), 400, "Invalid parameters"
    )


@pytest.mark.parametrize("path", ["/cache/store", "/cache/retrieve"])
@pytest.mark.parametrize(
    "value", ["abc", "1", "1,2,3", "5,5", "6,5", "-1,5", "1.5,3", "0x1,3", "1_0,20", ",", "0,"]
)
def test_tokens_mock_format_errors(client, path, value):
    body = assert_error(
        client.post(path, params={"tokens_mock": value}), 400, "Invalid tokens_mock format"
    )
    assert "start,end" in body["message"]


@pytest.mark.parametrize("path", ["/cache/store", "/cache/retrieve"])
def test_tokens_mock_beyond_cache(client, path):
    body = assert_error(
        client.post(path, params={"tokens_mock": f"0,{NUM_SLOTS + 1}"}),
        400,
        "Invalid tokens_mock range",
    )
    assert str(NUM_SLOTS) in body["message"]
    ok = client.post(path, params={"tokens_mock": f"0,{NUM_SLOTS}"})
    assert ok.status_code == 200


def test_tokens_mock_huge_range_fails_fast(client, monkeypatch):
    # Refused from the numbers alone: no token tensor is built, and the engine is not called.
    built: list[str] = []
    for name in ("arange", "tensor"):
        real = getattr(torch, name)
        monkeypatch.setattr(
            cache_controller.torch,
            name,
            lambda *a, _real=real, _name=name, **k: built.append(_name) or _real(*a, **k),
        )
    assert_error(
        client.post("/cache/store?tokens_mock=0,99999999999999999999999999"),
        400,
        "Invalid tokens_mock format",
    )
    assert_error(
        client.post("/cache/store?tokens_mock=0,9000000000000000000"),
        400,
        "Invalid tokens_mock range",
    )
    assert built == []


@pytest.mark.parametrize("value", ["1,x", "1,,2", "-3", "1.0", ""])
def test_tokens_input_format_errors(client, value):
    r = client.post("/cache/store", params={"tokens_input": value})
    if value == "":
        assert_error(r, 400, "Missing parameters")
    else:
        assert_error(r, 400, "Invalid tokens_input format")


def test_tokens_input_beyond_cache(client):
    ids = ",".join(["1"] * (NUM_SLOTS + 1))
    assert_error(
        client.post("/cache/store", params={"tokens_input": ids}), 400, "Invalid tokens_input range"
    )


def test_store_when_frozen_stores_nothing(client):
    client.put("/freeze/enable")
    body = client.post("/cache/store?tokens_mock=0,32").json()
    assert body["num_tokens"] == 32
    assert body["num_stored_tokens"] == 0
    assert "frozen" in (body["reason"] or "")
    client.put("/freeze/disable")
    assert client.post("/cache/store?tokens_mock=0,32").json()["num_stored_tokens"] == 32


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/cache/store?tokens_mock=0,16"),
        ("post", "/cache/retrieve?tokens_mock=0,16"),
        ("get", "/cache/kvcache/check?slot_mapping=0&chunk_size=1"),
        ("get", "/cache/kvcache/info"),
    ],
)
def test_kv_endpoints_503_without_engine_or_kv_cache(
    no_engine_client, unregistered_client, method, path
):
    body = assert_error(getattr(no_engine_client, method)(path), 503, "LMCache API is unavailable")
    assert body["message"] == "LMCache engine not configured."
    body = assert_error(
        getattr(unregistered_client, method)(path), 503, "LMCache API is unavailable"
    )
    assert "KV cache" in body["message"]


# --- clear -----------------------------------------------------------------------------------


def test_clear_all(client):
    client.post("/cache/store?tokens_mock=0,64")
    r = client.delete("/cache/clear")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "success"
    assert body["num_removed"] == 4
    assert body["removed_by_location"]["LocalCPUBackend"] == 4
    assert sum(body["removed_by_location"].values()) == 4
    assert client.post("/cache/retrieve?tokens_mock=0,64").json()["num_retrieved"] == 0


def test_clear_named_locations(client):
    client.post("/cache/store?tokens_mock=0,32")
    r = client.delete("/cache/clear?locations=LocalCPUBackend&locations=LocalCPUBackend")
    assert r.status_code == 200
    assert r.json()["num_removed"] == 2
    assert r.json()["unknown_locations"] == []
    assert client.delete("/cache/clear?locations=LocalCPUBackend").json()["num_removed"] == 0


@pytest.mark.parametrize(
    ("locations", "removed", "unknown", "retrieved"),
    [
        # LMCache ignores locations it does not have; the answer names them, and nothing was
        # cleared: the stored chunks are still there.
        (["FooBackend"], {}, ["FooBackend"], 32),
        # The seed's example on a default serve (no disk tier).
        (["LocalCPUBackend", "LocalDiskBackend"], {"LocalCPUBackend": 2}, ["LocalDiskBackend"], 0),
    ],
)
def test_clear_skips_and_reports_unknown_locations(client, locations, removed, unknown, retrieved):
    client.post("/cache/store?tokens_mock=0,32")
    r = client.delete("/cache/clear", params={"locations": locations})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "status": "success",
        "num_removed": sum(removed.values()),
        "removed_by_location": removed,
        "unknown_locations": unknown,
    }
    assert client.post("/cache/retrieve?tokens_mock=0,32").json()["num_retrieved"] == retrieved


def test_clear_without_engine(no_engine_client):
    assert_error(no_engine_client.delete("/cache/clear"), 503, "LMCache API is unavailable")


def test_clear_works_without_kv_cache(unregistered_client):
    r = unregistered_client.delete("/cache/clear")
    assert r.status_code == 200
    assert r.json()["num_removed"] == 0


# --- kvcache/check -----------------------------------------------------------------------------


def _reference(kv_caches, slots, chunk_size):
    return reference.kv_chunk_md5(list(kv_caches.values()), slots, chunk_size, LAYOUT)


def test_check_spec_example(client, kv_caches):
    body = _check(client, "0,1,2,3", chunk_size=2)
    _, combined = _reference(kv_caches, [0, 1, 2, 3], 2)
    assert body == {
        "status": "success",
        "slot_mapping_ranges": [[0, 3]],
        "chunk_size": 2,
        "num_chunks": 2,
        "chunk_checksums": combined,
        "layerwise": False,
    }


def test_check_layerwise(client, kv_caches):
    body = _check(client, "0,1,2,3", chunk_size=2, layerwise=True)
    per_layer, _ = _reference(kv_caches, [0, 1, 2, 3], 2)
    assert body["layerwise"] is True
    assert body["num_chunks"] == 2
    assert body["chunk_checksums"] == {name: per_layer[i] for i, name in enumerate(kv_caches)}


def test_check_mixed_ranges_and_tail_chunk(client, kv_caches):
    body = _check(client, "1,2,3,[9,12],17,19", chunk_size=3)
    slots = [1, 2, 3, 9, 10, 11, 12, 17, 19]
    assert body["slot_mapping_ranges"] == [[1, 3], [9, 12], 17, 19]
    assert body["num_chunks"] == 3
    assert body["chunk_checksums"] == _reference(kv_caches, slots, 3)[1]


def test_check_whitespace_ignored(client):
    spaced = _check(client, " 0 , 1 ,2, [ 4 , 6 ] ", chunk_size=2)
    plain = _check(client, "0,1,2,[4,6]", chunk_size=2)
    assert spaced == plain
    assert plain["slot_mapping_ranges"] == [[0, 2], [4, 6]]


def test_check_order_kept_and_no_dedupe(client, kv_caches):
    body = _check(client, "5,4,3,3,3", chunk_size=2)
    assert body["slot_mapping_ranges"] == [5, 4, 3, 3, 3]
    assert body["num_chunks"] == 3
    assert body["chunk_checksums"] == _reference(kv_caches, [5, 4, 3, 3, 3], 2)[1]
    assert (
        _check(client, "3,4,5", 3)["chunk_checksums"]
        != _check(client, "5,4,3", 3)["chunk_checksums"]
    )


def test_check_range_is_inclusive(client):
    body = _check(client, "[0,3]", chunk_size=2)
    assert body["num_chunks"] == 2
    assert body["slot_mapping_ranges"] == [[0, 3]]


def test_check_runs_shorter_than_three_stay_integers(client):
    assert _check(client, "[7,8],20,21,22", 8)["slot_mapping_ranges"] == [7, 8, [20, 22]]


def test_check_chunk_size_larger_than_slots(client, kv_caches):
    body = _check(client, "0,1,2", chunk_size=1000)
    assert body["chunk_size"] == 1000
    assert body["num_chunks"] == 1
    assert body["chunk_checksums"] == _reference(kv_caches, [0, 1, 2], 3)[1]


def test_check_last_slot_of_cache(client, kv_caches):
    body = _check(client, str(NUM_SLOTS - 1), chunk_size=1)
    assert body["chunk_checksums"] == _reference(kv_caches, [NUM_SLOTS - 1], 1)[1]


@pytest.mark.parametrize(
    "value", ["[1,2", "1,]", "a", "[3,1]", "[[1,2]]", "-1", "1.5", "1]", "[1,2,3]", "0x10"]
)
def test_check_malformed_slot_mapping(client, value):
    r = client.get("/cache/kvcache/check", params={"slot_mapping": value, "chunk_size": 2})
    assert_error(r, 400, "Invalid slot_mapping format")


def test_check_only_separators(client):
    r = client.get("/cache/kvcache/check", params={"slot_mapping": ",,", "chunk_size": 2})
    assert_error(r, 400, "Invalid slot_mapping format")


def test_check_slot_out_of_cache(client):
    r = client.get(
        "/cache/kvcache/check", params={"slot_mapping": f"0,{NUM_SLOTS}", "chunk_size": 2}
    )
    body = assert_error(r, 400, "Invalid slot indices")
    assert (
        body["message"]
        == f"Slot indices out of bounds: [{NUM_SLOTS}]. Valid range: 0 to {NUM_SLOTS - 1}"
    )


def test_check_huge_range_fails_fast(client, engine, monkeypatch):
    # The parser counts the range against the cache size before expanding it; no checksum runs.
    calls: list[object] = []
    monkeypatch.setattr(engine, "kv_checksums", lambda *a, **_k: calls.append(a))
    r = client.get(
        "/cache/kvcache/check", params={"slot_mapping": "[0,1000000000000000]", "chunk_size": 2}
    )
    body = assert_error(r, 400, "Invalid slot_mapping format")
    assert f"more than max_slots={NUM_SLOTS} slots" in body["message"]
    assert "1000000000000001" in body["message"]
    assert calls == []


def test_check_more_slots_than_cache_refused(client):
    many = ",".join(["0"] * (NUM_SLOTS + 1))
    r = client.get("/cache/kvcache/check", params={"slot_mapping": many, "chunk_size": 2})
    assert_error(r, 400, "Invalid slot_mapping format")
    exact = ",".join(["0"] * NUM_SLOTS)
    assert _check(client, exact, 64)["num_chunks"] == 2


def test_check_chunk_size_required(client):
    r = client.get("/cache/kvcache/check?slot_mapping=0,1")
    assert_error(r, 400, "Missing parameters", "chunk_size parameter is required")


def test_check_slot_mapping_required(client):
    r = client.get("/cache/kvcache/check?chunk_size=2")
    assert_error(r, 400, "Missing parameters", "slot_mapping parameter is required")


@pytest.mark.parametrize("value", ["0", "-3"])
def test_check_chunk_size_positive(client, value):
    r = client.get(f"/cache/kvcache/check?slot_mapping=0,1&chunk_size={value}")
    assert_error(r, 400, "Invalid chunk_size", "chunk_size must be a positive integer")


def test_check_chunk_size_not_a_number(client):
    assert_error(
        client.get("/cache/kvcache/check?slot_mapping=0&chunk_size=abc"), 400, "Invalid chunk_size"
    )


def test_check_huge_chunk_size(client):
    body = _check(client, "0,1", chunk_size=10**30)
    assert body["num_chunks"] == 1
    assert body["chunk_size"] == 10**30


def test_check_layerwise_not_a_bool(client):
    r = client.get("/cache/kvcache/check?slot_mapping=0&chunk_size=1&layerwise=maybe")
    assert_error(r, 400, "Invalid layerwise")


def test_check_runs_off_the_event_loop(client, engine, monkeypatch):
    seen: list[bool] = []
    real = engine.kv_checksums

    def spy(*args, **kwargs):
        try:
            asyncio.get_running_loop()
            seen.append(True)
        except RuntimeError:
            seen.append(False)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "kv_checksums", spy)
    _check(client, "0,1", 1)
    assert seen == [False]


# --- kvcache/record_slot ---------------------------------------------------------------------


def test_record_slot_query_and_toggle(client, engine):
    r = client.post("/cache/kvcache/record_slot")
    assert r.json() == {"status": "success", "kvcache_check_log_enabled": False}
    r = client.post("/cache/kvcache/record_slot?enabled=true")
    assert r.json() == {"status": "success", "kvcache_check_log_enabled": True}
    assert engine.record_slot_enabled is True
    assert client.post("/cache/kvcache/record_slot").json()["kvcache_check_log_enabled"] is True
    r = client.post("/cache/kvcache/record_slot?enabled=FALSE")
    assert r.json()["kvcache_check_log_enabled"] is False
    assert engine.record_slot_enabled is False
    assert client.post("/cache/kvcache/record_slot?enabled=True").json()[
        "kvcache_check_log_enabled"
    ]


@pytest.mark.parametrize("value", ["yes", "1", "", "truee"])
def test_record_slot_invalid(client, value):
    r = client.post("/cache/kvcache/record_slot", params={"enabled": value})
    assert_error(r, 400, "Invalid parameter", "enabled must be 'true' or 'false'")


def test_record_slot_without_engine(no_engine_client):
    assert_error(
        no_engine_client.post("/cache/kvcache/record_slot"), 503, "LMCache API is unavailable"
    )


# --- kvcache/info ------------------------------------------------------------------------------


def test_kvcache_info(client, kv_caches):
    body = client.get("/cache/kvcache/info").json()
    assert body["status"] == "success"
    assert body["num_layers"] == len(kv_caches)
    assert list(body["layers"]) == list(kv_caches)
    for name, t in kv_caches.items():
        assert body["layers"][name] == {
            "shape": list(t.shape),
            "dtype": "torch.bfloat16",
            "device": "cpu",
        }


@pytest.mark.parametrize("layout", ["flash_attn", "flashinfer", "hnd", "mla", "vllm_cpu"])
def test_every_layout_round_trip(make_client, layout):
    from api_testlib import make_config
    from lmcache_native.cli import make_kv_caches
    from lmcache_native.engine import CacheEngine, EngineMetadata

    heads = 1 if layout == "mla" else 2
    caches = make_kv_caches(2, layout, 4, 16, heads, 8, torch.float16, seed=5)
    cfg = make_config()
    engine = CacheEngine(cfg, EngineMetadata(model_name=f"m-{layout}", use_mla=layout == "mla"))
    try:
        engine.register_kv_caches(caches, layout)
        c = make_client(engine, cfg)
        per_layer, _ = reference.kv_chunk_md5(list(caches.values()), list(range(32)), 16, layout)
        before = _check(c, "[0,31]", 16, layerwise=True)
        assert before["chunk_checksums"] == {n: per_layer[i] for i, n in enumerate(caches)}
        assert c.post("/cache/store?tokens_mock=0,32").json()["num_stored_tokens"] == 32
        for t in caches.values():
            t.view(torch.int16).fill_(7)
        assert c.post("/cache/retrieve?tokens_mock=0,32").json()["num_retrieved"] == 32
        assert _check(c, "[0,31]", 16, layerwise=True) == before
    finally:
        engine.close()
