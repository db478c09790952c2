"""Shared helpers of the API tests: the small test cache, a real engine, the error-shape check."""

from __future__ import annotations

import socket
from typing import Any

import torch
from lmcache_native.cli import make_kv_caches
from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine import CacheEngine, EngineMetadata

NUM_LAYERS = 2
NUM_BLOCKS = 8
BLOCK_SIZE = 16
NUM_HEADS = 2
HEAD_SIZE = 8
NUM_SLOTS = NUM_BLOCKS * BLOCK_SIZE  # 128
CHUNK_SIZE = 16
LAYOUT = "flash_attn"
DTYPE = torch.bfloat16


#: Every endpoint of inference_apis.rst, then /metrics and /health, in the spec's order.
SPEC_ENDPOINTS = [
    ("get", "/lmc_version"),
    ("get", "/commit_id"),
    ("get", "/version"),
    ("get", "/inference_info"),
    ("get", "/inference_version"),
    ("get", "/conf"),
    ("post", "/conf"),
    ("get", "/meta"),
    ("delete", "/cache/clear"),
    ("post", "/cache/store"),
    ("post", "/cache/retrieve"),
    ("get", "/cache/kvcache/check"),
    ("post", "/cache/kvcache/record_slot"),
    ("get", "/cache/kvcache/info"),
    ("post", "/cache/load-fs-chunks"),
    ("put", "/freeze/enable"),
    ("put", "/freeze/disable"),
    ("get", "/freeze/status"),
    ("put", "/hot_cache/enable"),
    ("put", "/hot_cache/disable"),
    ("get", "/hot_cache/status"),
    ("post", "/chunk_statistics/start"),
    ("post", "/chunk_statistics/stop"),
    ("post", "/chunk_statistics/reset"),
    ("get", "/chunk_statistics/status"),
    ("get", "/bypass/list"),
    ("put", "/bypass/add"),
    ("put", "/bypass/remove"),
    ("get", "/metrics"),
    ("get", "/health"),
]

#: A valid query for the endpoints that need one.
EXAMPLE_QUERIES = {
    "/cache/store": "tokens_mock=0,16",
    "/cache/retrieve": "tokens_mock=0,16",
    "/cache/kvcache/check": "slot_mapping=0&chunk_size=1",
    "/bypass/add": "backend_name=LocalCPUBackend",
    "/bypass/remove": "backend_name=LocalCPUBackend",
}


def with_example_query(path: str) -> str:
    """``path`` plus its :data:`EXAMPLE_QUERIES` entry, if it has one."""
    query = EXAMPLE_QUERIES.get(path)
    return f"{path}?{query}" if query else path


def spec_calls(*prefixes: str) -> list[tuple[str, str]]:
    """``(method, path with example query)`` of the spec endpoints (those under ``prefixes``)."""
    return [
        (method, with_example_query(path))
        for method, path in SPEC_ENDPOINTS
        if not prefixes or path.startswith(prefixes)
    ]


def port_is_free(port: int) -> bool:
    """Whether ``port`` on 127.0.0.1 can be bound now (so nothing listens on it)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def make_config(**overrides: Any) -> LMCacheEngineConfig:
    """Small test configuration: 16-token chunks, statistics on, a small CPU tier."""
    values: dict[str, Any] = {
        "chunk_size": CHUNK_SIZE,
        "enable_chunk_statistics": True,
        "max_local_cpu_size": 0.01,
    }
    values.update(overrides)
    return LMCacheEngineConfig.from_defaults(**values)


def make_caches(seed: int = 1234) -> dict[str, torch.Tensor]:
    """Seeded random bf16 paged caches, flash-attn layout, ``layer_0..``."""
    return make_kv_caches(
        NUM_LAYERS, LAYOUT, NUM_BLOCKS, BLOCK_SIZE, NUM_HEADS, HEAD_SIZE, DTYPE, seed=seed
    )


def make_engine(
    config: LMCacheEngineConfig, caches: dict[str, torch.Tensor] | None = None
) -> CacheEngine:
    """A real engine; ``caches`` (if given) are registered as its paged KV cache."""
    metadata = EngineMetadata(
        model_name="test-model",
        world_size=1,
        worker_id=0,
        kv_dtype=DTYPE,
    )
    engine = CacheEngine(config, metadata)
    if caches is not None:
        engine.register_kv_caches(caches, LAYOUT)
    return engine


def assert_error(response: Any, status: int, error: str, message: str | None = None) -> dict:
    """Asserts the ``{"error", "message"}`` shape, the status and the title (and message)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == error, body
    assert isinstance(body["message"], str), body
    assert body["message"], body
    if message is not None:
        assert body["message"] == message, body
    assert "Traceback" not in response.text
    return body
