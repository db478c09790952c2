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

Loads run in ``start_load_kv``, which vLLM calls before the forward of a step that has loads;
saves run in ``wait_for_save`` after the forward. Both go through the engine, whose native ops
run on the caller's current stream, i.e. vLLM's, so they are ordered with the forward's kernels.
A load that comes back shorter than planned, or fails, reports the blocks it could not fill, so
vLLM recomputes them instead of reading stale KV. No exception of a load or a store leaves the
worker side: a failed load is reported that way, a failed store is counted
(``lmcache_vllm_store_failures_total``) and logged once per cause.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from prometheus_client import CollectorRegistry, Counter
from vllm.distributed.kv_events import BlockRemoved, BlockStored

from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine import CacheEngine, EngineMetadata
from lmcache_native.engine.keys import ChunkSpan, KeyExtras
from lmcache_native.integration.vllm.layout import (
    CPU_BACKENDS,
    LayerGeometry,
    UnsupportedLayoutError,
    detect_layout,
)
from lmcache_native.integration.vllm.lookup import LookupServer
from lmcache_native.integration.vllm.metadata import (
    LMCacheNativeConnectorMetadata,
    LoadSpec,
    SaveSpec,
    slot_mapping,
    slot_range,
)
from lmcache_native.integration.vllm.stats import (
    MEDIUMS,
    LMCacheNativeKVEvents,
    LMCacheNativeStats,
)
from lmcache_native.ops import describe
from lmcache_native.stats.periodic import RunStats, ThreadLevel
from lmcache_native.storage.base import ChunkBufferLike

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.distributed.kv_events import KVCacheEvent
    from vllm.v1.kv_cache_interface import KVCacheConfig

logger = logging.getLogger("lmcache_native.integration.vllm")


@dataclass
class WorkerStats:
    """Counters of the worker side (read by tests, logs and the metrics).

    Attributes:
        load_requests: loads attempted.
        loaded_tokens: tokens written into vLLM's cache by loads.
        load_failed_tokens: planned tokens that could not be loaded (vLLM recomputes them).
        store_requests: store calls made.
        stored_tokens: tokens newly stored (chunks the engine did not hold yet).
        lookups: lookups answered for the scheduler.
        load_failures: loads that raised (reported to vLLM as failed blocks).
        store_failures: stores that raised.
        leases: leases taken by lookups (chunks held for a request until its load).
        leases_expired: leases that expired before their request loaded or finished.
    """

    load_requests: int = 0
    loaded_tokens: int = 0
    load_failed_tokens: int = 0
    store_requests: int = 0
    stored_tokens: int = 0
    lookups: int = 0
    load_failures: int = 0
    store_failures: int = 0
    leases: int = 0
    leases_expired: int = 0


class ConnectorMetrics:
    """The connector's Prometheus counters, in the engine's registry (served at ``/metrics``).

    Args:
        registry: the engine's ``metrics.registry``.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.lookups = Counter(
            "lmcache_vllm_lookups", "Scheduler lookups answered by this worker", registry=registry
        )
        self.lookup_tokens = Counter(
            "lmcache_vllm_lookup_loadable_tokens",
            "Tokens lookups reported loadable (listed in a tier's index)",
            registry=registry,
        )
        self.loaded_tokens = Counter(
            "lmcache_vllm_loaded_tokens",
            "Tokens loaded into vLLM's KV cache",
            registry=registry,
        )
        self.load_failed_tokens = Counter(
            "lmcache_vllm_load_failed_tokens",
            "Planned tokens a load could not fill (reported to vLLM as invalid blocks)",
            registry=registry,
        )
        self.stored_tokens = Counter(
            "lmcache_vllm_stored_tokens",
            "Tokens of vLLM's KV cache newly stored",
            registry=registry,
        )
        self.load_failures = Counter(
            "lmcache_vllm_load_failures",
            "Loads that raised (their blocks were reported to vLLM and recomputed)",
            registry=registry,
        )
        self.store_failures = Counter(
            "lmcache_vllm_store_failures",
            "Stores that raised (nothing more of that step's request was stored)",
            registry=registry,
        )


def parallel_rank() -> tuple[int, int]:
    """(rank, world size) of this worker among the workers of its vLLM engine (TP x PP)."""
    from vllm.distributed.parallel_state import get_pp_group, get_tp_group

    tp, pp = get_tp_group(), get_pp_group()
    return pp.rank_in_group * tp.world_size + tp.rank_in_group, tp.world_size * pp.world_size


def layer_geometry(
    vllm_config: VllmConfig, kv_cache_config: KVCacheConfig | None, layer_names: list[str]
) -> dict[str, LayerGeometry]:
    """What each attention layer's cache must hold, from vLLM's KV cache specs.

    Layers vLLM does not describe are left out (``detect_layout`` then refuses them).
    """
    from vllm.v1.kv_cache_interface import AttentionSpec, MLAAttentionSpec

    block_size = int(vllm_config.cache_config.block_size)
    specs: dict[str, Any] = {}
    if kv_cache_config is not None:
        for group in kv_cache_config.kv_cache_groups:
            for name in group.layer_names:
                specs[name] = group.kv_cache_spec
    layers = vllm_config.compilation_config.static_forward_context
    out: dict[str, LayerGeometry] = {}
    for name in layer_names:
        spec = specs.get(name)
        layer = layers.get(name)
        if not isinstance(spec, AttentionSpec) or layer is None:
            continue
        backend_cls = getattr(layer, "attn_backend", None)
        if backend_cls is None and hasattr(layer, "get_attn_backend"):
            backend_cls = layer.get_attn_backend()
        backend = backend_cls.get_name() if backend_cls is not None else "unknown"
        head_size_v = int(getattr(spec, "head_size_v", spec.head_size) or spec.head_size)
        if head_size_v != int(spec.head_size):
            continue  # K and V of different sizes: no layout of the native ops holds that
        out[name] = LayerGeometry(
            backend=backend,
            num_kv_heads=int(spec.num_kv_heads),
            head_size=int(spec.head_size),
            block_size=block_size,
            use_mla=isinstance(spec, MLAAttentionSpec),
            cpu_isa=(
                cpu_attention_isa(vllm_config, layer, spec) if backend in CPU_BACKENDS else None
            ),
        )
    return out


def cpu_attention_isa(vllm_config: VllmConfig, layer: Any, spec: Any) -> str | None:
    """The ISA vLLM's CPU attention uses for ``layer`` (it decides how K and V are packed).

    vLLM's CPU metadata builder sets ``layer.isa`` before the caches are registered; if it is
    missing, the same choice is asked of vLLM's ``_get_attn_isa``. ``None`` when neither is
    available (the layout is then refused rather than guessed).
    """
    isa = getattr(layer, "isa", None)
    if isinstance(isa, str):
        return isa
    try:
        from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

        return str(
            _get_attn_isa(
                vllm_config.model_config.dtype,  # type: ignore[arg-type]  # resolved by now
                int(spec.block_size),
                int(spec.head_size),
                vllm_config.cache_config.cache_dtype,
            )
        )
    except Exception as exc:  # any vLLM without that helper: the ISA is unknown
        logger.debug("CPU attention ISA unknown: %s", exc)
        return None


@dataclass
class _SaveState:
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


class WorkerSide:
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
        self._lookup: LookupServer | None = None
        self._last_lookup_time = 0.0
        self._bytes_per_token = 0
        self._device = torch.device("cpu")
        self._saves: dict[str, _SaveState] = {}
        self._load_errors: set[int] = set()
        self._failure_causes: set[tuple[str, str]] = set()
        self._load_raised = False
        self._leases: dict[str, _Lease] = {}
        self._lease_lock = threading.Lock()
        self.clock = time.monotonic
        # What vLLM's stats and KV events get (see :mod:`.stats`).
        self.vllm_stats = LMCacheNativeStats()
        kec = getattr(vllm_config, "kv_events_config", None)
        self.events_enabled = bool(getattr(kec, "enable_kv_cache_events", False))
        self._events: list[KVCacheEvent] = []
        # key -> (chunk hash bytes, tier name) of chunks stored and reported, newest last
        self._reported: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._tier_marks: dict[str, tuple[int, int]] = {}

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
        self._lookup = LookupServer.start(self.engine_id, self.rank, self.lookup)
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
        except Exception as e:  # noqa: BLE001 - vLLM runs on without the admin API
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
        """(stored prefix length in tokens, current ``min_retrieve_tokens``).

        Answered from the tiers' indexes (:meth:`CacheEngine.lookup_held`): no payload is read
        on the scheduler's path. The CPU-tier chunks reported are held for ``req_id`` (a lease)
        until its load, its end or the lease's expiry; a chunk listed only below the CPU tier
        is fetched and verified by the load, which reports its blocks to vLLM
        (``get_block_ids_with_load_errors``) when that fails, so vLLM recomputes them.
        """
        engine = self.engine
        if engine is None or not self.loads:
            return 0, 0
        self.release([req_id])
        self.expire_leases()
        self.stats.lookups += 1
        self._last_lookup_time = time.time()
        min_retrieve = int(self.config.get("min_retrieve_tokens"))
        held: list[ChunkBufferLike] = []
        loadable = int(engine.lookup_held(tokens, extras, held))
        if held and req_id:
            secs = float(self.config.extra("lookup_lease_secs", 30.0))
            with self._lease_lock:
                old = self._leases.pop(req_id, None)
                self._leases[req_id] = _Lease(self.clock() + secs, held)
            self.stats.leases += 1
            if old is not None:
                _unref_all(old.bufs)
        else:
            _unref_all(held)
        if self.metrics is not None:
            self.metrics.lookups.inc()
            self.metrics.lookup_tokens.inc(loadable)
        return loadable, min_retrieve

    # -- per step ----------------------------------------------------------------------------

    def disable(self, reason: str) -> None:
        """Turns the connector off in this worker (loads are reported failed, stores skipped)."""
        self.disabled_reason = reason
        engine, self.engine = self.engine, None
        if self._lookup is not None:
            self._lookup.stop()
            self._lookup = None
        if engine is not None:
            try:
                engine.close()
            except Exception as e:  # noqa: BLE001
                logger.debug("closing a disabled engine failed: %r", e)

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

    # -- leases ------------------------------------------------------------------------------

    def release(self, req_ids: Sequence[str]) -> None:
        """Lets the chunks held for ``req_ids`` go (their loads ran, or they finished)."""
        for req_id in req_ids:
            with self._lease_lock:
                lease = self._leases.pop(req_id, None)
            if lease is not None:
                _unref_all(lease.bufs)

    def expire_leases(self) -> None:
        """Lets the chunks of expired leases go."""
        now = self.clock()
        with self._lease_lock:
            gone = [r for r, lease in self._leases.items() if lease.expires <= now]
            leases = [self._leases.pop(r) for r in gone]
        for lease in leases:
            self.stats.leases_expired += 1
            _unref_all(lease.bufs)

    @property
    def leased_requests(self) -> list[str]:
        """Requests whose looked-up chunks are held now."""
        with self._lease_lock:
            return list(self._leases)

    def fail_loads(self, loads: list[LoadSpec]) -> None:
        """Reports every block of ``loads``' windows as not loaded."""
        for spec in loads:
            self._fail_load(spec, spec.start)

    def start_load_kv(self, meta: LMCacheNativeConnectorMetadata) -> None:
        """Loads every planned request of this step into vLLM's cache (before the forward).

        A load that raises reports its whole window (some of it may have been written). Each
        load releases its request's lease.
        """
        self.release(meta.released)
        self.expire_leases()
        if self.engine is None or not self.loads:
            self.fail_loads(meta.loads)
            self.release([s.req_id for s in meta.loads])
            return
        for spec in meta.loads:
            try:
                self._load(spec)
            except Exception as e:  # noqa: BLE001 - reported to vLLM, which recomputes
                self._failed("load", e)
                self._load_raised = True
                try:
                    self._fail_load(spec, spec.start)
                finally:
                    self._load_raised = False
            finally:
                self.release([spec.req_id])

    def _fail_load(self, spec: LoadSpec, first_missing: int) -> None:
        if first_missing >= spec.end:
            return
        first_block = first_missing // self.block_size
        last_block = (spec.end - 1) // self.block_size
        self._load_errors.update(spec.block_ids[first_block : last_block + 1])
        self.stats.load_failed_tokens += spec.end - first_missing
        if first_missing > spec.start or not self._load_raised:
            self.vllm_stats.add("failed_loads")  # a raised load was counted by ``_failed``
        if self.rank == 0:
            self.vllm_stats.add("failed_load_tokens", spec.end - first_missing)
        if self.metrics is not None:
            self.metrics.load_failed_tokens.inc(spec.end - first_missing)
        logger.warning(
            "LMCacheNativeConnector: request %s: tokens %d..%d could not be loaded; reported "
            "blocks %s to vLLM",
            spec.req_id,
            first_missing,
            spec.end,
            spec.block_ids[first_block : last_block + 1],
        )

    def _load(self, spec: LoadSpec) -> None:
        assert self.engine is not None
        n = len(spec.token_ids)
        if n < spec.end:  # the plan failed on the scheduler side: nothing to load
            self._fail_load(spec, spec.start)
            return
        held = min(n, len(spec.block_ids) * self.block_size)
        slots = torch.full((n,), -1, dtype=torch.int64)
        slots[:held] = slot_mapping(spec.block_ids, self.block_size, held)
        # Positions vLLM already holds, and past what it asked for, are left alone.
        slots[: spec.start] = -1
        slots[spec.end :] = -1
        t0 = time.perf_counter()
        result = self.engine.retrieve(spec.token_ids, slots, spec.extras)
        _sync(self._device)
        dt = time.perf_counter() - t0
        window = result.mask[spec.start : spec.end].to(torch.bool)
        missing = (~window).nonzero()
        first_missing = spec.end if missing.numel() == 0 else spec.start + int(missing[0, 0])
        loaded = first_missing - spec.start
        self.stats.load_requests += 1
        self.stats.loaded_tokens += loaded
        vs = self.vllm_stats
        vs.add("load_requests")
        vs.add("loaded_bytes", loaded * self._bytes_per_token)
        vs.add("load_seconds", dt)
        if self.rank == 0:
            vs.add("loaded_tokens", loaded)
        if self.metrics is not None:
            self.metrics.loaded_tokens.inc(loaded)
        self._fail_load(spec, first_missing)
        nbytes = loaded * self._bytes_per_token
        logger.info(
            "LMCacheNativeConnector retrieve %s: %d/%d tokens, %d bytes, %.3f ms, %.2f GB/s",
            spec.req_id,
            loaded,
            spec.end - spec.start,
            nbytes,
            dt * 1e3,
            nbytes / dt / 1e9 if dt > 0 else 0.0,
        )

    def wait_for_save(self, meta: LMCacheNativeConnectorMetadata) -> None:
        """Stores what this step computed (after the forward)."""
        self.release(meta.released)
        if self.engine is None or not self.saves:
            return
        save_decode = bool(self.config.get("save_decode_cache"))
        for spec in meta.saves:
            try:
                self._save(spec, save_decode)
            except Exception as e:  # noqa: BLE001 - a lost store is only a later miss
                self._failed("store", e)

    def _save(self, spec: SaveSpec, save_decode: bool) -> None:
        """Applies ``spec`` to the request's state and stores what is new.

        Only the tokens from the request's last full stored chunk on are hashed (the chain is
        continued from its hash) and handed to the engine, so a request's saves cost what they
        add.
        """
        engine = self.engine
        assert engine is not None
        st = self._saves.get(spec.req_id)
        if st is None or (spec.start == 0 and spec.block_start == 0):
            if spec.start != 0 or spec.block_start != 0:
                logger.debug("save of %s without its first part; skipped", spec.req_id)
                return
            st = _SaveState(extras=spec.extras, stored_upto=st.stored_upto if st else 0)
            self._saves[spec.req_id] = st
        if spec.start > len(st.tokens) or spec.block_start > len(st.block_ids):
            logger.warning("save of %s does not follow its last one; dropped", spec.req_id)
            self._saves.pop(spec.req_id, None)
            return
        del st.tokens[spec.start :]
        st.tokens.extend(spec.token_ids)
        del st.block_ids[spec.block_start :]
        st.block_ids.extend(spec.block_ids)
        if spec.start < st.hashed_upto:
            st.hashed_upto, st.prev_hash = 0, None
        total = len(st.tokens)
        n = total if save_decode else min(total, spec.num_prompt_tokens)
        if n <= st.stored_upto:
            return
        st.stored_upto = n
        begin = st.hashed_upto
        tokens = st.tokens[begin:n]
        slots = slot_range(st.block_ids, self.block_size, begin, n)
        chunk = engine.chunk_size
        full_end = n // chunk * chunk
        if full_end > begin:
            spans = engine.chunk_spans(
                st.tokens[begin:full_end], st.extras, offset=begin, prev_hash=st.prev_hash
            )
            next_hash: str | None = spans[-1].chunk_hash
        else:
            next_hash = st.prev_hash
        watch = self._watch_store(st, begin, n) if self.events_enabled else None
        t0 = time.perf_counter()
        result = engine.store(tokens, slots, st.extras, offset=begin, prev_hash=st.prev_hash)
        dt = time.perf_counter() - t0
        st.hashed_upto, st.prev_hash = max(begin, full_end), next_hash
        stored = int(result.num_stored_tokens)
        self.stats.store_requests += 1
        self.stats.stored_tokens += stored
        vs = self.vllm_stats
        vs.add("store_requests")
        vs.add("stored_bytes", stored * self._bytes_per_token)
        vs.add("save_seconds", dt)
        if self.rank == 0:
            vs.add("stored_tokens", stored)
        if watch is not None:
            self._stored_events(st, watch, stored)
        if self.metrics is not None:
            self.metrics.stored_tokens.inc(stored)
        nbytes = stored * self._bytes_per_token
        logger.info(
            "LMCacheNativeConnector store %s: %d/%d tokens, %d bytes, %.3f ms, %.2f GB/s%s",
            spec.req_id,
            stored,
            n,
            nbytes,
            dt * 1e3,
            nbytes / dt / 1e9 if dt > 0 else 0.0,
            f" ({result.reason})" if result.reason else "",
        )

    # -- vLLM's stats and KV events ------------------------------------------------------------

    def take_vllm_stats(self) -> LMCacheNativeStats | None:
        """The counters since the last call (``None`` when nothing happened)."""
        return self.vllm_stats.take()

    def _event_tier(self) -> Any:
        """The tier a store writes first (whose events are reported), or ``None``."""
        engine = self.engine
        if engine is None:
            return None
        storage = engine.storage
        for name in engine.all_backends():
            if storage.is_bypassed(name):
                continue
            tier = storage.backend(name)
            if tier is storage.cpu and not getattr(tier, "hot_cache_enabled", True):
                continue
            return tier
        return None

    def _watch_store(self, st: _SaveState, begin: int, n: int) -> _StoreWatch:
        """Before a store: the tier, the chunks of ``st.tokens[begin:n]``, which it holds."""
        engine = self.engine
        assert engine is not None
        tier = self._event_tier()
        parent = bytes.fromhex(st.prev_hash) if st.prev_hash else None
        spans = engine.chunk_spans(
            st.tokens[begin:n], st.extras, offset=begin, prev_hash=st.prev_hash
        )
        if tier is None or not spans:
            return _StoreWatch(tier, parent, [], [], [])
        keys = engine.span_keys(spans)
        return _StoreWatch(tier, parent, spans, keys, tier.batched_contains(keys))

    def _stored_events(self, st: _SaveState, watch: _StoreWatch, stored: int) -> None:
        """``BlockStored`` for the chunks the store just wrote (those the tier lacked, in order,
        as far as the stored token count reaches)."""
        tier = watch.tier
        if tier is None or stored <= 0:
            return
        medium = MEDIUMS.get(tier.name, tier.name)
        lora = st.extras
        parent = watch.parent
        left = stored
        for span, key, present in zip(watch.spans, watch.keys, watch.had, strict=True):
            h = bytes.fromhex(span.chunk_hash)
            if not present and left >= span.num_tokens:
                left -= span.num_tokens
                self._events.append(
                    BlockStored(
                        block_hashes=[h],
                        parent_block_hash=parent,
                        token_ids=[int(t) for t in st.tokens[span.start : span.end]],
                        block_size=span.num_tokens,
                        lora_id=lora.lora_id if lora is not None else None,
                        medium=medium,
                        lora_name=lora.lora_name if lora is not None else None,
                    )
                )
                self._reported[key] = (h, tier.name)
                self._reported.move_to_end(key)
                if len(self._reported) > _REPORTED_MAX:
                    self._reported.popitem(last=False)
            parent = h

    def _removed_events(self) -> None:
        """``BlockRemoved`` for reported chunks their tier no longer holds (asked only when a
        tier's evictions or size went down since the last check)."""
        engine = self.engine
        if engine is None or not self._reported:
            return
        storage = engine.storage
        by_tier: dict[str, list[str]] = {}
        for key, (_, name) in self._reported.items():
            by_tier.setdefault(name, []).append(key)
        for name, keys in by_tier.items():
            try:
                tier = storage.backend(name)
            except Exception:  # noqa: BLE001 - a tier that went away
                continue
            st = tier.stats()
            mark = (int(st.get("evictions", 0)), int(st.get("num_chunks", 0)))
            old = self._tier_marks.get(name)
            self._tier_marks[name] = mark
            if old is not None and mark[0] == old[0] and mark[1] >= old[1]:
                continue
            gone = [
                k for k, held in zip(keys, tier.batched_contains(keys), strict=True) if not held
            ]
            if not gone:
                continue
            hashes: list[bytes | int] = [self._reported.pop(k)[0] for k in gone]
            self._events.append(BlockRemoved(block_hashes=hashes, medium=MEDIUMS.get(name, name)))

    def take_events(self) -> LMCacheNativeKVEvents | None:
        """This worker's KV events since the last call (``None`` when there are none)."""
        if not self.events_enabled:
            return None
        self._removed_events()
        if not self._events:
            return None
        events, self._events = self._events, []
        return LMCacheNativeKVEvents(num_workers=1, events=events)

    def finished(self, finished_req_ids: set[str]) -> None:
        """Forgets requests vLLM finished (and lets their held chunks go)."""
        self.release(list(finished_req_ids))
        for req_id in finished_req_ids:
            self._saves.pop(req_id, None)

    def take_load_errors(self) -> set[int]:
        """Blocks that loads of this step could not fill (then forgotten)."""
        errors, self._load_errors = self._load_errors, set()
        return errors

    def close(self) -> None:
        """Stops the admin API and the lookup server, lets every lease go, closes the engine."""
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


_REPORTED_MAX = 65536  # stored chunks followed for BlockRemoved events


@dataclass
class _StoreWatch:
    """A tier's index before a store: which of the store's chunks it already held."""

    tier: Any
    parent: bytes | None  # the chain hash before the first chunk
    spans: list[ChunkSpan]
    keys: list[str]
    had: list[bool]


def _unref_all(bufs: Sequence[ChunkBufferLike]) -> None:
    for b in bufs:
        b.unref()
