"""Integrations of lmcache-native with serving engines.

Each integration lives in its own subpackage and imports its engine only when that subpackage
is imported (``lmcache_native.integration.vllm`` imports vLLM; this package does not).
"""

from __future__ import annotations
