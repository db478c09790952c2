"""Beyond the spec: ``GET /metrics`` (Prometheus text format) and ``GET /health``."""

from __future__ import annotations

from litestar import Controller, Response, get
from lmcache_native.api.deps import EngineDep, MaybeEngineDep
from lmcache_native.api.errors import error_responses
from lmcache_native.api.schemas import Health
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


class ObservabilityController(Controller):
    """Metrics of the engine and a liveness probe."""

    tags = ["observability"]

    @get(
        "/metrics",
        summary="Prometheus Metrics",
        sync_to_thread=True,
        media_type=CONTENT_TYPE_LATEST,
        responses=error_responses(503),
    )
    def metrics(self, engine: EngineDep) -> Response[bytes]:
        """Engine metrics: hits, misses, stored/retrieved tokens and bytes per tier, copy time,
        checksum failures, tier errors."""
        return Response(generate_latest(engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @get(
        "/health",
        summary="Health",
        responses=error_responses(),
    )
    async def health(self, maybe_engine: MaybeEngineDep) -> Health:
        """Always 200 while the server runs; says whether an engine and a KV cache are attached."""
        return Health(
            status="ok",
            engine=maybe_engine is not None,
            kv_cache_registered=bool(maybe_engine is not None and maybe_engine.has_kv_caches),
        )
