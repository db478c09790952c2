"""lmcache-native: a KV-cache engine for vLLM with hand-written CPU/CUDA kernels.

Importing this package never imports vLLM or Litestar.
"""

from __future__ import annotations

from lmcache_native._native import COMMIT_ID, HAS_CUDA, VERSION

__version__ = VERSION

__all__ = ["COMMIT_ID", "HAS_CUDA", "VERSION", "__version__"]
