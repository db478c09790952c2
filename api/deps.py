"""Dependencies the controllers receive: the engine (or a 503), the config, host extras.

Nothing here is module-global: ``dependencies(...)`` builds fresh providers for each app.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

from litestar.di import NamedDependency, Provide
from lmcache_native.api.errors import NO_ENGINE_MESSAGE, NO_KV_CACHE_MESSAGE, UNAVAILABLE, ApiError
from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine import CacheEngine

InferenceInfoProvider = Callable[[], dict[str, Any]]

# Handler parameter types: the parameter's name picks the provider (see ``dependencies``).
EngineDep = NamedDependency[CacheEngine]
MaybeEngineDep = NamedDependency[Optional[CacheEngine]]  # noqa: UP045 - evaluated at runtime
ConfigDep = NamedDependency[LMCacheEngineConfig]
HostInfoDep = NamedDependency[Optional[InferenceInfoProvider]]  # noqa: UP045


def dependencies(
    engine: CacheEngine | None,
    config: LMCacheEngineConfig,
    inference_info: InferenceInfoProvider | None,
) -> dict[str, Provide]:
    """Providers for ``Litestar(dependencies=...)``.

    Handlers declare what they need by parameter name:

    - ``engine``: the engine; 503 when none is attached.
    - ``kv_engine``: the engine with a registered KV cache; 503 otherwise.
    - ``maybe_engine``: the engine or ``None`` (never an error).
    - ``config``: the engine configuration.
    - ``host_info``: the host's inference details provider, or ``None``.
    """

    def provide_engine() -> CacheEngine:
        if engine is None:
            raise ApiError(503, UNAVAILABLE, NO_ENGINE_MESSAGE)
        return engine

    def provide_kv_engine() -> CacheEngine:
        eng = provide_engine()
        if not eng.has_kv_caches:
            raise ApiError(503, UNAVAILABLE, NO_KV_CACHE_MESSAGE)
        return eng

    def provide_maybe_engine() -> CacheEngine | None:
        return engine

    def provide_config() -> LMCacheEngineConfig:
        return config

    def provide_inference_info() -> InferenceInfoProvider | None:
        return inference_info

    return {
        "engine": Provide(provide_engine, sync_to_thread=False),
        "kv_engine": Provide(provide_kv_engine, sync_to_thread=False),
        "maybe_engine": Provide(provide_maybe_engine, sync_to_thread=False),
        "config": Provide(provide_config, sync_to_thread=False),
        "host_info": Provide(provide_inference_info, sync_to_thread=False),
    }
