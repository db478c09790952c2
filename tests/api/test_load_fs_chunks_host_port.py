"""POST /cache/load-fs-chunks with LMCache's ``fs://host:port/path`` form of remote_url."""

from __future__ import annotations

import torch
from api_testlib import make_caches, make_config, make_engine


def test_load_fs_chunks_reads_the_path_of_a_host_port_url(client, tmp_path):
    store = tmp_path / "fs-store"
    # The writer names the store in the host:port form too; both read the same directory.
    writer = make_engine(make_config(remote_url=f"fs://localhost:0{store}"), make_caches())
    try:
        assert writer.store(list(range(64)), torch.arange(64)).num_stored_tokens == 64
        assert writer.flush(30)
    finally:
        writer.close()
    assert len(list(store.iterdir())) == 4
    config_file = tmp_path / "lmcache.yaml"
    config_file.write_text(f"chunk_size: 16\nremote_url: fs://127.0.0.1:6379{store}\n")

    assert client.post("/cache/retrieve?tokens_mock=0,64").json()["num_retrieved"] == 0
    r = client.post("/cache/load-fs-chunks", json={"config_path": str(config_file)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success"
    assert (body["loaded_chunks"], body["total_files"], body["failed_keys"]) == (4, 4, [])
    assert client.post("/cache/retrieve?tokens_mock=0,64").json()["num_retrieved"] == 64


def test_load_fs_chunks_host_port_url_without_a_directory(client, tmp_path):
    config_file = tmp_path / "lmcache.yaml"
    config_file.write_text("chunk_size: 16\nremote_url: fs://127.0.0.1:6379/\n")
    r = client.post("/cache/load-fs-chunks", json={"config_path": str(config_file)})
    assert r.status_code == 400, r.text
    assert set(r.json()) >= {"error", "message"}
    assert "remote_url" in r.json()["message"]
