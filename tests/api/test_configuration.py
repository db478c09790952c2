"""Configuration & Metadata: GET/POST /conf, GET /meta."""

from __future__ import annotations

from api_testlib import CHUNK_SIZE, assert_error, make_config
from lmcache_native.config import CONFIG_DEFINITIONS


def test_get_conf_returns_every_key(client, config):
    body = client.get("/conf").json()
    assert body == config.to_dict()
    assert set(body) == set(CONFIG_DEFINITIONS)
    assert body["chunk_size"] == CHUNK_SIZE


def test_get_conf_names_filter(client):
    r = client.get("/conf?names=min_retrieve_tokens,save_decode_cache")
    assert r.status_code == 200
    assert r.json() == {"min_retrieve_tokens": 0, "save_decode_cache": False}


def test_get_conf_names_whitespace_unknown_and_empty_items(client):
    body = client.get("/conf", params={"names": " chunk_size , no_such_key,,"}).json()
    assert body == {"chunk_size": CHUNK_SIZE}
    assert client.get("/conf?names=").json() == client.get("/conf").json()


def test_get_conf_masks_api_key(make_client, engine):
    cfg = make_config(internal_api_server_api_key="s3cret-key")
    c = make_client(engine, cfg)
    r = c.get("/conf", headers={"Authorization": "Bearer s3cret-key"})
    assert r.status_code == 200
    assert "s3cret-key" not in r.text
    assert r.json()["internal_api_server_api_key"] == "***"


def test_post_conf_updates_several_keys(client, config):
    r = client.post("/conf", json={"min_retrieve_tokens": 512, "save_decode_cache": True})
    assert r.status_code == 200
    assert r.json() == {"updated": {"min_retrieve_tokens": 512, "save_decode_cache": True}}
    assert config.get("min_retrieve_tokens") == 512
    assert config.get("save_decode_cache") is True
    assert client.get("/conf?names=min_retrieve_tokens").json() == {"min_retrieve_tokens": 512}


def test_post_conf_partial_failure(client, config):
    r = client.post(
        "/conf",
        json={
            "min_retrieve_tokens": 64,
            "unknown_key": 1,
            "chunk_size": 32,
            "save_unfull_chunk": "not-a-bool",
        },
    )
    assert r.status_code == 400
    body = r.json()
    assert body["updated"] == {"min_retrieve_tokens": 64}
    assert body["errors"]["unknown_key"] == "Unknown config"
    assert body["errors"]["chunk_size"] == "Config is not mutable at runtime"
    assert "bool" in body["errors"]["save_unfull_chunk"]
    assert set(body["errors"]) == {"unknown_key", "chunk_size", "save_unfull_chunk"}
    assert config.get("min_retrieve_tokens") == 64
    assert config.get("chunk_size") == CHUNK_SIZE


def test_post_conf_all_failed(client):
    r = client.post("/conf", json={"nope": 1})
    assert r.status_code == 400
    assert r.json() == {
        "error": "Config update failed",
        "message": "1 of 1 keys not updated: 'nope'",
        "updated": {},
        "errors": {"nope": "Unknown config"},
    }


def test_post_conf_empty_object(client):
    r = client.post("/conf", json={})
    assert r.status_code == 200
    assert r.json() == {"updated": {}}


def test_post_conf_invalid_json(client):
    r = client.post(
        "/conf", content=b'{"min_retrieve_tokens": ', headers={"content-type": "application/json"}
    )
    assert_error(r, 400, "Invalid JSON body")


def test_post_conf_not_an_object(client):
    r = client.post("/conf", json=[1, 2, 3])
    assert_error(r, 400, "Invalid request body")


def test_post_conf_never_echoes_secret(make_client, engine):
    cfg = make_config(internal_api_server_api_key="k")
    c = make_client(engine, cfg)
    r = c.post(
        "/conf",
        json={"internal_api_server_api_key": "new-secret-value"},
        headers={"Authorization": "Bearer k"},
    )
    assert r.status_code == 400
    assert "new-secret-value" not in r.text
    assert r.json()["errors"]["internal_api_server_api_key"] == "Config is not mutable at runtime"


def test_post_conf_missing_body(client):
    assert_error(
        client.post("/conf"), 400, "Invalid request body", "A JSON request body is required."
    )


def test_post_conf_body_schema_lists_mutable_keys(client):
    doc = client.get("/schema/openapi.json").json()
    body = doc["paths"]["/conf"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    mutable = {n for n, d in CONFIG_DEFINITIONS.items() if d.mutable}
    assert set(body["properties"]) == mutable
    assert body["additionalProperties"] is False
    json_types = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "object"}
    for name in mutable:
        d, prop = CONFIG_DEFINITIONS[name], body["properties"][name]
        expected = [json_types[d.type], "null"] if d.optional else json_types[d.type]
        assert prop["type"] == expected, name
        assert prop.get("minimum") == d.minimum, name
        assert prop.get("maximum") == d.maximum, name
        assert prop["description"] == d.description


def test_conf_works_without_engine(no_engine_client):
    assert no_engine_client.get("/conf?names=chunk_size").json() == {"chunk_size": CHUNK_SIZE}
    r = no_engine_client.post("/conf", json={"min_retrieve_tokens": 1})
    assert r.status_code == 200


def test_meta_returns_engine_metadata(client, engine):
    body = client.get("/meta").json()
    assert body == engine.metadata_dict()
    assert body["model_name"] == "test-model"
    assert body["worker_id"] == 0
    assert body["world_size"] == 1


def test_meta_names_filter(client):
    r = client.get("/meta?names=worker_id,model_name,not_an_attribute")
    assert r.json() == {"worker_id": 0, "model_name": "test-model"}


def test_meta_without_engine_is_503(no_engine_client):
    body = assert_error(no_engine_client.get("/meta"), 503, "LMCache API is unavailable")
    assert body["message"] == "LMCache engine not configured."
