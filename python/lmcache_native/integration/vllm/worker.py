"""The worker side of the connector: one engine on vLLM's real KV caches.

``register_kv_caches`` recognises the layout (see :mod:`.layout`), builds the
:class:`~lmcache_native.engine.CacheEngine` on vLLM's tensors, starts the lookup server for the
scheduler and, when ``internal_api_server_enabled``, the admin API on
``internal_api_server_port_start + 1 + rank``.

A lookup holds what it reported (a lease per request): the CPU-tier buffers of the chunks it
found stay referenced, so eviction skips them until the request's load, ``request_finished``
(``released`` in the metadata, or vLLM's finished ids) or the lease's expiry
(``extra_config.lookup_lease_secs``, default 30 s) lets them go, and a hit cannot become a
failed load because the chunks were evicted in between.

Loads run in ``start_load_kv`` (:mod:`.loading`), which vLLM calls before the forward of a step
that has loads; saves run in ``wait_for_save`` (:mod:`.saving`) after the forward. In a step
without a forward ``get_finished`` first waits a moment for a background load (see
:mod:`.modes`); ``wait_for_save``, which vLLM calls in every step just before it, tells it from the
step's metadata (``idle``). No exception
of a load or a store leaves the worker side: a failed load is reported as blocks to recompute, a
failed store is counted and logged once per cause. KV events come from :mod:`.events`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lmcache_native.engine import CacheEngine, EngineMetadata
from lmcache_native.engine.keys import KeyExtras
from lmcache_native.integration.vllm.counters import ConnectorMetrics
from lmcache_native.integration.vllm.geometry import (
    cpu_attention_isa,
    layer_geometry,
    parallel_rank,
)
from lmcache_native.integration.vllm.layout import UnsupportedLayoutError, detect_layout
from lmcache_native.integration.vllm.loading import LoadPath
from lmcache_native.integration.vllm.lookup import LookupServer
from lmcache_native.integration.vllm.metadata import LMCacheNativeConnectorMetadata
from lmcache_native.integration.vllm.saving import SavePath
from lmcache_native.integration.vllm.state import unref_all
from lmcache_native.integration.vllm.stats import LMCacheNativeKVEvents, LMCacheNativeStats
from lmcache_native.ops import describe
from lmcache_native.stats.periodic import RunStats, ThreadLevel
from lmcache_native.storage.base import ChunkBufferLike

__all__ = ["WorkerSide", "cpu_attention_isa", "layer_geometry", "parallel_rank"]

logger = logging.getLogger("lmcache_native.integration.vllm")


class WorkerSide(LoadPath, SavePath):
    """Worker-side state of one connector (arguments: :class:`~.state.WorkerState`)."""

    _lookup: LookupServer | None = None
    _last_lookup_time = 0.0

    # -- setup -------------------------------------------------------------------------------

    def register_kv_caches(self, kv_caches: Mapping[str, torch.Tensor]) -> None:
        """Builds the engine on vLLM's caches, or disables the connector with one log line."""
        names = list(kv_caches)
        geometry = layer_geometry(self.vllm_config, self.kv_cache_config, names)
        try:
            detected = detect_layout(kv_caches, geometry)
        except UnsupportedLayoutError as e:
            self.disabled_reason = str(e)
            logger.error("LMCacheNativeConnector disabled (unknown KV cache layout): %s", e)
            return
        first = next(iter(detected.kv_caches.values()))
        backend = next(iter(geometry.values())).backend
        served = self.vllm_config.model_config.served_model_name
        metadata = EngineMetadata(
            model_name=str(self.vllm_config.model_config.model),
            world_size=self.world_size,
            worker_id=self.rank,
            use_mla=detected.layout == "mla",
            served_model_name=str(served) if served is not None else None,
            extra={
                "kv_connector": "LMCacheNativeConnector",
                "vllm_engine_id": self.engine_id,
                "attention_backend": backend,
                "kv_connector_extra_config": dict(
                    getattr(
                        getattr(self.vllm_config, "kv_transfer_config", None),
                        "kv_connector_extra_config",
                        None,
                    )
                    or {}
                ),
            },
        )
        engine = CacheEngine(self.config, metadata)
        engine.register_kv_caches(detected.kv_caches, detected.layout)
        paged = describe(list(detected.kv_caches.values()), detected.layout)
        self._bytes_per_token = paged.num_kv * paged.num_layers * paged.row_elems * paged.elem_size
        self._device = first.device
        self.metrics = ConnectorMetrics(engine.metrics.registry)
        self.engine = engine
        self.layout = detected.layout
        logger.info("LMCacheNativeConnector worker %d: %s", self.rank, detected.description)
        self._lookup = LookupServer.start(self.engine_id, self.rank, self.lookup_tiers)
        self._register_lookup_thread(engine)
        if self.config.get("internal_api_server_enabled"):
            self._start_api()

    def _register_lookup_thread(self, engine: CacheEngine) -> None:
        """Lists the lookup server's thread in the engine's ``/periodic-threads``."""

        def thread() -> threading.Thread | None:
            return self._lookup.thread if self._lookup is not None else None

        def runs() -> RunStats:
            return RunStats(
                total_runs=self.stats.lookups,
                last_run_time=self._last_lookup_time,
                message="lookups answered for the scheduler",
            )

        engine.background_threads.register_probe(
            f"lmcn-lookup-{self.rank}",
            ThreadLevel.HIGH,
            thread,
            runs,
            stopped=lambda: self._lookup is None,
        )

    def _start_api(self) -> None:
        from lmcache_native.api.server import start

        host = str(self.config.get("internal_api_server_host"))
        port = int(self.config.get("internal_api_server_port_start")) + 1 + self.rank
        try:
            self.api_handle = start(
                self.engine, self.config, host=host, port=port, inference_info=self.inference_info
            )
        except Exception as e:  # vLLM runs on without the admin API
            logger.error(
                "LMCacheNativeConnector: admin API not started on %s:%d: %s", host, port, e
            )
            return
        logger.info(
            "LMCacheNativeConnector worker %d: admin API on %s", self.rank, self.api_handle.url
        )

    def inference_info(self) -> dict[str, Any]:
        """Host details for the admin API's ``/inference_info``."""
        import vllm

        vc = self.vllm_config
        pc = vc.parallel_config
        return {
            "engine": "vllm",
            "vllm_version": vllm.__version__,
            "model": str(vc.model_config.model),
            "dtype": str(vc.model_config.dtype),
            "block_size": self.block_size,
            "tensor_parallel_size": pc.tensor_parallel_size,
            "pipeline_parallel_size": pc.pipeline_parallel_size,
            "worker_id": self.rank,
            "world_size": self.world_size,
            "kv_layout": self.layout,
            "engine_id": self.engine_id,
        }

    # -- lookups (called from the lookup server's threads) -----------------------------------

    def lookup(
        self, req_id: str, tokens: Sequence[int] | np.ndarray, extras: KeyExtras | None = None
    ) -> tuple[int, int]:
        """(stored prefix length in tokens, ``min_retrieve_tokens``); see :meth:`lookup_tiers`."""
        hit, min_retrieve, _ = self.lookup_tiers(req_id, tokens, extras)
        return hit, min_retrieve

    def lookup_tiers(
        self, req_id: str, tokens: Sequence[int] | np.ndarray, extras: KeyExtras | None = None
    ) -> tuple[int, int, bool]:
        """(stored prefix length in tokens, ``min_retrieve_tokens``, a chunk below the CPU tier).

        The third is whether a chunk of the prefix is listed only below the CPU tier, so that
        its load reads storage.

        Answered from the tiers' indexes (:meth:`CacheEngine.lookup_held`): no payload is read
        on the scheduler's path. The CPU-tier chunks reported are held for ``req_id`` (a lease)
        until its load, its end or the lease's expiry; a chunk listed only below the CPU tier
        is fetched and verified by the load, which reports its blocks to vLLM
        (``get_block_ids_with_load_errors``) when that fails, so vLLM recomputes them.
        """
        engine = self.engine
        if engine is None or not self.loads:
            return 0, 0, False
        self.release([req_id])
        self.expire_leases()
        self.stats.lookups += 1
        self._last_lookup_time = time.time()
        min_retrieve = int(self.config.get("min_retrieve_tokens"))
        held: list[ChunkBufferLike] = []
        loadable = int(engine.lookup_held(tokens, extras, held))
        chunk = engine.chunk_size
        below_cpu = len(held) < (loadable + chunk - 1) // chunk
        if held and req_id:
            self.hold(req_id, held)
        else:
            unref_all(held)
        if self.metrics is not None:
            self.metrics.lookups.inc()
            self.metrics.lookup_tokens.inc(loadable)
        return loadable, min_retrieve, below_cpu

    # -- per step ----------------------------------------------------------------------------

    def disable(self, reason: str) -> None:
        """Turns the connector off in this worker (loads are reported failed, stores skipped)."""
        self.disabled_reason = reason
        self._drain()
        engine, self.engine = self.engine, None
        if self._lookup is not None:
            self._lookup.stop()
            self._lookup = None
        if engine is not None:
            try:
                engine.close()
            except Exception as e:
                logger.debug("closing a disabled engine failed: %r", e)

    # -- vLLM's stats and KV events ------------------------------------------------------------

    def take_vllm_stats(self) -> LMCacheNativeStats | None:
        """The counters since the last call (``None`` when nothing happened)."""
        return self.vllm_stats.take()

    def take_events(self) -> LMCacheNativeKVEvents | None:
        """This worker's KV events since the last call (``None`` when there are none)."""
        return self.kv_events.take(self.engine)

    def finished(self, finished_req_ids: set[str]) -> None:
        """Forgets requests vLLM finished (and lets their held chunks go)."""
        self.release(list(finished_req_ids))
        for req_id in finished_req_ids:
            self._saves.pop(req_id, None)

    def wait_for_save(self, meta: LMCacheNativeConnectorMetadata) -> None:
        """Stores what this step computed (see :mod:`.saving`); notes whether it ran a forward.

        vLLM calls it in every step, with or without a forward, before ``get_finished``.
        """
        self._idle_step = meta.idle
        super().wait_for_save(meta)

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str], set[str]]:
        """Forgets finished requests; returns (held blocks to free, loads done) by request.

        The first set names finished requests whose held blocks vLLM may free now, the second
        requests whose background loads are done; each request is named once. In a step
        without a forward it first waits up to ``idle_wait`` seconds for a background load to
        finish, and names it then.
        """
        self.finished(finished_req_ids)
        idle, self._idle_step = self._idle_step, False
        if idle and self.idle_wait > 0:
            self.wait_for_loads(self.idle_wait)
        return self.finished_sending(), self.finished_loads()

    def _drain(self) -> None:
        """Waits for every background store and load (nothing stored is lost)."""
        self.drain_saves()
        self.drain_loads()

    def close(self) -> None:
        """Finishes background stores and loads, then stops everything and closes the engine.

        The admin API and the lookup server stop and every lease is let go.
        """
        self._drain()
        self.release(self.leased_requests)
        if self.api_handle is not None:
            self.api_handle.stop()
            self.api_handle = None
        if self._lookup is not None:
            self._lookup.stop()
            self._lookup = None
        if self.engine is not None:
            self.engine.close()
            self.engine = None
