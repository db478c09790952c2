"""Fixtures of the reliability tests: a clean environment and engines over real tiers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from lmcache_native.config import CONFIG_DEFINITIONS, CONFIG_FILE_ENV, LMCacheEngineConfig
from lmcache_native.engine import CacheEngine, EngineMetadata
from reliability_lib import CHUNK, LAYOUT, MODEL


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for d in CONFIG_DEFINITIONS.values():
        monkeypatch.delenv(d.env_var, raising=False)
    monkeypatch.delenv(CONFIG_FILE_ENV, raising=False)


MakeEngine = Callable[..., CacheEngine]


@pytest.fixture
def make_engine() -> Iterator[MakeEngine]:
    """``make_engine(caches, model=MODEL, dtype=bf16, **config)`` -> a registered engine."""
    engines: list[CacheEngine] = []

    def make(
        caches: dict[str, torch.Tensor],
        model: str = MODEL,
        **cfg: Any,
    ) -> CacheEngine:
        values: dict[str, Any] = {"chunk_size": CHUNK, "max_local_cpu_size": 0.01}
        values.update(cfg)
        extra = dict(values.pop("extra_config", None) or {})
        extra.setdefault("remote_retry_interval_secs", 0.2)
        values["extra_config"] = extra
        config = LMCacheEngineConfig.from_defaults(**values)
        dtype = next(iter(caches.values())).dtype
        engine = CacheEngine(config, EngineMetadata(model_name=model, kv_dtype=dtype))
        engine.register_kv_caches(caches, LAYOUT)
        engines.append(engine)
        return engine

    yield make
    for e in engines:
        e.close()
