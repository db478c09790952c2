"""vLLM general plugin: registers ``LMCacheNativeConnector`` with vLLM's connector factory.

Declared as the ``vllm.general_plugins`` entry point ``lmcache_native``, so with the package
installed ``--kv-transfer-config '{"kv_connector": "LMCacheNativeConnector", "kv_role":
"kv_both"}'`` works without ``kv_connector_module_path``. vLLM may call a plugin several times
and in every process; registering twice is a no-op. This module imports nothing heavy.
"""

from __future__ import annotations

CONNECTOR_NAME = "LMCacheNativeConnector"
MODULE_PATH = "lmcache_native.integration.vllm"


def register() -> None:
    """Registers the connector name (lazily: the module is imported when vLLM uses it)."""
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory

    if CONNECTOR_NAME in KVConnectorFactory._registry:
        return
    KVConnectorFactory.register_connector(CONNECTOR_NAME, MODULE_PATH, CONNECTOR_NAME)
