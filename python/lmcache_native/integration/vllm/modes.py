"""The connector's asynchronous modes and the config keys that turn them on.

``enable_async_loading`` (LMCache's key, default off as in LMCache): a hit with a chunk listed
only below the CPU tier (disk, Redis, ``fs://``) is loaded in the background; vLLM parks the
request (``WAITING_FOR_REMOTE_KVS``) until the worker reports it loaded. A hit the CPU tier holds
whole loads synchronously before the forward (a memory copy: faster than a scheduler round trip).
While vLLM has nothing to compute its engine loop turns around at once, step after step; in such a
step (no tokens scheduled) the worker waits, without the GIL, up to ``async_load_idle_wait_ms``
(``extra_config``, default 5; 0 turns it off) for a background load to finish before it answers
``get_finished``, so the idle loop does not take the GIL from the loads it waits for, and a load
that finishes is reported in that step. A step that runs a forward never waits.

``enable_async_saving`` (default off): ``wait_for_save`` copies a step's stores out of vLLM's
blocks into pool buffers (the only synchronous part) and hands their commit (the tier puts;
disk and Redis writes go on to the tiers' writer thread) to a background thread. On the CPU the
copy is done when it returns, so vLLM may reuse the blocks at once. On CUDA the copy is only
enqueued on the forward's stream: a finished request's blocks stay allocated until it is done
(``request_finished`` returns delayed free, the worker reports it in ``get_finished``), and a
preempted request's stores are finished before the next forward may overwrite its blocks
(``handle_preemptions``).

Either key can be given as an engine config key (YAML, ``LMCACHE_ENABLE_ASYNC_LOADING``,
``lmcache.``-prefixed ``kv_connector_extra_config``) where the engine defines it, or in
``extra_config``.
"""

from __future__ import annotations

from lmcache_native.config import CONFIG_DEFINITIONS, LMCacheEngineConfig
from lmcache_native.errors import ConfigError

ASYNC_LOADING = "enable_async_loading"
ASYNC_SAVING = "enable_async_saving"
IDLE_WAIT = "async_load_idle_wait_ms"
IDLE_WAIT_DEFAULT_MS = 5.0
_IDLE_WAIT_MAX_MS = 1000.0


def enabled(config: LMCacheEngineConfig, name: str) -> bool:
    """Whether the mode ``name`` is on (its key, or an ``extra_config`` entry; default off)."""
    if name in CONFIG_DEFINITIONS and config.get(name):
        return True
    value = (config.get("extra_config") or {}).get(name, False)
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def idle_wait_secs(config: LMCacheEngineConfig) -> float:
    """Seconds an idle step waits for a background load (``async_load_idle_wait_ms``).

    Raises:
        ConfigError: the value is not a number of milliseconds from 0 to 1000.
    """
    value = config.extra(IDLE_WAIT, IDLE_WAIT_DEFAULT_MS)
    try:
        ms = float(value)
    except (TypeError, ValueError):
        ms = -1.0
    if isinstance(value, bool) or not 0.0 <= ms <= _IDLE_WAIT_MAX_MS:
        raise ConfigError(
            f"extra_config.{IDLE_WAIT} must be a number of milliseconds from 0 to "
            f"{_IDLE_WAIT_MAX_MS:g} (got {value!r})",
            key="extra_config",
        )
    return ms / 1e3
