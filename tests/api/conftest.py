"""Fixtures: a real CacheEngine over a small seeded CPU paged KV cache, and test clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from api_testlib import make_caches, make_config, make_engine
from litestar import Litestar
from litestar.testing import TestClient
from lmcache_native.api import create_app
from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine import CacheEngine


@pytest.fixture
def config() -> LMCacheEngineConfig:
    return make_config()


@pytest.fixture
def kv_caches() -> dict[str, torch.Tensor]:
    """The per-layer tensors registered with ``engine`` (layer order)."""
    return make_caches()


@pytest.fixture
def engine(
    config: LMCacheEngineConfig, kv_caches: dict[str, torch.Tensor]
) -> Iterator[CacheEngine]:
    eng = make_engine(config, kv_caches)
    try:
        yield eng
    finally:
        eng.close()


@pytest.fixture
def client(engine: CacheEngine, config: LMCacheEngineConfig) -> Iterator[TestClient[Litestar]]:
    with TestClient(create_app(engine, config)) as c:
        yield c


@pytest.fixture
def make_client() -> Iterator[Callable[..., TestClient[Litestar]]]:
    """Builds extra clients (closed at teardown): ``make_client(engine, config, **kwargs)``."""
    opened: list[TestClient[Litestar]] = []

    def build(
        engine: CacheEngine | None, config: LMCacheEngineConfig | None = None, **kwargs: Any
    ) -> TestClient[Litestar]:
        c = TestClient(create_app(engine, config or make_config(), **kwargs))
        c.__enter__()
        opened.append(c)
        return c

    yield build
    for c in opened:
        c.__exit__(None, None, None)


@pytest.fixture
def no_engine_client(
    make_client: Callable[..., TestClient[Litestar]],
) -> TestClient[Litestar]:
    return make_client(None)


@pytest.fixture
def unregistered_client(
    make_client: Callable[..., TestClient[Litestar]], config: LMCacheEngineConfig
) -> Iterator[TestClient[Litestar]]:
    eng = make_engine(config)
    try:
        yield make_client(eng, config)
    finally:
        eng.close()
