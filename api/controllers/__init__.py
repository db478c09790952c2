"""One controller per endpoint group of ``inference_apis.rst``, plus observability."""

from __future__ import annotations

from lmcache_native.api.controllers.backends import BackendsController
from lmcache_native.api.controllers.bypass import BypassController
from lmcache_native.api.controllers.cache import CacheController
from lmcache_native.api.controllers.chunk_statistics import ChunkStatisticsController
from lmcache_native.api.controllers.configuration import ConfigurationController
from lmcache_native.api.controllers.dashboard import DashboardController
from lmcache_native.api.controllers.lmcache_common import LMCacheCommonController
from lmcache_native.api.controllers.observability import ObservabilityController
from lmcache_native.api.controllers.switches import FreezeController, HotCacheController
from lmcache_native.api.controllers.version import VersionController

CONTROLLERS = (
    VersionController,
    ConfigurationController,
    CacheController,
    FreezeController,
    HotCacheController,
    ChunkStatisticsController,
    BypassController,
    ObservabilityController,
    BackendsController,
    LMCacheCommonController,
    DashboardController,
)

__all__ = [
    "CONTROLLERS",
    "BackendsController",
    "BypassController",
    "CacheController",
    "ChunkStatisticsController",
    "ConfigurationController",
    "DashboardController",
    "FreezeController",
    "HotCacheController",
    "LMCacheCommonController",
    "ObservabilityController",
    "VersionController",
]
