"""lmcache_native.api.server: serve on a background thread, stop, port released."""

from __future__ import annotations

import socket

import httpx
import pytest
from api_testlib import port_is_free
from lmcache_native.api import server


def test_start_serve_stop(engine, config):
    handle = server.start(engine, config, "127.0.0.1", 0)
    try:
        assert handle.port > 0
        assert handle.running
        assert handle.url == f"http://127.0.0.1:{handle.port}"
        assert not port_is_free(handle.port)
        r = httpx.get(f"{handle.url}/health", timeout=10)
        assert r.json() == {"status": "ok", "engine": True, "kv_cache_registered": True}
        r = httpx.post(f"{handle.url}/cache/store?tokens_mock=0,32", timeout=30)
        assert r.json()["num_stored_tokens"] == 32
    finally:
        handle.stop()
    assert not handle.running
    assert port_is_free(handle.port)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{handle.url}/health", timeout=2)


def test_port_in_use_raises(engine, config):
    first = server.start(engine, config, "127.0.0.1", 0)
    try:
        with pytest.raises(OSError, match=r"[Aa]ddress already in use"):
            server.start(engine, config, "127.0.0.1", first.port)
    finally:
        first.stop()


def test_restart_on_same_port(engine, config):
    first = server.start(engine, config, "127.0.0.1", 0)
    port = first.port
    httpx.get(f"{first.url}/health", timeout=10)
    first.stop()
    second = server.start(engine, config, "127.0.0.1", port)
    try:
        assert httpx.get(f"{second.url}/lmc_version", timeout=10).status_code == 200
    finally:
        second.stop()


def test_over_long_query_gets_json_414(engine, config):
    handle = server.start(engine, config, "127.0.0.1", 0, max_query_bytes=1024)
    try:
        query = "slot_mapping=" + "0," * 1000 + "0&chunk_size=1"
        with socket.create_connection(("127.0.0.1", handle.port), timeout=10) as s:
            head = f"GET /cache/kvcache/check?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            s.sendall((head + "Connection: close\r\n\r\n").encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 414")
        assert b'"error":"Query string too long"' in body
    finally:
        handle.stop()


def test_no_engine_server(config):
    handle = server.start(None, config, "127.0.0.1", 0)
    try:
        r = httpx.get(f"{handle.url}/cache/kvcache/info", timeout=10)
        assert r.status_code == 503
        assert r.json()["error"] == "LMCache API is unavailable"
    finally:
        handle.stop()
