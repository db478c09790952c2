"""What every part of the worker side shares: its configuration, engine, counters and leases.

:class:`WorkerState` is the base of :class:`~.worker.WorkerSide` and of the load and save paths
(:mod:`.loading`, :mod:`.saving`) it is made of.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine import CacheEngine
from lmcache_native.engine.keys import KeyExtras
from lmcache_native.integration.vllm.counters import ConnectorMetrics, WorkerStats
from lmcache_native.integration.vllm.events import KVEventLog
from lmcache_native.integration.vllm.metadata import LoadSpec
from lmcache_native.integration.vllm.modes import (
    ASYNC_LOADING,
    ASYNC_SAVING,
    enabled,
    idle_wait_secs,
)
from lmcache_native.integration.vllm.stats import LMCacheNativeStats
from lmcache_native.storage.base import ChunkBufferLike

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.kv_cache_interface import KVCacheConfig

logger = logging.getLogger("lmcache_native.integration.vllm")


@dataclass
class SaveState:
    """What the worker keeps of a request between its saves.

    Attributes:
        extras: the request's key extras.
        tokens: the request's token ids received so far.
        block_ids: the request's blocks received so far.
        stored_upto: tokens handed to the engine so far.
        hashed_upto: tokens covered by full chunks already handed to the engine (chunk aligned).
        prev_hash: the chain hash of the chunk ending at ``hashed_upto``.
    """

    extras: KeyExtras | None = None
    tokens: list[int] = field(default_factory=list)
    block_ids: list[int] = field(default_factory=list)
    stored_upto: int = 0
    hashed_upto: int = 0
    prev_hash: str | None = None


@dataclass
class _Lease:
    """Chunks a lookup reported for one request, held until its load (or expiry)."""

    expires: float
    bufs: list[ChunkBufferLike]


def unref_all(bufs: Sequence[ChunkBufferLike]) -> None:
    """Drops one reference of each buffer."""
    for b in bufs:
        b.unref()


class WorkerState:
    """Worker-side state of one connector.

    Args:
        vllm_config: vLLM's configuration.
        kv_cache_config: vLLM's KV cache configuration (layer specs).
        config: the engine configuration.
        engine_id: vLLM's ``kv_transfer_config.engine_id``.
        rank: this worker's rank among the engine's workers.
        world_size: workers of this engine.
        loads: loads are allowed (``kv_consumer``, ``kv_both``).
        saves: stores are allowed (``kv_producer``, ``kv_both``).
    """

    def __init__(
        self,
        vllm_config: VllmConfig,
        kv_cache_config: KVCacheConfig | None,
        config: LMCacheEngineConfig,
        engine_id: str,
        rank: int,
        world_size: int,
        loads: bool = True,
        saves: bool = True,
    ) -> None:
        """Sets up the state; the engine comes with ``register_kv_caches``.

        Raises:
            ConfigError: with async loading, a bad ``async_load_idle_wait_ms``.
        """
        self.vllm_config = vllm_config
        self.loads = loads
        self.saves = saves
        self.kv_cache_config = kv_cache_config
        self.config = config
        self.engine_id = engine_id
        self.rank = rank
        self.world_size = world_size
        self.block_size = int(vllm_config.cache_config.block_size)
        self.engine: CacheEngine | None = None
        self.layout: str | None = None
        self.disabled_reason: str | None = None
        self.stats = WorkerStats()
        self.api_handle: Any = None
        self.metrics: ConnectorMetrics | None = None
        self._bytes_per_token = 0
        self._device = torch.device("cpu")
        self._saves: dict[str, SaveState] = {}
        self._load_errors: set[int] = set()
        # Background loads by request: (spec, future; ``None`` when it never started).
        self._async_loads: dict[str, tuple[LoadSpec, Future[tuple[int, float] | None] | None]]
        self._async_loads = {}
        self._load_pool: ThreadPoolExecutor | None = None
        # How long ``get_finished`` of a step without a forward waits for a background load,
        # and whether this step is one (told by ``wait_for_save``'s metadata, used once).
        async_loading = loads and enabled(config, ASYNC_LOADING)
        self.idle_wait = idle_wait_secs(config) if async_loading else 0.0
        self._idle_step = False
        # Background stores (see :mod:`.saving`), in order, and the finished requests whose
        # blocks vLLM holds until their stores are done.
        self.async_saving = saves and enabled(config, ASYNC_SAVING)
        self._save_pool: ThreadPoolExecutor | None = None
        self._save_jobs: list[tuple[Any, Future[Any]]] = []
        self._sending: set[str] = set()
        self._failure_causes: set[tuple[str, str]] = set()
        self._load_raised = False
        self._leases: dict[str, _Lease] = {}
        self._lease_lock = threading.Lock()
        self.clock = time.monotonic
        # What vLLM's stats and KV events get (see :mod:`.stats`).
        self.vllm_stats = LMCacheNativeStats()
        kec = getattr(vllm_config, "kv_events_config", None)
        self.events_enabled = bool(getattr(kec, "enable_kv_cache_events", False))
        self.kv_events = KVEventLog(self.events_enabled)

    def _failed(self, op: str, exc: BaseException) -> None:
        """Counts a load/store that raised; logs it once per cause with its traceback."""
        self.vllm_stats.add("failed_loads" if op == "load" else "failed_stores")
        if op == "load":
            self.stats.load_failures += 1
            if self.metrics is not None:
                self.metrics.load_failures.inc()
        else:
            self.stats.store_failures += 1
            if self.metrics is not None:
                self.metrics.store_failures.inc()
        cause = (op, type(exc).__qualname__)
        if cause in self._failure_causes:
            logger.debug("LMCacheNativeConnector %s failed again: %r", op, exc)
            return
        self._failure_causes.add(cause)
        logger.error(
            "LMCacheNativeConnector %s failed (%s: %s); %s (logged once per cause)",
            op,
            type(exc).__name__,
            exc,
            "its blocks are recomputed by vLLM" if op == "load" else "nothing more is stored",
            exc_info=exc,
        )

    def _count_transfer(
        self, op: str, req_id: str, tokens: int, asked: int, dt: float, reason: str | None = None
    ) -> None:
        """Counts one load (``op`` "retrieve") or store ("store") of ``tokens`` and logs it."""
        load = op == "retrieve"
        past = "loaded" if load else "stored"
        nbytes = tokens * self._bytes_per_token
        if load:
            self.stats.load_requests += 1
            self.stats.loaded_tokens += tokens
        else:
            self.stats.store_requests += 1
            self.stats.stored_tokens += tokens
        vs = self.vllm_stats
        vs.add("load_requests" if load else "store_requests")
        vs.add(f"{past}_bytes", nbytes)
        vs.add("load_seconds" if load else "save_seconds", dt)
        if self.rank == 0:
            vs.add(f"{past}_tokens", tokens)
        if self.metrics is not None:
            (self.metrics.loaded_tokens if load else self.metrics.stored_tokens).inc(tokens)
        logger.info(
            "LMCacheNativeConnector %s %s: %d/%d tokens, %d bytes, %.3f ms, %.2f GB/s%s",
            op,
            req_id,
            tokens,
            asked,
            nbytes,
            dt * 1e3,
            nbytes / dt / 1e9 if dt > 0 else 0.0,
            f" ({reason})" if reason else "",
        )

    # -- leases ------------------------------------------------------------------------------

    def hold(self, req_id: str, held: list[ChunkBufferLike]) -> None:
        """Holds ``held`` for ``req_id`` (a lease, replacing its previous one)."""
        secs = float(self.config.extra("lookup_lease_secs", 30.0))
        with self._lease_lock:
            old = self._leases.pop(req_id, None)
            self._leases[req_id] = _Lease(self.clock() + secs, held)
        self.stats.leases += 1
        if old is not None:
            unref_all(old.bufs)

    def release(self, req_ids: Sequence[str]) -> None:
        """Lets the chunks held for ``req_ids`` go (their loads ran, or they finished)."""
        for req_id in req_ids:
            with self._lease_lock:
                lease = self._leases.pop(req_id, None)
            if lease is not None:
                unref_all(lease.bufs)

    def expire_leases(self) -> None:
        """Lets the chunks of expired leases go."""
        now = self.clock()
        with self._lease_lock:
            gone = [r for r, lease in self._leases.items() if lease.expires <= now]
            leases = [self._leases.pop(r) for r in gone]
        for lease in leases:
            self.stats.leases_expired += 1
            unref_all(lease.bufs)

    @property
    def leased_requests(self) -> list[str]:
        """Requests whose looked-up chunks are held now."""
        with self._lease_lock:
            return list(self._leases)
