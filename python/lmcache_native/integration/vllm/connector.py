"""``LMCacheNativeConnector``: lmcache-native as a vLLM V1 KV connector.

Start vLLM with::

    --kv-transfer-config '{"kv_connector": "LMCacheNativeConnector",
                           "kv_connector_module_path": "lmcache_native.integration.vllm",
                           "kv_role": "kv_both"}'

(with the package installed, ``kv_connector_module_path`` may be left out: the
``vllm.general_plugins`` entry point registers the name). vLLM builds one connector in the
scheduler (role ``SCHEDULER``) and one in each worker (role ``WORKER``); this class hands each
call to :class:`~.scheduler.SchedulerSide` or :class:`~.worker.WorkerSide`.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import torch
from typing_extensions import override
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

from lmcache_native.integration.vllm.config import load_config
from lmcache_native.integration.vllm.geometry import parallel_rank
from lmcache_native.integration.vllm.layerwise_pipeline import LayerwisePipeline
from lmcache_native.integration.vllm.metadata import LMCacheNativeConnectorMetadata
from lmcache_native.integration.vllm.scheduler import SchedulerSide
from lmcache_native.integration.vllm.stats import (
    LMCacheNativeKVEvents,
    LMCacheNativePromMetrics,
    LMCacheNativeStats,
)
from lmcache_native.integration.vllm.worker import WorkerSide

if TYPE_CHECKING:
    from collections.abc import Iterable

    from vllm.config import VllmConfig
    from vllm.distributed.kv_events import KVCacheEvent
    from vllm.distributed.kv_transfer.kv_connector.v1.metrics import (
        KVConnectorPromMetrics,
        KVConnectorStats,
    )
    from vllm.forward_context import ForwardContext
    from vllm.v1.attention.backend import AttentionMetadata
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.outputs import KVConnectorOutput
    from vllm.v1.request import Request

logger = logging.getLogger("lmcache_native.integration.vllm")

_LOG_FORMAT = "[lmcache-native] %(levelname)s %(asctime)s %(name)s: %(message)s"


def _setup_logging() -> None:
    """Makes the connector's one-line store/retrieve logs visible next to vLLM's.

    ``LMCACHE_LOG_LEVEL`` sets the level (default ``INFO``). A handler is added only when
    neither the package logger nor the root logger has one, so applications keep control.
    """
    pkg = logging.getLogger("lmcache_native")
    level = os.environ.get("LMCACHE_LOG_LEVEL", "INFO").upper()
    pkg.setLevel(getattr(logging, level, logging.INFO))
    if not pkg.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        pkg.addHandler(handler)


class LMCacheNativeConnector(KVConnectorBase_V1):
    """vLLM KV connector backed by an lmcache-native engine in each worker.

    Args:
        vllm_config: vLLM's configuration (``kv_transfer_config`` must be set).
        role: ``SCHEDULER`` or ``WORKER``.
        kv_cache_config: vLLM's KV cache configuration.

    Attributes:
        scheduler_side: the scheduler-side state (``SCHEDULER`` role only).
        worker_side: the worker-side state (``WORKER`` role only).
        layerwise: the layer-wise pipeline (``WORKER`` role with ``use_layerwise`` only).
    """

    layerwise: LayerwisePipeline | None = None

    def __init__(
        self,
        vllm_config: VllmConfig,
        role: KVConnectorRole,
        kv_cache_config: KVCacheConfig | None = None,
    ) -> None:
        """Builds the side of the connector that ``role`` names."""
        # NOTE: vLLM passes None for kv_cache_config on some paths although its hint says not.
        super().__init__(
            vllm_config=vllm_config,
            role=role,
            kv_cache_config=kv_cache_config,  # type: ignore[arg-type]
        )
        _setup_logging()
        self._failure_causes: set[tuple[str, str]] = set()
        ktc = self._kv_transfer_config
        self.config = load_config(ktc.kv_connector_extra_config)
        engine_id = str(ktc.engine_id)
        # kv_producer stores and never loads, kv_consumer loads and never stores, kv_both does
        # both (disaggregated prefill through a shared tier).
        self.kv_role = str(ktc.kv_role or "kv_both")
        self.loads_enabled = self.kv_role in ("kv_consumer", "kv_both")
        self.saves_enabled = self.kv_role in ("kv_producer", "kv_both")
        pc = vllm_config.parallel_config
        self.scheduler_side: SchedulerSide | None = None
        self.worker_side: WorkerSide | None = None
        self.layerwise: LayerwisePipeline | None = None
        self._kv_events: list[LMCacheNativeKVEvents] = []  # scheduler side: to publish
        if role == KVConnectorRole.SCHEDULER:
            if getattr(ktc, "kv_load_failure_policy", "recompute") != "recompute":
                # NOTE: a cache miss must never fail a request: what a load cannot deliver is
                # recomputed. vLLM's scheduler reads the policy after building this connector.
                ktc.kv_load_failure_policy = "recompute"
                logger.info(
                    "LMCacheNativeConnector: kv_load_failure_policy set to 'recompute' (blocks "
                    "a load cannot fill are recomputed, never a failed request)"
                )
            world_size = int(pc.tensor_parallel_size) * int(pc.pipeline_parallel_size)
            self.scheduler_side = SchedulerSide(
                self.config,
                engine_id,
                world_size,
                int(vllm_config.cache_config.block_size),
                loads=self.loads_enabled,
                saves=self.saves_enabled,
            )
            groups = kv_cache_config.kv_cache_groups if kv_cache_config is not None else []
            if len(groups) > 1:
                logger.error(
                    "LMCacheNativeConnector disabled: %d KV cache groups (hybrid models) are not "
                    "supported",
                    len(groups),
                )
                self.scheduler_side = None
        else:
            rank, world_size = parallel_rank()
            self.worker_side = WorkerSide(
                vllm_config,
                kv_cache_config,
                self.config,
                engine_id,
                rank,
                world_size,
                loads=self.loads_enabled,
                saves=self.saves_enabled,
            )
            # use_layerwise: layer-wise loads and saves (see :mod:`.layerwise_pipeline`).
            if self.config.get("use_layerwise"):
                self.layerwise = LayerwisePipeline(self.worker_side)
        logger.info(
            "LMCacheNativeConnector %s created (engine_id %s, chunk_size %d, %s)",
            role.name.lower(),
            engine_id,
            int(self.config.get("chunk_size")),
            self.kv_role,
        )

    @classmethod
    @override
    def requires_piecewise_for_cudagraph(cls, extra_config: dict[str, Any]) -> bool:
        """Layer-wise mode waits and copies between layers: CUDA graphs must be piecewise."""
        try:
            return bool(load_config(extra_config).get("use_layerwise"))
        except Exception:  # a bad config is reported when the connector is built
            return False

    @property
    @override
    def requires_kv_delivery(self) -> bool:
        """A cache, not a hand-off: a dropped save is only a later miss."""
        return False

    def _contain(self, where: str, exc: BaseException) -> None:
        """Logs a failure that was kept from vLLM.

        Once per (method, cause) with its traceback, then at debug level.
        """
        cause = (where, type(exc).__qualname__)
        if cause not in self._failure_causes:
            self._failure_causes.add(cause)
            logger.error(
                "LMCacheNativeConnector.%s failed (%s: %s); vLLM goes on without the cache for "
                "it (logged once per cause)",
                where,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
        else:
            logger.debug("LMCacheNativeConnector.%s failed again: %r", where, exc)

    # ==============================
    # Worker side
    # ==============================

    @override
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        """Builds the worker's engine on vLLM's per-layer caches (a failure disables it)."""
        if self.worker_side is None:
            return
        try:
            self.worker_side.register_kv_caches(kv_caches)
        except Exception as e:  # vLLM runs on without the connector
            self._contain("register_kv_caches", e)
            self.worker_side.disable(f"setup failed: {type(e).__name__}: {e}")

    @override
    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        """Loads this step's planned requests into vLLM's cache.

        A synchronous load is done before this returns (vLLM calls it before the forward); a
        background one (``async_load``) is started and reported by :meth:`get_finished`. What
        cannot be loaded is reported by :meth:`get_block_ids_with_load_errors`.
        """
        if self.worker_side is None or not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        if not isinstance(meta, LMCacheNativeConnectorMetadata) or not (
            meta.loads or meta.released
        ):
            return
        try:
            if self.layerwise is not None:
                self.layerwise.start_load_kv(meta)
            else:
                self.worker_side.start_load_kv(meta)
        except Exception as e:  # the loads' blocks are recomputed instead
            self._contain("start_load_kv", e)
            if self.layerwise is not None:
                self.layerwise.drop_loads()
            self.worker_side.fail_loads(meta.loads)

    @override
    def wait_for_layer_load(self, layer_name: str) -> None:
        """Layer-wise: returns once ``layer_name`` is loaded (else ``start_load_kv`` did all)."""
        if self.layerwise is None:
            return
        try:
            self.layerwise.wait_for_layer_load(layer_name)
        except Exception as e:  # a failed load is reported after the forward
            self._contain("wait_for_layer_load", e)

    @override
    def save_kv_layer(
        self,
        layer_name: str,
        kv_layer: torch.Tensor,
        attn_metadata: AttentionMetadata,
        **kwargs: Any,
    ) -> None:
        """Layer-wise: copies ``layer_name``'s KV of this step's saves out.

        Without ``use_layerwise`` a no-op: ``wait_for_save`` stores every layer once the
        forward wrote them.
        """
        if self.layerwise is None or not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        if not isinstance(meta, LMCacheNativeConnectorMetadata):
            return
        try:
            self.layerwise.save_kv_layer(layer_name, meta)
        except Exception as e:  # the step's saves are stored from vLLM's cache instead
            self._contain("save_kv_layer", e)

    @override
    def wait_for_save(self) -> None:
        """Stores what this step computed (a failed store is counted and logged, never raised)."""
        if self.worker_side is None or not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        if not isinstance(meta, LMCacheNativeConnectorMetadata):
            return
        try:
            if self.layerwise is not None:
                self.layerwise.wait_for_save(meta)
            else:
                self.worker_side.wait_for_save(meta)
        except Exception as e:  # a lost store is only a later miss
            self._contain("wait_for_save", e)

    @override
    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        """Requests whose background work is done, as (sending, receiving) sets.

        The first set names finished requests whose blocks vLLM held for background stores
        and may free now, the second requests whose background loads are done; ``None`` for
        an empty set.
        """
        if self.worker_side is None:
            return None, None
        try:
            sending, recving = self.worker_side.get_finished(finished_req_ids)
        except Exception as e:
            self._contain("get_finished", e)
            return None, None
        return sending or None, recving or None

    @override
    def handle_preemptions(self, kv_connector_metadata: KVConnectorMetadata) -> None:
        """Before the forward: finishes the background stores of requests vLLM preempted.

        Their blocks may be given to other requests in this step.
        """
        if self.worker_side is None or not isinstance(
            kv_connector_metadata, LMCacheNativeConnectorMetadata
        ):
            return
        if not kv_connector_metadata.preempted:
            return
        try:
            self.worker_side.wait_saves(kv_connector_metadata.preempted)
        except Exception as e:
            self._contain("handle_preemptions", e)

    @override
    def get_block_ids_with_load_errors(self) -> set[int]:
        """Blocks this step's loads could not fill; vLLM recomputes them."""
        if self.worker_side is None:
            return set()
        try:
            if self.layerwise is not None:
                self.layerwise.finish_loads()  # every layer in, every failure reported
            return self.worker_side.take_load_errors()
        except Exception as e:
            self._contain("get_block_ids_with_load_errors", e)
            return set()

    # ==============================
    # vLLM's stats and KV events (see :mod:`.stats`)
    # ==============================

    @override
    def get_kv_connector_stats(self) -> KVConnectorStats | None:
        """This side's counters since the last call; ``None`` when nothing happened.

        vLLM sums the workers' and the scheduler's.
        """
        try:
            if self.worker_side is not None:
                return self.worker_side.take_vllm_stats()
            if self.scheduler_side is not None:
                return self.scheduler_side.vllm_stats.take()
        except Exception as e:  # stats never fail a step
            self._contain("get_kv_connector_stats", e)
        return None

    @classmethod
    @override
    def build_kv_connector_stats(
        cls, data: dict[str, Any] | None = None
    ) -> KVConnectorStats | None:
        """The stats object for ``data`` (what :meth:`get_kv_connector_stats` reported)."""
        return LMCacheNativeStats(data=dict(data or {}))

    @classmethod
    @override
    def build_prom_metrics(
        cls,
        vllm_config: VllmConfig,
        metric_types: dict[type[Any], type[Any]],
        labelnames: list[str],
        per_engine_labelvalues: dict[int, list[object]],
    ) -> KVConnectorPromMetrics | None:
        """The ``vllm:lmcache_native_*`` counters on vLLM's ``/metrics``."""
        return LMCacheNativePromMetrics(
            vllm_config, metric_types, labelnames, per_engine_labelvalues
        )

    @override
    def get_kv_connector_kv_cache_events(self) -> LMCacheNativeKVEvents | None:
        """Worker side: the ``BlockStored``/``BlockRemoved`` events since the last call."""
        if self.worker_side is None:
            return None
        try:
            return self.worker_side.take_events()
        except Exception as e:  # events never fail a step
            self._contain("get_kv_connector_kv_cache_events", e)
            return None

    @override
    def update_connector_output(self, connector_output: KVConnectorOutput) -> None:
        """Scheduler side: keeps the workers' KV events for :meth:`take_events`."""
        events = getattr(connector_output, "kv_cache_events", None)
        if self.scheduler_side is not None:
            self.scheduler_side.loads_finished(connector_output.finished_recving or ())
        if not isinstance(events, LMCacheNativeKVEvents):
            return
        self._kv_events.append(events)  # one step's, merged over the workers by vLLM

    @override
    def take_events(self) -> Iterable[KVCacheEvent]:
        """Scheduler side: the workers' KV events, for vLLM's KV event publisher.

        Each event is given once every worker reported it.
        """
        steps, self._kv_events = self._kv_events, []
        return [e for step in steps for e in step.aggregate().get_all_events()]

    @override
    def shutdown(self) -> None:
        """Stops the admin API and lookup server and closes the engine (or lookup client)."""
        try:
            if self.layerwise is not None:
                self.layerwise.close()
            if self.worker_side is not None:
                self.worker_side.close()
            if self.scheduler_side is not None:
                self.scheduler_side.close()
        except Exception as e:
            self._contain("shutdown", e)

    # ==============================
    # Scheduler side
    # ==============================

    @override
    def get_num_new_matched_tokens(
        self, request: Request, num_computed_tokens: int
    ) -> tuple[int | None, bool]:
        """Tokens beyond ``num_computed_tokens`` the workers can load, and whether it is async.

        A load runs in the background with ``enable_async_loading`` when a chunk of the hit is
        below the CPU tier.
        """
        if self.scheduler_side is None:
            return 0, False
        try:
            n = self.scheduler_side.get_num_new_matched_tokens(request, num_computed_tokens)
        except Exception as e:  # a failed lookup is a miss
            self._contain("get_num_new_matched_tokens", e)
            self.scheduler_side.forget_plan(request)
            return 0, False
        return n, bool(n) and self.scheduler_side.load_is_async(request)

    @override
    def update_state_after_alloc(
        self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int
    ) -> None:
        """Plans the load of the tokens vLLM accepted, into the blocks it allocated."""
        if self.scheduler_side is None:
            return
        try:
            self.scheduler_side.update_state_after_alloc(request, blocks, num_external_tokens)
        except Exception as e:  # the accepted tokens are reported, then recomputed
            self._contain("update_state_after_alloc", e)
            self.scheduler_side.plan_failed_load(request, blocks, num_external_tokens)

    @override
    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        """This step's loads and saves."""
        if self.scheduler_side is None:
            return LMCacheNativeConnectorMetadata()
        try:
            return self.scheduler_side.build_connector_meta(scheduler_output)
        except Exception as e:
            self._contain("build_connector_meta", e)
            return self.scheduler_side.salvage_meta()

    @override
    def request_finished(
        self, request: Request, block_ids: list[int]
    ) -> tuple[bool, dict[str, Any] | None]:
        """Whether vLLM must keep the request's blocks until its background stores are done.

        Only with ``enable_async_saving``; synchronous stores are done already.
        """
        if self.scheduler_side is not None:
            try:
                return self.scheduler_side.request_finished(request), None
            except Exception as e:
                self._contain("request_finished", e)
        return False, None
