"""The engine configuration of a vLLM connector: LMCache's file/env settings plus vLLM's flag.

Order (later wins): defaults < YAML/JSON file (``LMCACHE_CONFIG_FILE``) < ``LMCACHE_*``
environment < ``kv_connector_extra_config`` keys prefixed ``lmcache.`` (for example
``{"lmcache.chunk_size": 64, "lmcache.local_disk": "/tmp/kv"}``). Keys unknown to this engine
are ignored with one warning, as in a config file, so an LMCache setup keeps working.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from lmcache_native.config import CONFIG_DEFINITIONS, LMCacheEngineConfig

logger = logging.getLogger("lmcache_native.integration.vllm")

EXTRA_CONFIG_PREFIX = "lmcache."


def overrides_from_extra_config(extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``lmcache.``-prefixed keys of ``kv_connector_extra_config``, prefix removed.

    Args:
        extra: vLLM's ``kv_transfer_config.kv_connector_extra_config`` (may be ``None``).

    Returns:
        Engine config overrides for the keys this engine knows.
    """
    out: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in (extra or {}).items():
        if not isinstance(key, str) or not key.startswith(EXTRA_CONFIG_PREFIX):
            continue
        name = key[len(EXTRA_CONFIG_PREFIX) :]
        if name in CONFIG_DEFINITIONS:
            out[name] = value
        else:
            unknown.append(key)
    if unknown:
        logger.warning("Ignoring unknown kv_connector_extra_config key(s): %s", ", ".join(unknown))
    return out


def load_config(extra: Mapping[str, Any] | None) -> LMCacheEngineConfig:
    """Loads the engine configuration for a connector.

    Args:
        extra: vLLM's ``kv_connector_extra_config``.

    Raises:
        lmcache_native.errors.ConfigError: a value is invalid (the message names key and value).
    """
    return LMCacheEngineConfig.load(overrides=overrides_from_extra_config(extra))
