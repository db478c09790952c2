"""Every error is {"error", "message"} with the right status: 404, 405, bad JSON, limits, 500."""

from __future__ import annotations

import pytest
from api_testlib import assert_error
from lmcache_native.errors import InvalidSlotsError, LMCacheError, NoKVCacheError


def test_unknown_path_404(client):
    body = assert_error(client.get("/no/such/endpoint"), 404, "Not found")
    assert "/no/such/endpoint" in body["message"]


def test_options_lists_every_method(client):
    r = client.options("/conf")
    assert r.status_code == 204
    assert r.headers["allow"] == "GET, OPTIONS, POST"
    assert client.options("/cache/store").headers["allow"] == "OPTIONS, POST"


def test_wrong_method_405(client):
    r = client.post("/freeze/status")
    body = assert_error(r, 405, "Method not allowed")
    assert "GET" in r.headers["allow"]
    assert "POST" in body["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("get", "/cache/store"), ("delete", "/conf"), ("get", "/freeze/enable"), ("put", "/metrics")],
)
def test_more_wrong_methods(client, method, path):
    assert_error(getattr(client, method)(path), 405, "Method not allowed")


@pytest.mark.parametrize("body", [b"{", b"not json", b'{"a": }', b"\xff\xfe"])
def test_bad_json_body(client, body):
    r = client.post("/conf", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"] in ("Invalid JSON body", "Invalid request body")
    assert isinstance(r.json()["message"], str)


def test_bad_json_body_load_fs_chunks(client):
    r = client.post(
        "/cache/load-fs-chunks", content=b"{oops", headers={"content-type": "application/json"}
    )
    assert_error(r, 400, "Invalid JSON body")


def test_wrong_body_types(client):
    r = client.post("/cache/load-fs-chunks", json={"config_path": 5})
    assert_error(r, 400, "Invalid request body")
    r = client.post("/cache/load-fs-chunks", json={"config_path": "/x", "surprise": 1})
    assert_error(r, 400, "Invalid request body")


def test_body_too_large(make_client, engine, config):
    c = make_client(engine, config, max_body_bytes=1024)
    r = c.post(
        "/conf",
        content=b'{"a": "' + b"x" * 4096 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert_error(r, 413, "Request too large")


def test_default_body_limit(client):
    r = client.post("/conf", content=b" " * (2 << 20), headers={"content-type": "application/json"})
    assert_error(r, 413, "Request too large")


def test_query_too_long(make_client, engine, config):
    c = make_client(engine, config, max_query_bytes=64)
    r = c.get("/cache/kvcache/check", params={"slot_mapping": "0," * 100, "chunk_size": 1})
    assert_error(r, 414, "Query string too long")
    assert c.get("/cache/kvcache/check?slot_mapping=0&chunk_size=1").status_code == 200


@pytest.mark.parametrize(
    "query", ["chunk_size=%FF&slot_mapping=0", "slot_mapping=%ZZ&chunk_size=1", "&&&=&"]
)
def test_malformed_query_strings(client, query):
    r = client.get(f"/cache/kvcache/check?{query}")
    assert r.status_code == 400
    body = r.json()
    assert set(body) >= {"error", "message"}


def test_unexpected_exception_is_500_without_details(client, engine, monkeypatch):
    def boom(_enabled: bool) -> None:
        raise RuntimeError("secret detail /etc/shadow")

    monkeypatch.setattr(engine, "freeze", boom)
    body = assert_error(client.put("/freeze/enable"), 500, "Failed to enable freeze mode")
    assert "secret" not in body["message"]
    assert "/etc/shadow" not in body["message"]
    assert "RuntimeError" in body["message"]


def test_unmapped_domain_error_is_500_with_message(client, engine, monkeypatch):
    def fail(*_args, **_kwargs):
        raise LMCacheError("disk tier is not writable")

    monkeypatch.setattr(engine, "store", fail)
    body = assert_error(client.post("/cache/store?tokens_mock=0,16"), 500, "Failed to store cache")
    assert body["message"] == "disk tier is not writable"


def test_engine_invalid_slots_error_is_400(client, engine, monkeypatch):
    def fail(*_args, **_kwargs):
        raise InvalidSlotsError("slot 5 is outside the cache")

    monkeypatch.setattr(engine, "kv_checksums", fail)
    assert_error(
        client.get("/cache/kvcache/check?slot_mapping=5&chunk_size=1"), 400, "Invalid slot indices"
    )


def test_engine_no_kv_cache_error_is_503(client, engine, monkeypatch):
    def fail(*_args, **_kwargs):
        raise NoKVCacheError()

    monkeypatch.setattr(engine, "retrieve", fail)
    assert_error(client.post("/cache/retrieve?tokens_mock=0,16"), 503, "LMCache API is unavailable")


def test_every_error_shape_is_json_object_with_two_strings(client):
    responses = [
        client.get("/nope"),
        client.patch("/conf"),
        client.post("/cache/store"),
        client.get("/cache/kvcache/check"),
        client.put("/bypass/add?backend_name=X"),
        client.post("/conf", content=b"[", headers={"content-type": "application/json"}),
    ]
    for r in responses:
        assert 400 <= r.status_code < 500
        body = r.json()
        assert isinstance(body.get("error"), str), body
        assert isinstance(body.get("message"), str), body
