"""Engines for the tests: a configuration environment of defaults, registered engines."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from lmcache_native.config import CONFIG_DEFINITIONS, CONFIG_FILE_ENV, LMCacheEngineConfig
from lmcache_native.engine import CacheEngine, EngineMetadata

MakeEngine = Callable[..., CacheEngine]


def clear_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unsets every ``LMCACHE_*`` variable a config key (or the config file) is read from."""
    for d in CONFIG_DEFINITIONS.values():
        monkeypatch.delenv(d.env_var, raising=False)
    monkeypatch.delenv(CONFIG_FILE_ENV, raising=False)


@contextlib.contextmanager
def engine_factory(
    chunk_size: int,
    layout: str,
    model: str,
    default_caches: Callable[[], dict[str, torch.Tensor]] | None = None,
) -> Iterator[MakeEngine]:
    """``make(caches=None, model=model, **config)`` -> a registered engine; all closed on exit.

    The engines have ``chunk_size``, a 0.01 GB CPU tier and a remote retry interval of 0.2 s
    unless ``config`` says otherwise.
    """
    engines: list[CacheEngine] = []

    def make(
        caches: dict[str, torch.Tensor] | None = None, model: str = model, **cfg: Any
    ) -> CacheEngine:
        if caches is None:
            assert default_caches is not None, "caches are required"
            caches = default_caches()
        values: dict[str, Any] = {"chunk_size": chunk_size, "max_local_cpu_size": 0.01}
        values.update(cfg)
        extra = dict(values.pop("extra_config", None) or {})
        extra.setdefault("remote_retry_interval_secs", 0.2)
        values["extra_config"] = extra
        config = LMCacheEngineConfig.from_defaults(**values)
        dtype = next(iter(caches.values())).dtype
        engine = CacheEngine(config, EngineMetadata(model_name=model, kv_dtype=dtype))
        engine.register_kv_caches(caches, layout)
        engines.append(engine)
        return engine

    try:
        yield make
    finally:
        for e in engines:
            e.close()
