"""POST /cache/load-fs-chunks: loads verified fs:// chunk files; never echoes file contents."""

from __future__ import annotations

import os

import pytest
from api_testlib import assert_error, make_caches, make_config, make_engine

TITLE = "Failed to load chunks from FSConnector"


@pytest.fixture
def fs_store(tmp_path):
    """An fs:// directory holding the 4 chunks of tokens 0..63, written by another engine."""
    store = tmp_path / "fs-store"
    store.mkdir()
    writer = make_engine(make_config(remote_url=f"fs://{store}"), make_caches())
    try:
        assert writer.store(list(range(64)), _slots(64)).num_stored_tokens == 64
        assert writer.flush(30)
    finally:
        writer.close()
    config_file = tmp_path / "lmcache.yaml"
    config_file.write_text(f"chunk_size: 16\nremote_url: fs://{store}\n")
    return store, config_file


def _slots(n):
    import torch

    return torch.arange(n, dtype=torch.int64)


def test_load_fs_chunks_success(client, fs_store):
    _store, config_file = fs_store
    assert client.post("/cache/retrieve?tokens_mock=0,64").json()["num_retrieved"] == 0
    r = client.post("/cache/load-fs-chunks", json={"config_path": str(config_file)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success"
    assert body["loaded_chunks"] == 4
    assert body["total_files"] == 4
    assert body["failed_keys"] == []
    assert body["config_path"] == str(config_file)
    assert client.post("/cache/retrieve?tokens_mock=0,64").json()["num_retrieved"] == 64


def test_load_fs_chunks_max_chunks(client, fs_store):
    _, config_file = fs_store
    r = client.post(
        "/cache/load-fs-chunks", json={"config_path": str(config_file), "max_chunks": 1}
    )
    assert r.json()["loaded_chunks"] == 1
    assert r.json()["total_files"] == 4


def test_load_fs_chunks_reports_corrupt_files(client, fs_store):
    store, config_file = fs_store
    victim = sorted(p for p in store.iterdir() if p.is_file())[0]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    body = client.post(
        "/cache/load-fs-chunks", json={"config_path": str(config_file), "max_failed_keys": 5}
    ).json()
    assert body["loaded_chunks"] == 3
    assert body["failed_count"] == 1
    assert len(body["failed_keys"]) == 1


def test_missing_file(client, tmp_path):
    path = str(tmp_path / "absent.yaml")
    r = client.post("/cache/load-fs-chunks", json={"config_path": path, "max_chunks": 100})
    body = assert_error(r, 400, TITLE, "Configuration file not found")
    assert body["config_path"] == path


@pytest.mark.parametrize(
    "kind", ["directory", "binary", "no_remote", "not_mapping", "symlink_loop"]
)
def test_bad_config_files_never_echo_contents(client, tmp_path, kind):
    secret = "TOP-SECRET-CONTENT-42"
    path = tmp_path / "cfg.yaml"
    if kind == "directory":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(b"\xff\xfe\x00" + secret.encode())
    elif kind == "no_remote":
        path.write_text(f"chunk_size: 16\nextra_config: {{note: {secret}}}\n")
    elif kind == "not_mapping":
        path.write_text(f"- {secret}\n")
    else:
        os.symlink(tmp_path / "loop_b", tmp_path / "loop_a")
        os.symlink(tmp_path / "loop_a", tmp_path / "loop_b")
        path = tmp_path / "loop_a"
    r = client.post("/cache/load-fs-chunks", json={"config_path": str(path)})
    body = assert_error(r, 400, TITLE)
    assert body["config_path"] == str(path)
    assert secret not in r.text


def test_device_file_refused(client):
    r = client.post("/cache/load-fs-chunks", json={"config_path": "/dev/zero"})
    assert_error(r, 400, TITLE, "Configuration file is not a regular file")


@pytest.mark.parametrize(
    "body",
    [
        {"config_path": "/x", "max_chunks": -1},
        {"config_path": "/x", "max_failed_keys": -1},
        {"config_path": ""},
    ],
)
def test_invalid_limits_and_empty_path(client, body):
    assert_error(client.post("/cache/load-fs-chunks", json=body), 400, "Invalid request body")


def test_missing_body(client):
    r = client.post("/cache/load-fs-chunks")
    assert_error(r, 400, "Invalid request body", "A JSON request body is required.")


@pytest.mark.parametrize(
    "body", [{}, {"config_path": 3}, {"config_path": "/x", "max_chunks": "many"}, [1]]
)
def test_invalid_request_body(client, body):
    assert_error(client.post("/cache/load-fs-chunks", json=body), 400, "Invalid request body")


def test_without_engine(no_engine_client):
    r = no_engine_client.post("/cache/load-fs-chunks", json={"config_path": "/x"})
    assert_error(r, 503, "LMCache API is unavailable")
