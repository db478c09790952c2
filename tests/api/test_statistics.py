"""Chunk statistics endpoints."""

from __future__ import annotations

import pytest
from api_testlib import assert_error, make_config, make_engine

_FIELDS = {
    "is_collecting",
    "total_chunks",
    "unique_chunks",
    "duplicate_chunks",
    "reuse_rate",
    "requests",
    "timestamp",
    "auto_exit_enabled",
    "auto_exit_timeout_hours",
    "auto_exit_target_unique_chunks",
}


def test_statistics_cycle(client):
    body = client.get("/chunk_statistics/status").json()
    assert set(body) >= _FIELDS
    assert body["is_collecting"] is False

    assert client.post("/chunk_statistics/start").json() == {
        "status": "success",
        "message": "Started",
    }
    assert client.get("/chunk_statistics/status").json()["is_collecting"] is True

    client.post("/cache/store?tokens_mock=0,32")
    client.post("/cache/retrieve?tokens_mock=0,32")
    client.post("/cache/retrieve?tokens_mock=0,32")
    moved = client.get("/chunk_statistics/status").json()
    assert moved["total_chunks"] > 0
    assert 0 < moved["unique_chunks"] <= moved["total_chunks"]
    assert moved["duplicate_chunks"] == moved["total_chunks"] - moved["unique_chunks"]

    assert client.post("/chunk_statistics/stop").json() == {
        "status": "success",
        "message": "Stopped",
    }
    stopped = client.get("/chunk_statistics/status").json()
    assert stopped["is_collecting"] is False
    assert stopped["total_chunks"] == moved["total_chunks"]
    client.post("/cache/retrieve?tokens_mock=0,32")
    assert client.get("/chunk_statistics/status").json()["total_chunks"] == moved["total_chunks"]

    assert client.post("/chunk_statistics/reset").json() == {
        "status": "success",
        "message": "Reset",
    }
    reset = client.get("/chunk_statistics/status").json()
    assert reset["total_chunks"] == 0
    assert reset["unique_chunks"] == 0


def test_statistics_auto_exit_fields(make_client):
    cfg = make_config(chunk_statistics_auto_exit_timeout_hours=24.0)
    eng = make_engine(cfg)
    try:
        body = make_client(eng, cfg).get("/chunk_statistics/status").json()
        assert body["auto_exit_enabled"] is True
        assert body["auto_exit_timeout_hours"] == 24.0
    finally:
        eng.close()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/chunk_statistics/start"),
        ("post", "/chunk_statistics/stop"),
        ("post", "/chunk_statistics/reset"),
        ("get", "/chunk_statistics/status"),
    ],
)
def test_statistics_not_available(make_client, method, path):
    cfg = make_config(enable_chunk_statistics=False)
    eng = make_engine(cfg)
    try:
        c = make_client(eng, cfg)
        assert_error(
            getattr(c, method)(path), 400, "Not available", "Client does not support statistics."
        )
    finally:
        eng.close()


@pytest.mark.parametrize(
    ("method", "path"),
    [("post", "/chunk_statistics/start"), ("get", "/chunk_statistics/status")],
)
def test_statistics_without_engine(no_engine_client, method, path):
    assert_error(getattr(no_engine_client, method)(path), 503, "LMCache API is unavailable")
