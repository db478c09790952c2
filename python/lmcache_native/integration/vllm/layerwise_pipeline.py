"""The worker side's layer-wise mode (``use_layerwise: true``): one step, layer by layer.

vLLM's order within a step is ``start_load_kv`` (before the forward, when it has loads), then
per attention layer ``wait_for_layer_load(layer)``, the layer, ``save_kv_layer(layer)``, and
``wait_for_save`` after the forward; then ``get_block_ids_with_load_errors``. This module maps
that onto the worker side:

- ``start_load_kv`` plans the loads as the whole-forward path does (same slots, leases, failure
  reports) and hands them to a :class:`~.layerwise_load.LayerwiseLoad`, whose thread writes
  layer after layer while the forward runs; ``wait_for_layer_load`` waits for that layer only.
  Once every layer is in (at the latest in ``wait_for_save`` or when the load errors are
  asked for), the loads are counted and what they could not fill is reported, as before.
- The first ``save_kv_layer`` of a step plans the step's saves (the request states advance as in
  ``wait_for_save``) and each call copies that layer out (:class:`~.layerwise.LayerwiseSaver`);
  ``wait_for_save`` commits the planned saves from the copied layers, on the forward thread or
  (``enable_async_saving``) on the background save thread. A step in which no layer was saved
  stores the whole-forward way.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from lmcache_native.engine.metadata import StoreResult
from lmcache_native.integration.vllm.layerwise import (
    LayerCaches,
    LayerwiseSaver,
    Staging,
    StoreJob,
)
from lmcache_native.integration.vllm.layerwise_load import LayerwiseLoad, LoadJob
from lmcache_native.integration.vllm.metadata import LMCacheNativeConnectorMetadata, LoadSpec

if TYPE_CHECKING:
    from lmcache_native.integration.vllm.saving import PlannedSave
    from lmcache_native.integration.vllm.worker import WorkerSide

logger = logging.getLogger("lmcache_native.integration.vllm")


class LayerwisePipeline:
    """Layer-wise loads and saves of one worker side.

    Args:
        worker: the worker side (its engine, leases, counters and save states are used).
    """

    def __init__(self, worker: WorkerSide) -> None:
        """An idle pipeline; the caches are taken from the worker's engine when first used."""
        self.worker = worker
        self._caches: LayerCaches | None = None
        self._saver: LayerwiseSaver | None = None
        self._planned: list[tuple[PlannedSave, StoreJob]] | None = None
        self._load: LayerwiseLoad | None = None
        self._load_staging: Staging | None = None  # reused by every step's load
        self._load_specs: list[LoadSpec] = []
        self._load_t0 = 0.0
        self.last_load: LayerwiseLoad | None = None  # the most recent load (tests, logs)

    def _layer_caches(self) -> LayerCaches | None:
        engine = self.worker.engine
        if engine is None:
            return None
        if self._caches is None:
            # NOTE: the caches the engine registered (the detected layout's views of vLLM's).
            kv = engine.registered_kv()
            self._caches = LayerCaches.of(dict(zip(kv.names, kv.caches, strict=True)), kv.layout)
        return self._caches

    # -- loads ---------------------------------------------------------------------------------

    def start_load_kv(self, meta: LMCacheNativeConnectorMetadata) -> None:
        """Starts this step's loads in the background (the forward waits per layer).

        Background loads (``async_load``), leases and released requests are handled by the
        worker side as without ``use_layerwise``; the others are loaded layer by layer.
        """
        w = self.worker
        self.finish_loads()  # one step's loads at a time
        sync = [s for s in meta.loads if not s.async_load]
        w.start_load_kv(replace(meta, loads=[s for s in meta.loads if s.async_load]))
        caches = self._layer_caches()
        if w.engine is None or caches is None or not w.loads:
            w.fail_loads(sync)
            w.release([s.req_id for s in sync])
            return
        specs: list[LoadSpec] = []
        jobs: list[LoadJob] = []
        for spec in sync:
            if len(spec.token_ids) < spec.end:  # the plan failed on the scheduler side
                w._fail_load(spec, spec.start)
                w.release([spec.req_id])
                continue
            specs.append(spec)
            jobs.append(LoadJob(spec.token_ids, w._load_slots(spec), spec.extras))
        if not jobs:
            return
        if self._load_staging is None:
            self._load_staging = Staging(caches)
        self._load = LayerwiseLoad(w.engine, caches, jobs, self._load_staging)
        self._load_specs = specs
        self._load_t0 = time.perf_counter()
        self._load.start()

    def wait_for_layer_load(self, layer_name: str) -> None:
        """Returns once ``layer_name`` of this step's loads is written (at once without)."""
        load = self._load
        if load is not None:
            load.wait_layer(layer_name)

    def finish_loads(self) -> None:
        """Waits for this step's loads; counts them and reports what they could not fill."""
        load, self._load = self._load, None
        if load is None:
            return
        specs, self._load_specs = self._load_specs, []
        w = self.worker
        try:
            results = load.wait()
            dt = time.perf_counter() - self._load_t0
            for e in load.errors:
                w._failed("load", e)
            w._load_raised = bool(load.errors)  # a raised load was counted by ``_failed``
            for spec, result in zip(specs, results, strict=True):
                try:
                    w._loaded(spec, result, dt)
                except Exception as e:  # its blocks are reported, then recomputed
                    w._failed("load", e)
                    w._fail_load_raised(spec)
        finally:
            w._load_raised = False
            w.release([s.req_id for s in specs])
            self.last_load = load
        logger.debug(
            "layer-wise load: %d requests, %d layers, %.3f ms",
            len(specs),
            load.layers_loaded,
            load.seconds * 1e3,
        )

    def drop_loads(self) -> None:
        """Waits for this step's loads and forgets them (the caller reports them failed)."""
        load, specs = self._load, self._load_specs
        self._load, self._load_specs = None, []
        if load is not None:
            load.wait()
        self.worker.release([s.req_id for s in specs])

    # -- saves ---------------------------------------------------------------------------------

    def save_kv_layer(self, layer_name: str, meta: LMCacheNativeConnectorMetadata) -> None:
        """Copies ``layer_name`` of this step's saves out (the first call plans them)."""
        if self._planned is None:
            self._planned = self._plan_saves(meta)
        if self._planned and self._saver is not None:
            self._saver.save_layer(layer_name)

    def _plan_saves(
        self, meta: LMCacheNativeConnectorMetadata
    ) -> list[tuple[PlannedSave, StoreJob]]:
        w = self.worker
        caches = self._layer_caches()
        if w.engine is None or caches is None or not w.saves or not meta.saves:
            return []
        save_decode = bool(w.config.get("save_decode_cache"))
        planned: list[tuple[PlannedSave, StoreJob]] = []
        for spec in meta.saves:
            try:
                p = w._plan_save(spec, save_decode)
            except Exception as e:  # a lost store is only a later miss
                w._failed("store", e)
                continue
            if p is not None:
                job = StoreJob(p.tokens, p.slots, p.state.extras, p.begin, p.prev_hash)
                planned.append((p, job))
        if planned:
            if self._saver is None:
                self._saver = LayerwiseSaver(w.engine, caches)
            try:
                self._saver.begin([job for _, job in planned])
            except Exception as e:  # the planned saves are stored from vLLM's cache instead
                logger.warning(
                    "layer-wise save: planning the copies failed (%s: %s); this step stores "
                    "from vLLM's cache after the forward",
                    type(e).__name__,
                    e,
                )
        return planned

    def wait_for_save(self, meta: LMCacheNativeConnectorMetadata) -> None:
        """Commits this step's saves from the copied layers (whole-forward when none was).

        The copies out of vLLM's blocks are done (or, on CUDA, enqueued): each store's filled
        buffers are committed (``CacheEngine.commit_store``) here, on the forward thread, or
        with ``enable_async_saving`` on the background save thread.
        """
        self.finish_loads()
        planned, self._planned = self._planned, None
        w = self.worker
        if planned is None:
            w.wait_for_save(meta)
            return
        w.wait_for_save(replace(meta, saves=[]))  # held blocks, released requests
        saver = self._saver
        try:
            for p, job in planned:
                try:
                    self._save(p, job, saver)
                except Exception as e:  # a lost store is only a later miss
                    w._failed("store", e)
        finally:
            if saver is not None:
                saver.end()

    def _save(self, p: PlannedSave, job: StoreJob, saver: LayerwiseSaver | None) -> None:
        """Commits ``p`` (staged as ``job``) now, or hands its commit to the background."""
        w = self.worker
        if saver is None:  # planning failed: stored from vLLM's cache
            if w.async_saving:
                w._stage_planned(p)
            else:
                w._store_planned(p)
        elif w.async_saving:
            w._stage_planned(p, partial(saver.take, job))
        else:

            def store(*_args: Any, **_kw: Any) -> StoreResult:
                return saver.store(job)

            w._store_planned(p, store)

    def close(self) -> None:
        """Waits for a load still running (its counts and reports are kept)."""
        self.finish_loads()
