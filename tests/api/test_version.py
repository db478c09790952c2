"""Version & Info endpoints."""

from __future__ import annotations

import importlib.metadata

import lmcache_native
import pytest
from api_testlib import assert_error


def test_lmc_version_is_plain_text(client):
    r = client.get("/lmc_version")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text == lmcache_native.VERSION


def test_commit_id_is_plain_text(client):
    r = client.get("/commit_id")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert r.text == lmcache_native.COMMIT_ID
    assert r.text  # "NA" when unknown, never empty


def test_version_combines_version_and_commit(client):
    r = client.get("/version")
    assert r.status_code == 200
    assert r.text == f"{lmcache_native.VERSION}-{lmcache_native.COMMIT_ID}"


def test_inference_version_null_when_vllm_absent(client, monkeypatch):
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    r = client.get("/inference_version")
    assert r.status_code == 200
    assert r.json() == {"vllm_version": None}


def test_inference_version_reports_installed_vllm(client, monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata, "version", lambda name: "0.8.0" if name == "vllm" else real(name)
    )
    assert client.get("/inference_version").json() == {"vllm_version": "0.8.0"}


def test_inference_version_matches_this_environment(client):
    try:
        expected = importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        expected = None
    assert client.get("/inference_version").json() == {"vllm_version": expected}


def test_inference_info_with_engine(client, engine):
    body = client.get("/inference_info").json()
    assert body["lmcache_native_version"] == lmcache_native.VERSION
    assert body["commit_id"] == lmcache_native.COMMIT_ID
    assert body["engine"] == client.get("/meta").json()
    assert body["kv_cache"] == engine.kv_info()
    assert body["inference"] is None
    assert "vllm_version" in body


def test_inference_info_format_parameter_accepted(client):
    assert client.get("/inference_info?format=json").status_code == 200


def test_inference_info_without_engine(no_engine_client):
    r = no_engine_client.get("/inference_info")
    assert r.status_code == 200
    body = r.json()
    assert body["engine"] is None
    assert body["kv_cache"] is None


def test_inference_info_without_kv_cache(unregistered_client):
    body = unregistered_client.get("/inference_info").json()
    assert body["engine"] is not None
    assert body["kv_cache"] is None


def test_inference_info_host_details(make_client, engine, config):
    c = make_client(engine, config, inference_info=lambda: {"model": "m", "tp": 2})
    assert c.get("/inference_info").json()["inference"] == {"model": "m", "tp": 2}


def test_inference_info_failure_is_500_with_spec_title(make_client, engine, config):
    def broken() -> dict:
        raise RuntimeError("vllm config unreadable at /secret/path")

    c = make_client(engine, config, inference_info=broken)
    body = assert_error(c.get("/inference_info"), 500, "Failed to get inference info")
    assert "/secret/path" not in body["message"]


@pytest.mark.parametrize("path", ["/lmc_version", "/commit_id", "/version", "/inference_version"])
def test_version_endpoints_work_without_engine(no_engine_client, path):
    assert no_engine_client.get(path).status_code == 200
