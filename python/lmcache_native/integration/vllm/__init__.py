"""lmcache-native as a vLLM V1 KV connector.

``kv_connector_module_path`` = ``"lmcache_native.integration.vllm"`` and ``kv_connector`` =
``"LMCacheNativeConnector"`` select it; see :mod:`.connector`. The connector class is imported
on first access, so the vLLM-free helpers (:mod:`.layout`, :mod:`.lookup`, :mod:`.config`) can be
imported without vLLM installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmcache_native.integration.vllm.connector import LMCacheNativeConnector

__all__ = ["LMCacheNativeConnector"]


def __getattr__(name: str) -> Any:
    if name == "LMCacheNativeConnector":
        from lmcache_native.integration.vllm.connector import LMCacheNativeConnector

        return LMCacheNativeConnector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
