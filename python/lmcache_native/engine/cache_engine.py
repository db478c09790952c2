"""CacheEngine: store, retrieve and look up KV chunks of vLLM's paged cache.

One engine per vLLM worker. It owns the registered per-layer paged caches, the chunk-buffer
pool, the storage tiers (through :class:`~lmcache_native.storage.StorageManager`), the chunk
statistics and the metrics. This module keeps registration, keys, retrieve, lookup and
close; the rest lives beside it:

* :mod:`.stores`: store, and the same store in two steps (copy out, then commit; :mod:`.staged`);
* :mod:`.transfer`: the batched copies (``ops.paged_kv_gather_chunks`` on store,
  ``ops.paged_kv_scatter_chunks`` on retrieve) and what happens when the pool runs out;
* :mod:`.slots`: the one slot-mapping check;
* :mod:`.switches`: freeze, hot cache, bypass, slot logging, clear, flush (a base class);
* :mod:`.admin`: checksums (``ops.kv_chunk_md5``), cache info, ``/meta``;
* :mod:`.monitoring`: background threads and storage gauges;
* :mod:`lmcache_native.storage.factory` builds the tiers, and
  :mod:`lmcache_native.storage.fs_import` loads an ``fs://`` store into the CPU tier.

Thread safety: the admin API calls the engine from its threads while vLLM stores and
retrieves. Engine state (registered caches, switches) is guarded by one lock; each call takes a
snapshot of it and copies outside the lock. Buffers are reference-counted, so a concurrent
``clear`` or eviction never frees memory that a retrieve is still scattering from.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lmcache_native import ops
from lmcache_native.config import LMCacheEngineConfig, size_bytes
from lmcache_native.engine.admin import EngineViews
from lmcache_native.engine.fetch import ReadAhead
from lmcache_native.engine.keys import ChunkNamer, ChunkSpan, KeyExtras, tokens_to_array
from lmcache_native.engine.memory import ChunkBufferPool
from lmcache_native.engine.metadata import EngineMetadata, RetrieveResult
from lmcache_native.engine.monitoring import start_background_threads, storage_gauges
from lmcache_native.engine.slots import check_slot_mapping, list_to_array
from lmcache_native.engine.stores import EngineStores
from lmcache_native.engine.switches import EngineSwitches
from lmcache_native.engine.transfer import CopyRequest, KVState, Transfer
from lmcache_native.errors import NoKVCacheError
from lmcache_native.stats.chunk_statistics import ChunkStatistics
from lmcache_native.stats.metrics import EngineMetrics
from lmcache_native.storage import StorageBackend, StorageManager
from lmcache_native.storage.base import ChunkBufferLike
from lmcache_native.storage.factory import build_tiers

logger = logging.getLogger(__name__)


class CacheEngine(EngineSwitches, EngineViews, EngineStores):
    """The KV-cache engine of one worker.

    Args:
        config: the engine configuration (kept by reference; runtime updates reach the engine).
        metadata: model name, world size and worker id (they name the chunk keys).
        backends: tiers to use instead of the ones the config names (tests, embedding).
    """

    def __init__(
        self,
        config: LMCacheEngineConfig,
        metadata: EngineMetadata,
        backends: Sequence[StorageBackend] | None = None,
    ) -> None:
        """Builds the tiers (or takes ``backends``), the pool, metrics and statistics."""
        self._config = config
        self._metadata = metadata
        self._lock = threading.RLock()
        self._kv: KVState | None = None
        self._record_slot = False
        self._closed = False
        self._chunk_size = int(config.get("chunk_size"))
        self._names = ChunkNamer(
            str(config.get("pre_caching_hash_algorithm")),
            self._chunk_size,
            (metadata.model_name, metadata.world_size, metadata.worker_id),
            lambda: bool(config.get("save_unfull_chunk")),
        )
        self._pool = ChunkBufferPool(size_bytes(config.get("max_local_cpu_size")), pin_memory=False)
        self._namespace = f"{metadata.model_name}@{metadata.world_size}@{metadata.worker_id}@"
        self.metrics = EngineMetrics()
        if backends is None:
            backends = build_tiers(
                config,
                self._allocate,
                namespace=self._namespace,
                worker_id=metadata.worker_id,
                world_size=metadata.world_size,
            )
        self._manager = StorageManager(
            backends, self._pool, writer_queue_size=int(config.get("writer_queue_size"))
        )
        self._transfer = Transfer(self._manager, self.metrics)
        self.metrics.bind_storage(self._manager.stats, storage_gauges(self._pool, self._manager))
        self.statistics = ChunkStatistics(config)
        self.background_threads, self._stats_thread = start_background_threads(
            self._manager, self.statistics, config
        )
        self.metrics.bind_engine(
            {
                "model_name": metadata.model_name,
                "worker_id": str(metadata.worker_id),
                "role": metadata.role,
                "served_model_name": metadata.served_model_name or "",
            },
            health=self.is_healthy,
            statistics=self._statistics_status,
            threads=self.background_threads.summary,
        )
        config.on_change(self._on_config_change)
        logger.info(
            "CacheEngine %s: chunk_size=%d, tiers=%s",
            self._namespace,
            self._chunk_size,
            self._manager.backend_names(),
        )

    def _allocate(self, shape: Sequence[int], dtype: torch.dtype) -> ChunkBufferLike | None:
        return self._manager.allocate(shape, dtype)

    def _statistics_status(self) -> dict[str, Any] | None:
        return self.statistics.status() if self.statistics.available else None

    def is_healthy(self) -> bool:
        """No tier is down, no critical/high background thread is unhealthy, not closed."""
        if self._closed:
            return False
        for tier in self._manager.backends:
            if getattr(tier, "is_down", False) is True:
                return False
        return not self.background_threads.unhealthy()

    def _on_config_change(self, name: str, value: Any) -> None:
        """A runtime config change: the pool follows the CPU size; each tier its own keys."""
        if name == "max_local_cpu_size":
            self._pool.set_capacity(size_bytes(value))
        for tier in self._manager.backends:
            tier.apply_config(name, value)

    # -- registration --------------------------------------------------------------------------

    def register_kv_caches(self, kv_caches: Mapping[str, torch.Tensor], layout: str) -> None:
        """Registers vLLM's per-layer paged caches.

        Args:
            kv_caches: layer name -> that layer's paged cache, in layer order; all layers with
                the same shape, strides, dtype and device, shaped as ``layout`` requires.
            layout: one of ``lmcache_native.ops.LAYOUTS``.

        Raises:
            ValueError / TypeError: the caches do not fit ``layout`` (from ``ops.describe``).
        """
        names = [str(n) for n in kv_caches]
        caches = list(kv_caches.values())
        paged = ops.describe(caches, layout)
        with self._lock:
            self._kv = KVState(names, caches, layout, paged)
            self._pool.set_pin_memory(paged.device.type == "cuda")
            if self._metadata.kv_dtype is None:
                self._metadata.kv_dtype = paged.dtype
        logger.info(
            "CacheEngine: registered %d layers, layout %s, %d slots, dtype %s, device %s",
            paged.num_layers,
            layout,
            paged.num_slots,
            paged.dtype,
            paged.device,
        )

    @property
    def has_kv_caches(self) -> bool:
        """Whether KV caches are registered."""
        return self._kv is not None

    def _require_kv(self) -> KVState:
        """The registered caches; raises NoKVCacheError when none are."""
        kv = self._kv
        if kv is None:
            raise NoKVCacheError()
        return kv

    def registered_kv(self) -> KVState:
        """The registered caches: their names, the layout's views of them and the layout.

        Raises:
            NoKVCacheError: none registered.
        """
        return self._require_kv()

    @property
    def num_slots(self) -> int:
        """Slots per layer of the registered cache.

        Raises:
            NoKVCacheError: none registered.
        """
        return self._require_kv().paged.num_slots

    @property
    def layer_names(self) -> list[str]:
        """Registered layer names in layer order (empty when none are registered)."""
        kv = self._kv
        return list(kv.names) if kv is not None else []

    @property
    def config(self) -> LMCacheEngineConfig:
        """The engine's configuration."""
        return self._config

    @property
    def metadata(self) -> EngineMetadata:
        """The engine's metadata."""
        return self._metadata

    @property
    def storage(self) -> StorageManager:
        """The storage manager (tiers, bypass, flush)."""
        return self._manager

    @property
    def pool(self) -> ChunkBufferPool:
        """The chunk-buffer pool."""
        return self._pool

    # -- keys ----------------------------------------------------------------------------------

    @property
    def chunk_size(self) -> int:
        """Tokens per chunk (fixed for the engine's life)."""
        return self._chunk_size

    def _key_dtype(self) -> torch.dtype:
        kv = self._kv
        if kv is not None:
            return kv.paged.dtype
        if self._metadata.kv_dtype is not None:
            return self._metadata.kv_dtype
        raise NoKVCacheError("No KV cache is registered and metadata has no kv_dtype")

    def chunk_spans(
        self,
        tokens: Sequence[int] | torch.Tensor,
        extras: KeyExtras | None = None,
        offset: int = 0,
        prev_hash: str | None = None,
    ) -> list[ChunkSpan]:
        """The chunks of ``tokens`` (from request position ``offset``) and their hashes.

        See :meth:`~lmcache_native.engine.keys.ChunkHasher.spans`.
        """
        return self._names.spans(tokens, extras, offset, prev_hash)

    def chunk_keys(
        self, tokens: Sequence[int] | torch.Tensor, extras: KeyExtras | None = None
    ) -> list[str]:
        """The keys of ``tokens``' chunks (the tail only when ``save_unfull_chunk``).

        ``extras`` (salt, LoRA adapter, multimodal items) are part of the keys when given.
        """
        return self.span_keys(self._names.spans(tokens, extras))

    def span_keys(self, spans: Sequence[ChunkSpan]) -> list[str]:
        """The keys of chunks given by :meth:`chunk_spans` (no hashing again)."""
        return self._names.keys(spans, self._key_dtype())

    # -- copies ---------------------------------------------------------------------------------

    def _begin_copy(
        self, op: str, tokens: Sequence[int] | torch.Tensor, slot_mapping: torch.Tensor
    ) -> tuple[KVState, np.ndarray, torch.Tensor]:
        """Counts an ``op`` request (store/retrieve) and checks its arguments.

        Returns:
            The registered caches, ``tokens`` as an array, and ``slot_mapping`` as a checked CPU
            int64 copy (logged when slot recording is on).

        Raises:
            NoKVCacheError: no caches registered.
            InvalidSlotsError: a slot outside the cache.
        """
        self.metrics.requests.labels(op=op).inc()
        kv = self._require_kv()
        arr = tokens_to_array(tokens)
        slots = check_slot_mapping(slot_mapping, int(arr.shape[0]), kv.paged.num_slots)
        if self._record_slot:
            logger.info(
                "kvcache %s slot_mapping (%d slots): %s",
                op,
                slots.numel(),
                ops.compress_slot_mapping(slots),
            )
        return kv, arr, slots

    # -- lookup ---------------------------------------------------------------------------------

    def _lookup_keys(
        self, tokens: Sequence[int] | torch.Tensor | np.ndarray, extras: KeyExtras | None
    ) -> tuple[int, list[ChunkSpan], list[str]]:
        """Counts a lookup request; the number of tokens, their chunks and keys."""
        self.metrics.requests.labels(op="lookup").inc()
        arr = tokens_to_array(list_to_array(tokens))
        spans = self._names.spans(arr, extras)
        return int(arr.shape[0]), spans, self._names.keys(spans, self._key_dtype())

    def _lookup_done(self, t0: float, num_tokens: int, spans: list[ChunkSpan], hit: int) -> int:
        """Counts a lookup's tokens, hit tokens and time; the hit in tokens."""
        hit_tokens = spans[hit - 1].end if hit else 0
        self.metrics.lookup_tokens.inc(num_tokens)
        self.metrics.lookup_hit_tokens.inc(hit_tokens)
        self.metrics.observe_op("lookup", time.perf_counter() - t0, hit_tokens)
        return hit_tokens

    def lookup(self, tokens: Sequence[int] | torch.Tensor, extras: KeyExtras | None = None) -> int:
        """How many leading tokens of ``tokens`` are stored (whole chunks, across tiers).

        While frozen only the CPU tier counts. ``extras`` are part of the keys when given.
        """
        t0 = time.perf_counter()
        n, spans, keys = self._lookup_keys(tokens, extras)
        return self._lookup_done(t0, n, spans, self._manager.lookup_prefix(keys))

    def lookup_held(
        self,
        tokens: Sequence[int] | torch.Tensor | np.ndarray,
        extras: KeyExtras | None = None,
        held: list[ChunkBufferLike] | None = None,
    ) -> int:
        """Like :meth:`lookup`, answered from the tiers' indexes only, holding what it found.

        See :meth:`.transfer.Transfer.lookup_held`: no payload is read or verified; with
        ``held``, the CPU-tier buffers of the reported prefix are appended, one reference each.
        """
        t0 = time.perf_counter()
        n, spans, keys = self._lookup_keys(tokens, extras)
        return self._lookup_done(t0, n, spans, self._transfer.lookup_held(keys, held))

    def prefetch(
        self, tokens: Sequence[int] | torch.Tensor, extras: KeyExtras | None = None, start: int = 0
    ) -> int:
        """Starts reading the chunks of ``tokens`` past ``start`` up into the CPU tier; no wait.

        For loads about to happen one after another (the requests of one vLLM step): their
        disk reads and Redis GETs run at once on the reader threads, and each
        :meth:`retrieve` waits for a read started here instead of repeating it. Chunks the
        CPU tier holds, and all chunks while it is off, bypassed or not keeping reads, are
        left alone. Returns how many reads were started.
        """
        arr = tokens_to_array(list_to_array(tokens))
        spans = [s for s in self._names.spans(arr, extras) if s.end > start]
        return self._transfer.promote(self._names.keys(spans, self._key_dtype()))

    def read_ahead(self, keys: Sequence[str]) -> ReadAhead:
        """Reads for a run of ``get`` calls over ``keys``, those below the CPU tier ahead.

        ``ReadAhead.get(key)`` answers as ``storage.get(key)`` does, in any order; close it
        when done (what was read ahead and not taken is released).
        """
        return self._transfer.read_ahead(keys)

    def retrieve(
        self,
        tokens: Sequence[int] | torch.Tensor,
        slot_mapping: torch.Tensor,
        extras: KeyExtras | None = None,
    ) -> RetrieveResult:
        """Loads the longest stored prefix of ``tokens`` into the paged cache.

        Chunks are fetched in order (CPU tier first, lower tiers promoted into it) and
        scattered into their slots until the first chunk that no tier has (see
        :meth:`.transfer.Transfer.retrieve`). Slots of -1 are left untouched (vLLM passes -1
        for tokens it already holds). Nothing is loaded when the stored prefix is shorter than
        ``min_retrieve_tokens``. The tokens asked for, the call's time and speed are recorded.

        Args:
            tokens: the request's token ids, ``[num_tokens]``.
            slot_mapping: ``[num_tokens]`` int slots to load into (any device).
            extras: salt, LoRA adapter, multimodal items (part of the keys).

        Returns:
            The number of tokens loaded and ``mask`` (``[num_tokens]`` bool, CPU) marking the
            loaded prefix.

        Raises:
            NoKVCacheError: no caches registered.
            InvalidSlotsError: a slot outside the cache.
        """
        t0 = time.perf_counter()
        result = self._retrieve(tokens, slot_mapping, extras)
        self.metrics.observe_op("retrieve", time.perf_counter() - t0, result.num_retrieved)
        self.metrics.retrieve_requested_tokens.inc(result.num_tokens)
        return result

    def _retrieve(
        self,
        tokens: Sequence[int] | torch.Tensor,
        slot_mapping: torch.Tensor,
        extras: KeyExtras | None,
    ) -> RetrieveResult:
        kv, arr, slots = self._begin_copy("retrieve", tokens, slot_mapping)
        n = int(arr.shape[0])
        mask = torch.zeros(n, dtype=torch.bool)
        spans = self._names.spans(arr, extras)
        keys = self._names.keys(spans, kv.paged.dtype)
        min_tokens = int(self._config.get("min_retrieve_tokens"))
        if min_tokens > 0:
            hit = self._manager.lookup_prefix(keys)
            hit_tokens = spans[hit - 1].end if hit else 0
            if hit_tokens < min_tokens:
                self.metrics.miss_chunks.inc(len(spans))
                return RetrieveResult(n, 0, mask, "below min_retrieve_tokens")
            spans, keys = spans[:hit], keys[:hit]
        slot_mapping_dev = slot_mapping if isinstance(slot_mapping, torch.Tensor) else slots
        loaded = self._transfer.retrieve(CopyRequest(kv, slot_mapping_dev, slots, spans, keys))
        mask[:loaded] = True
        return RetrieveResult(n, loaded, mask)

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Finishes queued writes, stops the writer, closes the tiers. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._config.remove_listener(self._on_config_change)
        if self._stats_thread is not None:
            self._stats_thread.stop()
        self._transfer.close()
        self._manager.close()

    def __enter__(self) -> CacheEngine:
        """The engine itself; closed on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Closes the engine."""
        self.close()
