"""Chunk Statistics: ``POST /chunk_statistics/{start,stop,reset}``, ``GET .../status``."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, get, post
from lmcache_native.api.deps import EngineDep
from lmcache_native.api.errors import bad_request, error_responses
from lmcache_native.api.schemas import ChunkStatisticsStatus, StatusMessage


def _statistics(engine: EngineDep) -> Any:
    stats = engine.statistics
    if not stats.available:
        raise bad_request("Not available", "Client does not support statistics.")
    return stats


class ChunkStatisticsController(Controller):
    """Counts of total / unique chunks seen by lookups (``enable_chunk_statistics``)."""

    path = "/chunk_statistics"
    tags = ["chunk-statistics"]

    @post(
        "/start",
        summary="Start Statistics",
        status_code=200,
        sync_to_thread=True,
        responses=error_responses(400, 503),
        opt={"error_title": "Failed to start"},
    )
    def start(self, engine: EngineDep) -> StatusMessage:
        """Starts collecting."""
        _statistics(engine).start()
        return StatusMessage(status="success", message="Started")

    @post(
        "/stop",
        summary="Stop Statistics",
        status_code=200,
        sync_to_thread=True,
        responses=error_responses(400, 503),
        opt={"error_title": "Failed to stop"},
    )
    def stop(self, engine: EngineDep) -> StatusMessage:
        """Stops collecting (the counts are kept)."""
        _statistics(engine).stop()
        return StatusMessage(status="success", message="Stopped")

    @post(
        "/reset",
        summary="Reset Statistics",
        status_code=200,
        sync_to_thread=True,
        responses=error_responses(400, 503),
        opt={"error_title": "Failed to reset"},
    )
    def reset(self, engine: EngineDep) -> StatusMessage:
        """Forgets every count."""
        _statistics(engine).reset()
        return StatusMessage(status="success", message="Reset")

    @get(
        "/status",
        summary="Statistics Status",
        sync_to_thread=True,
        responses=error_responses(400, 503),
        opt={"error_title": "Failed to get status"},
    )
    def status(self, engine: EngineDep) -> ChunkStatisticsStatus:
        """Current counts and the auto-exit settings (``enabled``/``is_collecting`` and
        ``total_requests``/``requests`` are the same values under LMCache's and the spec's
        names)."""
        status = dict(_statistics(engine).status())
        status["enabled"] = status["is_collecting"]
        status["total_requests"] = status["requests"]
        return msgspec.convert(status, ChunkStatisticsStatus, strict=False)
