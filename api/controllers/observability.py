"""Beyond the spec: metrics and health.

``GET /metrics`` (Prometheus text format), ``POST /metrics/reset`` (as LMCache) and
``GET /health``.
"""

from __future__ import annotations

from litestar import Controller, Response, get, post
from lmcache_native.api.deps import EngineDep, MaybeEngineDep
from lmcache_native.api.schemas import Health, StatusMessage
from prometheus_client import generate_latest

from ..routes import route

METRICS_MEDIA_TYPE = "text/plain; version=0.0.4"
"""The Prometheus text exposition format; Litestar appends ``; charset=utf-8`` (once)."""


class ObservabilityController(Controller):
    """Metrics of the engine and a liveness probe."""

    tags = ("observability",)

    @route(get, "/metrics", "Prometheus Metrics", 503, media_type=METRICS_MEDIA_TYPE)
    def metrics(self, engine: EngineDep) -> Response[bytes]:
        """Engine metrics.

        This project's ``lmcache_*`` series (hits, misses, stored/retrieved
        tokens and bytes per tier, copy time, checksum failures, tier errors) and LMCache's
        ``lmcache:*`` names derived from the same measurements.
        """
        return Response(generate_latest(engine.metrics.registry), media_type=METRICS_MEDIA_TYPE)

    @route(post, "/metrics/reset", "Reset Metrics", 503, error_title="Failed to reset metrics")
    def reset_metrics(self, engine: EngineDep) -> StatusMessage:
        """Zeroes every counter and histogram.

        Both ``lmcache_*`` and ``lmcache:*`` ones, as LMCache's reset does; gauges (cache usage,
        health, chunk statistics) keep showing the current state.
        """
        engine.metrics.reset()
        return StatusMessage(status="success", message="Metrics reset")

    @route(get, "/health", "Health")
    async def health(self, maybe_engine: MaybeEngineDep) -> Health:
        """Always 200 while the server runs; says whether an engine and a KV cache are attached."""
        return Health(
            status="ok",
            engine=maybe_engine is not None,
            kv_cache_registered=bool(maybe_engine is not None and maybe_engine.has_kv_caches),
        )
