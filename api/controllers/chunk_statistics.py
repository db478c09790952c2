"""Chunk Statistics: ``POST /chunk_statistics/{start,stop,reset}``, ``GET .../status``."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, get, post
from lmcache_native.api.deps import EngineDep
from lmcache_native.api.errors import bad_request
from lmcache_native.api.schemas import ChunkStatisticsStatus, StatusMessage

from ..routes import route


def _statistics(engine: EngineDep) -> Any:
    stats = engine.statistics
    if not stats.available:
        raise bad_request("Not available", "Client does not support statistics.")
    return stats


def _run(engine: EngineDep, action: str, message: str) -> StatusMessage:
    """Calls the statistics' ``start``, ``stop`` or ``reset`` and answers ``message``."""
    getattr(_statistics(engine), action)()
    return StatusMessage(status="success", message=message)


class ChunkStatisticsController(Controller):
    """Counts of total / unique chunks seen by lookups (``enable_chunk_statistics``)."""

    path = "/chunk_statistics"
    tags = ("chunk-statistics",)

    @route(post, "/start", "Start Statistics", 400, 503, error_title="Failed to start")
    def start(self, engine: EngineDep) -> StatusMessage:
        """Starts collecting."""
        return _run(engine, "start", "Started")

    @route(post, "/stop", "Stop Statistics", 400, 503, error_title="Failed to stop")
    def stop(self, engine: EngineDep) -> StatusMessage:
        """Stops collecting.

        The counts are kept, and ``/chunk_statistics/status`` still shows them.
        """
        return _run(engine, "stop", "Stopped")

    @route(post, "/reset", "Reset Statistics", 400, 503, error_title="Failed to reset")
    def reset(self, engine: EngineDep) -> StatusMessage:
        """Forgets every count."""
        return _run(engine, "reset", "Reset")

    @route(get, "/status", "Statistics Status", 400, 503, error_title="Failed to get status")
    def status(self, engine: EngineDep) -> ChunkStatisticsStatus:
        """Current counts and the auto-exit settings.

        (``enabled``/``is_collecting`` and ``total_requests``/``requests`` are the same values under
        LMCache's and the spec's names).
        """
        status = dict(_statistics(engine).status())
        status["enabled"] = status["is_collecting"]
        status["total_requests"] = status["requests"]
        return msgspec.convert(status, ChunkStatisticsStatus, strict=False)
