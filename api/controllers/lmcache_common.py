"""LMCache's common admin endpoints.

They are ``/loglevel``, ``/threads``, ``/periodic-threads*`` and ``/env``.

Paths, parameters and successful answers follow LMCache's internal API server (text for
``/loglevel`` and ``/threads``, JSON for the others); errors use this API's
``{"error", "message"}`` body.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback
from typing import Annotated, Any

import msgspec
from litestar import Controller, MediaType, Request, get, post
from litestar.params import Parameter, PathParameter
from lmcache_native.api.deps import EngineDep
from lmcache_native.api.errors import ApiError, bad_request
from lmcache_native.stats.periodic import ThreadLevel
from lmcache_native.stats.redact import redact_value

from ..routes import optional, route

LEVEL_NAMES = ("CRITICAL", "FATAL", "ERROR", "WARNING", "WARN", "INFO", "DEBUG", "NOTSET")
"""Level names ``/loglevel`` accepts (any case)."""

ENV_PREFIXES = (
    "LMCACHE_",
    "VLLM_",
    "CUDA_",
    "NCCL_",
    "NVIDIA_",
    "HIP_",
    "ROCR_",
    "TORCH_",
    "PYTORCH_",
    "OMP_",
    "MKL_",
    "KMP_",
    "HF_",
    "TRANSFORMERS_",
    "TOKENIZERS_",
    "PROMETHEUS_",
    "UCX_",
    "GLOO_",
    "MASTER_",
)
"""``/env`` shows variables with these prefixes ..."""

ENV_NAMES = frozenset(
    {
        "CUDA_VISIBLE_DEVICES",
        "PYTHONHASHSEED",
        "PYTHONPATH",
        "LD_LIBRARY_PATH",
        "HOSTNAME",
        "TZ",
        "LANG",
        "LC_ALL",
        "RANK",
        "LOCAL_RANK",
        "WORLD_SIZE",
        "LOCAL_WORLD_SIZE",
    }
)
"""... and these names; any of them whose name looks secret (KEY, TOKEN, SECRET, PASSWORD,
PASS, CREDENTIAL, AUTH, ...) is masked, and passwords inside URLs are masked in every value."""


def _logger(name: str) -> logging.Logger:
    return logging.getLogger() if name == "root" else logging.getLogger(name)


def _level_name(lg: logging.Logger) -> str:
    return logging.getLevelName(lg.level)


def _loglevel_answer(logger_name: str | None, level: str | None) -> str:
    """LMCache's ``/loglevel`` semantics; returns the text answer.

    Raises:
        ApiError: 400 for a bad level or a level without a logger name, 404 when reading the
            level of a logger that does not exist.
    """
    if not logger_name and not level:
        lines = ["=== Loggers and Levels ===", f"root: {_level_name(logging.getLogger())}"]
        for name, obj in sorted(logging.Logger.manager.loggerDict.items()):
            if isinstance(obj, logging.Logger):
                lines.append(f"{name}: {_level_name(obj)}")
        return "\n".join(lines) + "\n"
    if not logger_name:
        raise bad_request("Missing parameters", "logger_name parameter is required")
    if not level:
        if logger_name != "root" and not isinstance(
            logging.Logger.manager.loggerDict.get(logger_name), logging.Logger
        ):
            raise ApiError(404, "Logger not found", f"No logger named {logger_name!r}")
        return f"{logger_name}: {_level_name(_logger(logger_name))}"
    upper = level.strip().upper()
    if upper not in LEVEL_NAMES:
        raise bad_request(
            "Invalid log level",
            f"Invalid log level: {level!r}; one of {', '.join(LEVEL_NAMES)}",
        )
    value = logging.getLevelName(upper)
    target = _logger(logger_name)
    target.setLevel(value)
    for handler in target.handlers:
        handler.setLevel(value)
    return f"Set {logger_name} level to {upper} (including all handlers)"


class LogLevelBody(msgspec.Struct, forbid_unknown_fields=True):
    """Optional JSON body of ``POST /loglevel`` (query parameters work as well)."""

    logger_name: str | None = None
    level: str | None = None


_LOGGER_NAME = optional('A logger name ("root" for the root logger).')
_LEVEL = optional(f"Level to set: {', '.join(LEVEL_NAMES)} (any case).")


def format_threads(name: str | None, thread_id: int | None) -> str:
    """Live threads with their stacks, as LMCache's text answer.

    One block per thread (``Thread: <name> (id=<ident>)`` and its stack), then a summary.
    """
    frames = sys._current_frames()
    blocks: list[str] = []
    for t in threading.enumerate():
        if name and name.lower() not in t.name.lower():
            continue
        if thread_id is not None and t.ident != thread_id:
            continue
        frame = frames.get(t.ident) if t.ident is not None else None
        header = f"Thread: {t.name} (id={t.ident}, daemon={t.daemon}, alive={t.is_alive()})"
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no stack)\n"
        blocks.append(f"{header}\n{stack.rstrip()}")
    summary = f"=== Thread Summary ===\nTotal threads: {len(blocks)}\n"
    return "\n\n".join([*blocks, summary])


class LMCacheCommonController(Controller):
    """Log levels, threads, background threads and the environment (LMCache's common APIs)."""

    tags = ("lmcache-common",)

    @route(get, "/loglevel", "Get or Set Log Level", 400, 404, media_type=MediaType.TEXT)
    async def get_loglevel(
        self,
        logger_name: str | None = _LOGGER_NAME,
        level: str | None = _LEVEL,
    ) -> str:
        """Reads or sets log levels.

        No parameters: every logger and its level. ``logger_name``: that logger's level.
        ``logger_name`` and ``level``: sets the level of the logger and of its handlers (this
        GET changes state, as LMCache's does; ``POST /loglevel`` does the same).
        """
        return _loglevel_answer(logger_name, level)

    @route(post, "/loglevel", "Set Log Level", 400, 404, 415, media_type=MediaType.TEXT)
    async def post_loglevel(
        self,
        request: Request[Any, Any, Any],
        logger_name: str | None = _LOGGER_NAME,
        level: str | None = _LEVEL,
    ) -> str:
        """Sets a logger's level.

        From query parameters or a JSON body ``{"logger_name": ..., "level": ...}`` (query
        parameters win).
        """
        raw = await request.body()
        if raw.strip():
            try:
                body = msgspec.convert(await request.json(), LogLevelBody)
            except msgspec.ValidationError as exc:
                raise bad_request("Invalid request body", str(exc)) from None
            logger_name = logger_name or body.logger_name
            level = level or body.level
        if not level:
            raise bad_request("Missing parameters", "level parameter is required")
        return _loglevel_answer(logger_name, level)

    @route(get, "/threads", "Threads", 400, media_type=MediaType.TEXT)
    async def threads(
        self,
        name: str | None = optional("Keep threads whose name contains this."),
        thread_id: int | None = optional("Keep the thread with this ident."),
    ) -> str:
        """Live threads of the process with their Python stacks.

        Filtered by name (case-insensitive substring) and/or thread id, then a ``Total threads``
        summary.
        """
        return format_threads(name, thread_id)

    @route(get, "/periodic-threads", "Periodic Threads", 400, 503)
    def periodic_threads(
        self,
        engine: EngineDep,
        level: str | None = optional("Keep threads of this level: critical, high, medium, low."),
        running_only: bool = Parameter(default=False, description="Keep running threads."),
        active_only: bool = Parameter(default=False, description="Keep active threads."),
    ) -> dict[str, Any]:
        """The engine's background threads.

        The storage writer, the vLLM lookup server and the chunk statistics auto-exit check: a
        summary (total/running/active, by level) and each thread's status (interval, last run,
        runs, failures, running, active, healthy).
        """
        registry = engine.background_threads
        statuses = registry.statuses()
        if level:
            try:
                wanted = ThreadLevel(level.strip().lower()).value
            except ValueError:
                raise bad_request(
                    "Invalid level",
                    f"Invalid level: {level}. Valid values: critical, high, medium, low",
                ) from None
            statuses = [s for s in statuses if s["level"] == wanted]
        if running_only:
            statuses = [s for s in statuses if s["is_running"]]
        if active_only:
            statuses = [s for s in statuses if s["is_active"]]
        return {"summary": registry.summary(), "threads": statuses}

    @route(get, "/periodic-threads/{thread_name:str}", "Periodic Thread", 400, 404, 503)
    def periodic_thread(
        self,
        engine: EngineDep,
        thread_name: Annotated[str, PathParameter(description="A registered thread's name.")],
    ) -> dict[str, Any]:
        """One background thread's status."""
        status: dict[str, Any] | None = engine.background_threads.status(thread_name)
        if status is None:
            known = ", ".join(engine.background_threads.names()) or "none"
            raise ApiError(
                404, "Thread not found", f"Thread not found: {thread_name} (registered: {known})"
            )
        return status

    @route(get, "/periodic-threads-health", "Periodic Threads Health", 503)
    def periodic_threads_health(self, engine: EngineDep) -> dict[str, Any]:
        """Whether the background threads are healthy.

        ``healthy`` is false when a critical or high thread is running but idle for more than three
        intervals, or died without being stopped; those are listed.
        """
        unhealthy = engine.background_threads.unhealthy()
        return {
            "healthy": not unhealthy,
            "unhealthy_count": len(unhealthy),
            "unhealthy_threads": unhealthy,
        }

    @route(get, "/env", "Environment")
    async def env(self) -> dict[str, str]:
        """Allow-listed environment variables.

        (``LMCACHE_*``, ``VLLM_*``, ``CUDA_*``, ``NCCL_*``,
        ``TORCH_*``, ``HF_*``, ``CUDA_VISIBLE_DEVICES``, ``PYTHONHASHSEED``, ...), sorted by
        name. Values of names that look secret are ``***``; passwords in URLs are masked.
        """
        out: dict[str, str] = {}
        for key in sorted(os.environ):
            if key in ENV_NAMES or key.startswith(ENV_PREFIXES):
                out[key] = str(redact_value(key, os.environ[key]))
        return out
