"""CacheEngine: store, retrieve and look up KV chunks of vLLM's paged cache.

One engine per vLLM worker. It owns the registered per-layer paged caches, the chunk-buffer
pool, the storage tiers (through :class:`~lmcache_native.storage.StorageManager`), the chunk
statistics and the metrics. Every KV copy goes through the native ops:
``ops.paged_kv_gather`` (store) and ``ops.paged_kv_scatter`` (retrieve), one call per chunk
covering all layers; checksums use ``ops.kv_chunk_md5``.

Thread safety: the admin API calls the engine from its threads while vLLM stores and
retrieves. Engine state (registered caches, switches) is guarded by one lock; each call takes a
snapshot of it and copies outside the lock. Buffers are reference-counted, so a concurrent
``clear`` or eviction never frees memory that a retrieve is still scattering from.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np
import torch
import yaml

from lmcache_native import ops
from lmcache_native.config import MAX_CONFIG_FILE_BYTES, LMCacheEngineConfig
from lmcache_native.engine.keys import (
    CacheKey,
    ChunkHasher,
    ChunkSpan,
    KeyExtras,
    dtype_name,
    tokens_to_array,
)
from lmcache_native.engine.memory import ChunkBuffer, ChunkBufferPool
from lmcache_native.engine.metadata import EngineMetadata, RetrieveResult, StoreResult
from lmcache_native.engine.slots import (
    batch_slots,
    check_slot_mapping,
    list_to_array,
    padding_counts,
)
from lmcache_native.errors import (
    ConfigError,
    CorruptChunkError,
    FSChunkLoadError,
    NoKVCacheError,
)
from lmcache_native.stats.chunk_statistics import ChunkStatistics
from lmcache_native.stats.metrics import EngineMetrics
from lmcache_native.stats.periodic import (
    PeriodicThread,
    PeriodicThreadRegistry,
    RunStats,
    ThreadLevel,
)
from lmcache_native.stats.redact import redact_value
from lmcache_native.storage import (
    LocalCPUBackend,
    LocalDiskBackend,
    RemoteBackend,
    StorageBackend,
    StorageManager,
)
from lmcache_native.storage.base import ChunkBufferLike
from lmcache_native.storage.remote import fs_url_path
from lmcache_native.storage.serde import CHUNK_SUFFIX, chunk_filename, is_temp_file, read_chunk_file

logger = logging.getLogger(__name__)

GB = 1024**3


@dataclass(frozen=True)
class _KVState:
    """A snapshot of the registered caches."""

    names: list[str]
    caches: list[torch.Tensor]
    layout: str
    paged: ops.PagedKV

    def chunk_shape(self, num_tokens: int) -> tuple[int, int, int, int]:
        return self.paged.chunk_shape(num_tokens)


class CacheEngine:
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
        self._config = config
        self._metadata = metadata
        self._lock = threading.RLock()
        self._kv: _KVState | None = None
        self._record_slot = False
        self._closed = False
        self._hasher = ChunkHasher(str(config.get("pre_caching_hash_algorithm")))
        self._chunk_size = int(config.get("chunk_size"))
        cpu_bytes = int(float(config.get("max_local_cpu_size")) * GB)
        self._pool = ChunkBufferPool(cpu_bytes, pin_memory=False)
        self._namespace = f"{metadata.model_name}@{metadata.world_size}@{metadata.worker_id}@"
        self.metrics = EngineMetrics()
        tiers = list(backends) if backends is not None else self._build_tiers(cpu_bytes)
        self._manager = StorageManager(
            tiers,
            self._pool,
            writer_queue_size=int(config.get("writer_queue_size")),
        )
        self.metrics.bind_storage(self._manager.stats, self._extra_gauges)
        self.statistics = ChunkStatistics(config)
        self.background_threads = PeriodicThreadRegistry()
        self._register_background_threads()
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

    # -- construction --------------------------------------------------------------------------

    def _allocate(self, shape: Sequence[int], dtype: torch.dtype) -> ChunkBuffer | None:
        return self._manager.allocate(shape, dtype)  # type: ignore[return-value]

    def _build_tiers(self, cpu_bytes: int) -> list[StorageBackend]:
        cfg = self._config
        policy = str(cfg.get("cache_policy"))
        tiers: list[StorageBackend] = []
        if cfg.get("local_cpu"):
            tiers.append(LocalCPUBackend(cpu_bytes, policy))
        disk = cfg.get("local_disk")
        if disk:
            path = Path(disk)
            if self._metadata.world_size > 1:
                # NOTE: one directory per worker; a disk tier's index belongs to one engine.
                path = path / f"worker{self._metadata.worker_id}"
            tiers.append(
                LocalDiskBackend(
                    path,
                    int(float(cfg.get("max_local_disk_size")) * GB),
                    self._allocate,
                    policy,
                    fsync=bool(cfg.get("local_disk_fsync")),
                )
            )
        url = cfg.get("remote_url")
        if url:
            tiers.append(
                RemoteBackend(
                    url,
                    self._allocate,
                    timeout_secs=float(cfg.get("blocking_timeout_secs")),
                    namespace=self._namespace,
                    retry_interval_secs=float(cfg.get("remote_retry_interval_secs")),
                    extra_config=cfg.get("extra_config"),
                )
            )
        return tiers

    def _register_background_threads(self) -> None:
        """Registers the storage writer and starts the chunk statistics auto-exit check."""
        manager = self._manager

        def writer_runs() -> RunStats:
            done, failed, last = manager.writer_stats()
            return RunStats(
                total_runs=done,
                failed_runs=failed,
                last_run_time=last,
                message=f"{manager.pending_writes()} writes queued",
            )

        if manager.writer_thread is not None:
            self.background_threads.register_probe(
                "lmcache-storage-writer",
                ThreadLevel.HIGH,
                lambda: manager.writer_thread,
                writer_runs,
                stopped=lambda: manager.closed,
            )
        self._stats_thread: PeriodicThread | None = None
        if self.statistics.available:
            interval = float(self._config.get("chunk_statistics_auto_exit_check_secs"))
            stats = self.statistics

            def check_auto_exit() -> str:
                return "collecting" if stats.is_collecting else "not collecting"

            self._stats_thread = PeriodicThread(
                "chunk-statistics-auto-exit", interval, check_auto_exit, ThreadLevel.LOW
            )
            self.background_threads.register(self._stats_thread)
            self._stats_thread.start()

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
        if name == "max_local_cpu_size":
            nbytes = int(float(value) * GB)
            self._pool.set_capacity(nbytes)
            if self._manager.cpu is not None:
                self._manager.cpu.set_capacity(nbytes)
        elif name == "max_local_disk_size":
            for b in self._manager.backends:
                if isinstance(b, LocalDiskBackend):
                    b.set_capacity(int(float(value) * GB))
        elif name == "blocking_timeout_secs":
            for b in self._manager.backends:
                if isinstance(b, RemoteBackend):
                    b.set_timeout(float(value))

    def _extra_gauges(self) -> dict[str, tuple[float, str, bool]]:
        ps = self._pool.stats()
        return {
            "pool_used_bytes": (ps["used_bytes"], "Bytes of live chunk buffers", False),
            "pool_capacity_bytes": (ps["capacity_bytes"], "Chunk-buffer pool budget", False),
            "pool_cached_bytes": (ps["cached_bytes"], "Freed buffers kept for reuse", False),
            "write_queue_pending": (
                self._manager.pending_writes(),
                "Disk/remote writes queued",
                False,
            ),
            "write_queue_dropped": (
                self._manager.dropped_writes,
                "Disk/remote writes dropped because the queue was full",
                True,
            ),
        }

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
            self._kv = _KVState(names, caches, layout, paged)
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

    def _require_kv(self) -> _KVState:
        kv = self._kv
        if kv is None:
            raise NoKVCacheError()
        return kv

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

    def _key_dtype(self, kv: _KVState | None) -> str:
        if kv is not None:
            return dtype_name(kv.paged.dtype)
        if self._metadata.kv_dtype is not None:
            return dtype_name(self._metadata.kv_dtype)
        raise NoKVCacheError("No KV cache is registered and metadata has no kv_dtype")

    def _spans(
        self,
        tokens: np.ndarray,
        save_unfull: bool,
        extras: KeyExtras | None = None,
        offset: int = 0,
        prev_hash: str | None = None,
    ) -> list[ChunkSpan]:
        return self._hasher.spans(
            tokens, self._chunk_size, save_unfull, extras, offset=offset, prev_hash=prev_hash
        )

    @property
    def chunk_size(self) -> int:
        """Tokens per chunk (fixed for the engine's life)."""
        return self._chunk_size

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
        return self._spans(
            tokens_to_array(tokens),
            bool(self._config.get("save_unfull_chunk")),
            extras,
            offset,
            prev_hash,
        )

    def _keys(self, spans: Sequence[ChunkSpan], dtype: str) -> list[str]:
        m = self._metadata
        return [
            CacheKey(m.model_name, m.world_size, m.worker_id, s.chunk_hash, dtype).to_string()
            for s in spans
        ]

    def chunk_keys(
        self, tokens: Sequence[int] | torch.Tensor, extras: KeyExtras | None = None
    ) -> list[str]:
        """The keys of ``tokens``' chunks (the tail only when ``save_unfull_chunk``).

        ``extras`` (salt, LoRA adapter, multimodal items) are part of the keys when given.
        """
        spans = self._spans(
            tokens_to_array(tokens), bool(self._config.get("save_unfull_chunk")), extras
        )
        return self._keys(spans, self._key_dtype(self._kv))

    def span_keys(self, spans: Sequence[ChunkSpan]) -> list[str]:
        """The keys of chunks given by :meth:`chunk_spans` (no hashing again)."""
        return self._keys(spans, self._key_dtype(self._kv))

    # -- slots ---------------------------------------------------------------------------------

    def _log_slots(self, op: str, slots: torch.Tensor) -> None:
        if self._record_slot:
            logger.info(
                "kvcache %s slot_mapping (%d slots): %s",
                op,
                slots.numel(),
                ops.compress_slot_mapping(slots),
            )

    def _begin_copy(
        self, op: str, tokens: Sequence[int] | torch.Tensor, slot_mapping: torch.Tensor
    ) -> tuple[_KVState, np.ndarray, torch.Tensor]:
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
        self._log_slots(op, slots)
        return kv, arr, slots

    # -- store ---------------------------------------------------------------------------------

    def store(
        self,
        tokens: Sequence[int] | torch.Tensor,
        slot_mapping: torch.Tensor,
        extras: KeyExtras | None = None,
        *,
        offset: int = 0,
        prev_hash: str | None = None,
    ) -> StoreResult:
        """Copies the KV of ``tokens`` out of the paged cache into storage (see
        :meth:`_store`); the call's time and speed are recorded.

        ``extras`` are mixed into the keys; ``offset``/``prev_hash`` continue a request's chain
        from a chunk boundary (``tokens`` then start at request position ``offset``).
        """
        t0 = time.perf_counter()
        result = self._store(tokens, slot_mapping, extras, offset, prev_hash)
        self.metrics.observe_op("store", time.perf_counter() - t0, result.num_stored_tokens)
        return result

    def _store(
        self,
        tokens: Sequence[int] | torch.Tensor,
        slot_mapping: torch.Tensor,
        extras: KeyExtras | None = None,
        offset: int = 0,
        prev_hash: str | None = None,
    ) -> StoreResult:
        """Copies the KV of ``tokens`` out of the paged cache into storage.

        Chunks the CPU tier holds are skipped; a chunk only a lower tier lists is copied again
        and that tier's copy rewritten (it was not loaded from there, so it may be corrupt or
        gone); without a CPU tier, chunks any active tier lists are skipped. The last chunk is
        stored only when it is full or ``save_unfull_chunk`` is on. A chunk with a padding slot (-1)
        ends the store (its KV is not in the cache).

        Args:
            tokens: the request's token ids, ``[num_tokens]``.
            slot_mapping: ``[num_tokens]`` int slots of the tokens in the paged cache (any
                device).

        Returns:
            What was stored, and why not more.

        Raises:
            NoKVCacheError: no caches registered.
            InvalidSlotsError: a slot outside the cache.
        """
        kv, arr, slots = self._begin_copy("store", tokens, slot_mapping)
        n = int(arr.shape[0])
        save_unfull = bool(self._config.get("save_unfull_chunk"))
        spans = self._spans(arr, save_unfull, extras, offset, prev_hash)
        self.statistics.record(s.chunk_hash for s in spans)
        tail_dropped = not save_unfull and n % self._chunk_size != 0
        if not spans:
            return StoreResult(n, 0, 0, "shorter than chunk_size" if n else None)
        if self._manager.frozen:
            self.metrics.skipped_stores.labels(reason="frozen").inc(len(spans))
            return StoreResult(n, 0, len(spans), "frozen")
        unwritable = self._why_not_writable()
        if unwritable is not None:
            self.metrics.skipped_stores.labels(reason=unwritable).inc(len(spans))
            return StoreResult(n, 0, len(spans), unwritable)
        keys = self._keys(spans, self._key_dtype(kv))
        present, rewrite_flags = self._manager.store_plan(keys)
        rewrite = {k for k, r in zip(keys, rewrite_flags, strict=True) if r}
        stored_tokens = 0
        skipped = 0
        reason: str | None = None
        slot_mapping_dev = slot_mapping if isinstance(slot_mapping, torch.Tensor) else slots
        pads = padding_counts(slots)
        # Chunks to copy are collected (a pooled buffer each) and gathered in one native call.
        batch: list[tuple[ChunkSpan, str, ChunkBuffer]] = []
        stop: tuple[str, int] | None = None  # (reason, chunks left) when the store ends early
        try:
            for i, (span, key) in enumerate(zip(spans, keys, strict=True)):
                if present[i]:
                    skipped += 1
                    continue
                if pads[span.end] != pads[span.start]:
                    stop = ("padding slots", len(spans) - i)
                    break
                shape = kv.chunk_shape(span.num_tokens)
                buf = self._allocate(shape, kv.paged.dtype)
                if buf is None and batch:
                    # NOTE: the pool is full and the batch holds buffers the CPU tier cannot
                    # evict yet: store them first, then ask again (as one chunk at a time would).
                    todo, batch = batch, []
                    done, missed, reason = self._store_batch(
                        kv, slot_mapping_dev, todo, reason, rewrite
                    )
                    stored_tokens += done
                    skipped += missed
                    buf = self._allocate(shape, kv.paged.dtype)
                if buf is None:
                    stop = ("out of memory", len(spans) - i)
                    break
                batch.append((span, key, buf))
        except BaseException:
            for _, _, buf in batch:
                buf.unref()
            raise
        if batch:
            done, missed, reason = self._store_batch(kv, slot_mapping_dev, batch, reason, rewrite)
            stored_tokens += done
            skipped += missed
        if stop is not None:
            reason = reason or stop[0]
            skipped += stop[1]
            self.metrics.skipped_stores.labels(reason=stop[0]).inc(stop[1])
        if skipped and reason is None and stored_tokens == 0:
            reason = "already stored"
            self.metrics.skipped_stores.labels(reason="already stored").inc(skipped)
        if reason is None and tail_dropped:
            reason = "unfull chunk not saved"
        return StoreResult(n, stored_tokens, skipped, reason)

    def _store_batch(
        self,
        kv: _KVState,
        slot_mapping: torch.Tensor,
        batch: list[tuple[ChunkSpan, str, ChunkBuffer]],
        reason: str | None,
        rewrite: set[str] | None = None,
    ) -> tuple[int, int, str | None]:
        """Gathers ``batch``'s chunks in one native call and puts each into storage.

        Takes over the batch's buffer references (each is dropped right after its put, so the
        CPU tier may evict it again; all are dropped on an error).

        Returns:
            ``(tokens stored, chunks not written, reason)``; ``reason`` is the one passed in or,
            when it was ``None`` and a put failed, why.
        """
        released = 0
        try:
            t0 = time.perf_counter()
            ops.paged_kv_gather_chunks(
                kv.caches,
                batch_slots(slot_mapping, [span for span, _, _ in batch]),
                [buf.tensor for _, _, buf in batch],
                kv.layout,
            )
            self.metrics.copy_seconds.labels(direction="gather").observe(time.perf_counter() - t0)
            self.metrics.copy_bytes.labels(direction="gather").inc(
                sum(buf.nbytes for _, _, buf in batch)
            )
            stored_tokens = stored_bytes = skipped = 0
            for span, key, buf in batch:
                written = self._manager.put(
                    key, buf, rewrite=rewrite is not None and key in rewrite
                )
                buf.unref()
                released += 1
                if not written:
                    reason = reason or self._why_not_written()
                    skipped += 1
                    self.metrics.skipped_stores.labels(reason=reason).inc()
                    continue
                stored_tokens += span.num_tokens
                stored_bytes += buf.nbytes
        finally:
            for _, _, buf in batch[released:]:
                buf.unref()
        if stored_tokens:
            self.metrics.stored_tokens.inc(stored_tokens)
            self.metrics.stored_bytes.inc(stored_bytes)
        return stored_tokens, skipped, reason

    def _why_not_writable(self) -> str | None:
        """Why no tier would accept a chunk now, or ``None`` when some tier would."""
        cpu = self._manager.cpu
        active = [b for b in self._manager.backend_names() if not self._manager.is_bypassed(b)]
        if cpu is not None and cpu.name in active and not cpu.hot_cache_enabled:
            active.remove(cpu.name)
            if not active:
                return "hot cache disabled"
        if not active:
            return "no storage backend"
        return None

    def _why_not_written(self) -> str:
        return self._why_not_writable() or "storage full"

    # -- retrieve ------------------------------------------------------------------------------

    def lookup(self, tokens: Sequence[int] | torch.Tensor, extras: KeyExtras | None = None) -> int:
        """How many leading tokens of ``tokens`` are stored (whole chunks, across tiers).

        While frozen only the CPU tier counts. ``extras`` are part of the keys when given.
        """
        t0 = time.perf_counter()
        hit_tokens = self._lookup(tokens, extras)
        self.metrics.observe_op("lookup", time.perf_counter() - t0, hit_tokens)
        return hit_tokens

    def _lookup(self, tokens: Sequence[int] | torch.Tensor, extras: KeyExtras | None = None) -> int:
        self.metrics.requests.labels(op="lookup").inc()
        arr = tokens_to_array(tokens)
        spans = self._spans(arr, bool(self._config.get("save_unfull_chunk")), extras)
        keys = self._keys(spans, self._key_dtype(self._kv))
        hit = self._manager.lookup_prefix(keys)
        hit_tokens = spans[hit - 1].end if hit else 0
        self.metrics.lookup_tokens.inc(int(arr.shape[0]))
        self.metrics.lookup_hit_tokens.inc(hit_tokens)
        return hit_tokens

    def lookup_held(
        self,
        tokens: Sequence[int] | torch.Tensor | np.ndarray,
        extras: KeyExtras | None = None,
        held: list[ChunkBufferLike] | None = None,
    ) -> int:
        """Like :meth:`lookup`, answered from the tiers' indexes only, holding what it found.

        No payload is read or verified: the CPU tier's index is asked first, then every lower
        tier once for the remaining keys (one batched existence query each: the disk index, one
        Redis pipeline, one listing of an ``fs://`` directory). A chunk listed below the CPU
        tier is fetched (verified, promoted) by the later retrieve, which reports it when that
        fails. With ``held``, the CPU-tier buffer of each chunk of the reported prefix that the
        CPU tier holds is appended with one reference (eviction skips it until the caller
        drops it).
        """
        t0 = time.perf_counter()
        self.metrics.requests.labels(op="lookup").inc()
        arr = tokens_to_array(list_to_array(tokens))
        spans = self._spans(arr, bool(self._config.get("save_unfull_chunk")), extras)
        keys = self._keys(spans, self._key_dtype(self._kv))
        manager = self._manager
        cpu = manager.cpu
        cpu_active = cpu is not None and not manager.is_bypassed(cpu.name)
        bufs: list[ChunkBufferLike] = []
        try:
            n_cpu = 0
            if cpu is not None and cpu_active:
                for key in keys:
                    buf = cpu.get(key)
                    if buf is None:
                        break
                    bufs.append(buf)
                    n_cpu += 1
            hit = n_cpu
            if n_cpu < len(keys):
                hit = n_cpu + manager.lookup_prefix(keys[n_cpu:])
                if cpu is not None and cpu_active and held is not None:
                    # A chunk the CPU tier got back between the two queries is held as well.
                    for key in keys[n_cpu:hit]:
                        buf = cpu.get(key)
                        if buf is not None:
                            bufs.append(buf)
        except BaseException:
            for b in bufs:
                b.unref()
            raise
        if held is not None:
            held.extend(bufs)
        else:
            for b in bufs:
                b.unref()
        hit_tokens = spans[hit - 1].end if hit else 0
        self.metrics.lookup_tokens.inc(int(arr.shape[0]))
        self.metrics.lookup_hit_tokens.inc(hit_tokens)
        self.metrics.observe_op("lookup", time.perf_counter() - t0, hit_tokens)
        return hit_tokens

    def retrieve(
        self,
        tokens: Sequence[int] | torch.Tensor,
        slot_mapping: torch.Tensor,
        extras: KeyExtras | None = None,
    ) -> RetrieveResult:
        """Loads the longest stored prefix of ``tokens`` into the paged cache (see
        :meth:`_retrieve`); the tokens asked for, the call's time and speed are recorded.
        ``extras`` are part of the keys when given."""
        t0 = time.perf_counter()
        result = self._retrieve(tokens, slot_mapping, extras)
        self.metrics.observe_op("retrieve", time.perf_counter() - t0, result.num_retrieved)
        self.metrics.retrieve_requested_tokens.inc(result.num_tokens)
        return result

    def _retrieve(
        self,
        tokens: Sequence[int] | torch.Tensor,
        slot_mapping: torch.Tensor,
        extras: KeyExtras | None = None,
    ) -> RetrieveResult:
        """Loads the longest stored prefix of ``tokens`` into the paged cache.

        Chunks are fetched in order (CPU tier first, lower tiers promoted into it) and
        scattered into their slots until the first chunk that no tier has. Slots of -1 are
        left untouched (vLLM passes -1 for tokens it already holds); a chunk whose slots are
        all -1 is only checked for presence, not read. Nothing is loaded when the stored prefix
        is shorter than ``min_retrieve_tokens``.

        Args:
            tokens: the request's token ids, ``[num_tokens]``.
            slot_mapping: ``[num_tokens]`` int slots to load into (any device).

        Returns:
            The number of tokens loaded and ``mask`` (``[num_tokens]`` bool, CPU) marking the
            loaded prefix.

        Raises:
            NoKVCacheError: no caches registered.
            InvalidSlotsError: a slot outside the cache.
        """
        kv, arr, slots = self._begin_copy("retrieve", tokens, slot_mapping)
        n = int(arr.shape[0])
        mask = torch.zeros(n, dtype=torch.bool)
        spans = self._spans(arr, bool(self._config.get("save_unfull_chunk")), extras)
        keys = self._keys(spans, self._key_dtype(kv))
        min_tokens = int(self._config.get("min_retrieve_tokens"))
        if min_tokens > 0:
            hit = self._manager.lookup_prefix(keys)
            hit_tokens = spans[hit - 1].end if hit else 0
            if hit_tokens < min_tokens:
                self.metrics.miss_chunks.inc(len(spans))
                return RetrieveResult(n, 0, mask, "below min_retrieve_tokens")
            spans, keys = spans[:hit], keys[:hit]
        slot_mapping_dev = slot_mapping if isinstance(slot_mapping, torch.Tensor) else slots
        pads = padding_counts(slots)
        loaded = 0
        # Chunks found are collected (one reference each) and scattered in one native call.
        batch: list[tuple[ChunkSpan, ChunkBufferLike, str]] = []
        try:
            for idx, (span, key) in enumerate(zip(spans, keys, strict=True)):
                if pads[span.end] - pads[span.start] == span.num_tokens:
                    if not self._manager.contains(key):
                        break
                    loaded = span.end
                    continue
                failed = self._manager.failed_allocations
                got = self._manager.get(key)
                if got is None and batch and self._manager.failed_allocations != failed:
                    # NOTE: no host memory to read a lower-tier chunk into while the batch
                    # holds buffers: load and release them first, then ask again (as one chunk
                    # at a time would).
                    todo, batch = batch, []
                    self._retrieve_batch(kv, slot_mapping_dev, todo)
                    got = self._manager.get(key)
                if got is None:
                    # NOTE: a tier may list the rest of this prefix with damaged copies too:
                    # the next store rewrites them instead of skipping them.
                    self._manager.mark_suspect(keys[idx:])
                    break
                buf, tier = got
                expected = kv.chunk_shape(span.num_tokens)
                if tuple(buf.tensor.shape) != expected or buf.tensor.dtype != kv.paged.dtype:
                    logger.warning(
                        "CacheEngine: chunk %s from %s has shape %s %s, expected %s %s; dropped",
                        key,
                        tier,
                        tuple(buf.tensor.shape),
                        buf.tensor.dtype,
                        expected,
                        kv.paged.dtype,
                    )
                    buf.unref()
                    self.metrics.rejected_chunks.inc()
                    self._manager.remove(key)
                    break
                batch.append((span, buf, tier))
                loaded = span.end
        except BaseException:
            for _, buf, _ in batch:
                buf.unref()
            raise
        if batch:
            self._retrieve_batch(kv, slot_mapping_dev, batch)
        hit_chunks = sum(1 for s in spans if s.end <= loaded)
        self.metrics.miss_chunks.inc(len(spans) - hit_chunks)
        mask[:loaded] = True
        return RetrieveResult(n, loaded, mask)

    def _retrieve_batch(
        self,
        kv: _KVState,
        slot_mapping: torch.Tensor,
        batch: list[tuple[ChunkSpan, ChunkBufferLike, str]],
    ) -> None:
        """Scatters ``batch``'s chunks into their slots in one native call; drops the batch's
        buffer references (also on an error)."""
        try:
            t0 = time.perf_counter()
            ops.paged_kv_scatter_chunks(
                [buf.tensor for _, buf, _ in batch],
                kv.caches,
                batch_slots(slot_mapping, [span for span, _, _ in batch]),
                kv.layout,
            )
            self.metrics.copy_seconds.labels(direction="scatter").observe(time.perf_counter() - t0)
        finally:
            for _, buf, _ in batch:
                buf.unref()
        per_tier: dict[str, list[int]] = {}  # tier -> [chunks, tokens, bytes]
        for span, buf, tier in batch:
            acc = per_tier.setdefault(tier, [0, 0, 0])
            acc[0] += 1
            acc[1] += span.num_tokens
            acc[2] += buf.nbytes
        m = self.metrics
        m.copy_bytes.labels(direction="scatter").inc(sum(acc[2] for acc in per_tier.values()))
        for tier, (chunks, tokens, nbytes) in per_tier.items():
            m.hit_chunks.labels(tier=tier).inc(chunks)
            m.retrieved_tokens.labels(tier=tier).inc(tokens)
            m.retrieved_bytes.labels(tier=tier).inc(nbytes)

    # -- management ----------------------------------------------------------------------------

    def clear(self, locations: list[str] | None = None) -> dict[str, int]:
        """Removes cached chunks from the named tiers (all when ``None``).

        Returns:
            Tier name -> chunks removed.

        Raises:
            UnknownBackendError: a name is not one of this engine's tiers (nothing cleared).
        """
        return self._manager.clear(locations)

    def freeze(self, enabled: bool) -> None:
        """Freeze on: stores are skipped; lookups and retrieves use the CPU tier only."""
        self._manager.set_frozen(enabled)
        logger.info("CacheEngine: freeze %s", "enabled" if enabled else "disabled")

    @property
    def is_frozen(self) -> bool:
        """Whether freeze mode is on."""
        return self._manager.frozen

    def set_hot_cache(self, enabled: bool) -> None:
        """Hot cache off clears the CPU tier, which then keeps nothing new; on restores it."""
        cpu = self._manager.cpu
        if cpu is None:
            logger.warning("CacheEngine: no LocalCPUBackend; hot cache switch ignored")
            return
        removed = cpu.set_hot_cache(enabled)
        logger.info(
            "CacheEngine: hot cache %s%s",
            "enabled" if enabled else "disabled",
            "" if enabled else f" ({removed} chunks cleared)",
        )

    @property
    def hot_cache_enabled(self) -> bool:
        """Whether the CPU tier keeps chunks (``False`` when there is no CPU tier)."""
        cpu = self._manager.cpu
        return cpu is not None and cpu.hot_cache_enabled

    def bypass_add(self, name: str) -> bool:
        """Bypasses tier ``name``; returns whether it already was (raises UnknownBackendError)."""
        return self._manager.bypass_add(name)

    def bypass_remove(self, name: str) -> bool:
        """Restores tier ``name``; returns whether it was bypassed (raises UnknownBackendError)."""
        return self._manager.bypass_remove(name)

    def bypassed_backends(self) -> list[str]:
        """Bypassed tier names, in tier order."""
        return self._manager.bypassed()

    def all_backends(self) -> list[str]:
        """All tier names, in tier order."""
        return self._manager.backend_names()

    def backend(self, name: str) -> StorageBackend:
        """The tier called ``name``.

        Raises:
            UnknownBackendError: no such tier.
        """
        return self._manager.backend(name)

    def store_tier(self) -> StorageBackend | None:
        """The first tier a store writes, or ``None`` when no tier would take a chunk.

        Bypassed tiers are skipped, and so is the CPU tier while its hot cache is off.
        """
        manager = self._manager
        for tier in manager.backends:
            if manager.is_bypassed(tier.name):
                continue
            if tier is manager.cpu and not manager.cpu.hot_cache_enabled:
                continue
            return tier
        return None

    def set_record_slot(self, enabled: bool) -> None:
        """While on, store and retrieve log their compressed slot mapping."""
        with self._lock:
            self._record_slot = bool(enabled)

    @property
    def record_slot_enabled(self) -> bool:
        """Whether slot logging is on."""
        return self._record_slot

    def flush(self, timeout: float | None = None) -> bool:
        """Waits for queued disk/remote writes; ``False`` on timeout."""
        return self._manager.flush(timeout)

    # -- inspection ----------------------------------------------------------------------------

    def kv_checksums(
        self, slot_mapping: torch.Tensor, chunk_size: int, layerwise: bool
    ) -> list[str] | dict[str, list[str]]:
        """MD5 of the KV at ``slot_mapping``, per chunk of ``chunk_size`` slots.

        For one layer and chunk: the chunk's K rows in slot order, then its V rows, raw bytes.
        Non-layerwise: per chunk, the MD5 of the concatenated per-layer hex digests.

        Args:
            slot_mapping: ``[num_slots_checked]`` int slots, each inside the cache.
            chunk_size: slots per checksummed chunk (>= 1).
            layerwise: per-layer lists keyed by layer name instead of one list.

        Raises:
            NoKVCacheError: no caches registered.
            InvalidSlotsError: a slot outside ``[0, num_slots)``.
            ValueError: ``chunk_size`` < 1.
        """
        kv = self._require_kv()
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        slots = check_slot_mapping(slot_mapping, None, kv.paged.num_slots, allow_padding=False)
        t0 = time.perf_counter()
        per_layer, combined = ops.kv_chunk_md5(kv.caches, slots, int(chunk_size), kv.layout)
        self.metrics.checksum_seconds.observe(time.perf_counter() - t0)
        if layerwise:
            return {name: list(per_layer[i]) for i, name in enumerate(kv.names)}
        return list(combined)

    def kv_info(self) -> dict[str, Any]:
        """The registered caches: ``{"num_layers", "layers": {name: {shape, dtype, device}}}``.

        Raises:
            NoKVCacheError: none registered.
        """
        kv = self._require_kv()
        return {
            "num_layers": len(kv.caches),
            "layers": {
                name: {
                    "shape": [int(s) for s in t.shape],
                    "dtype": str(t.dtype),
                    "device": str(t.device),
                }
                for name, t in zip(kv.names, kv.caches, strict=True)
            },
        }

    def metadata_dict(self) -> dict[str, Any]:
        """Engine metadata for ``/meta`` (JSON-able)."""
        kv = self._kv
        out = self._metadata.to_dict()
        out["chunk_size"] = self._chunk_size
        out["key_prefix"] = self._namespace
        out["backends"] = self._manager.backend_names()
        out["pre_caching_hash_algorithm"] = self._hasher.algorithm
        # LMCache's /meta fields: one node unless the host says otherwise; secrets in the
        # connector's extra config are masked.
        md = self._metadata
        out.setdefault("engine_id", md.extra.get("vllm_engine_id") or "lmcache_default_instance")
        out.setdefault("local_worker_id", md.worker_id)
        out.setdefault("local_world_size", md.world_size)
        out.setdefault("first_rank", 0)
        out["kv_connector_extra_config"] = redact_value(
            "kv_connector_extra_config", dict(md.extra.get("kv_connector_extra_config") or {})
        )
        if kv is None:
            out.update({"layout": None, "layer_names": [], "num_layers": 0, "num_slots": 0})
            return out
        p = kv.paged
        if out.get("kv_shape") is None:
            out["kv_shape"] = [p.num_layers, p.num_kv, self._chunk_size, p.num_heads, p.head_size]
        if out.get("kv_dtype") is None:
            out["kv_dtype"] = str(p.dtype)
        out.update(
            {
                "layout": kv.layout,
                "layer_names": list(kv.names),
                "num_layers": p.num_layers,
                "num_kv": p.num_kv,
                "num_blocks": p.num_blocks,
                "block_size": p.block_size,
                "num_heads": p.num_heads,
                "head_size": p.head_size,
                "num_slots": p.num_slots,
                "kv_cache_shape": [int(s) for s in kv.caches[0].shape],
                "chunk_shape": list(p.chunk_shape(self._chunk_size)),
                "chunk_bytes": p.num_kv
                * p.num_layers
                * self._chunk_size
                * p.row_elems
                * p.elem_size,
                "device": str(p.device),
                "use_mla": kv.layout == "mla",
            }
        )
        return out

    # -- fs:// chunk loading -------------------------------------------------------------------

    def load_fs_chunks(
        self, config_path: str, max_chunks: int | None = None, max_failed_keys: int = 10
    ) -> dict[str, Any]:
        """Loads chunk files of an ``fs://`` store into the CPU tier.

        The store is named by ``remote_url`` in the configuration file at ``config_path``.
        Only a regular, small (<= 1 MiB), UTF-8 YAML/JSON file holding a mapping is read; its
        contents never appear in errors. Files are taken in name order, at most ``max_chunks``
        of them; each is fully verified (header, key, checksum) before it enters the CPU tier.
        Files of another model/worker (another key prefix) are skipped.

        Returns:
            ``{"loaded_chunks", "total_files", "failed_keys", "failed_count",
            "skipped_files"}``; ``failed_keys`` lists at most ``max_failed_keys`` keys.

        Raises:
            FSChunkLoadError: bad arguments, an unusable configuration file, no ``fs://``
                ``remote_url``, a missing store directory, or no CPU tier to load into.
        """
        if max_chunks is not None and max_chunks < 0:
            raise FSChunkLoadError("max_chunks must be >= 0")
        if max_failed_keys < 0:
            raise FSChunkLoadError("max_failed_keys must be >= 0")
        data = _read_config_file_safely(config_path)
        try:
            cfg = LMCacheEngineConfig.from_mapping(data, "load-fs-chunks configuration")
        except ConfigError as exc:
            where = f" for key '{exc.key}'" if exc.key else ""
            raise FSChunkLoadError(f"Invalid configuration value{where}") from None
        url = cfg.get("remote_url")
        if not url or not str(url).startswith("fs://"):
            raise FSChunkLoadError("Configuration has no fs:// remote_url")
        try:
            directory = fs_url_path(str(url))
            st = os.stat(directory)
        except (ValueError, OSError):
            raise FSChunkLoadError(
                "The fs:// directory named by remote_url does not exist"
            ) from None
        if not stat.S_ISDIR(st.st_mode):
            raise FSChunkLoadError("The fs:// remote_url does not name a directory")
        cpu = self._manager.cpu
        if cpu is None or self._manager.is_bypassed(cpu.name):
            raise FSChunkLoadError("LocalCPUBackend is not available to load chunks into")
        if not cpu.hot_cache_enabled:
            raise FSChunkLoadError("Hot cache is disabled; enable it to load chunks")
        try:
            with os.scandir(directory) as it:
                files = sorted(
                    de.name
                    for de in it
                    if de.name.endswith(CHUNK_SUFFIX)
                    and not is_temp_file(de.name)
                    and de.is_file(follow_symlinks=False)
                )
        except OSError:
            raise FSChunkLoadError("The fs:// directory cannot be listed") from None
        kv = self._kv
        todo = files if max_chunks is None else files[:max_chunks]
        loaded = failed_count = skipped = 0
        failed_keys: list[str] = []

        def fail(name: str) -> None:
            nonlocal failed_count
            failed_count += 1
            if len(failed_keys) < max_failed_keys:
                failed_keys.append(unquote(name[: -len(CHUNK_SUFFIX)]))

        prefix_q = chunk_filename(self._namespace)[: -len(CHUNK_SUFFIX)]
        for name in todo:
            if not name.startswith("h-") and not name.startswith(prefix_q):
                skipped += 1
                continue
            try:
                buf, header = read_chunk_file(directory / name, None, self._allocate)
                if chunk_filename(header.key) != name:
                    if buf is not None:
                        buf.unref()
                    raise CorruptChunkError("file name does not match its key")
            except (CorruptChunkError, OSError):
                fail(name)
                continue
            if not header.key.startswith(self._namespace):
                if buf is not None:
                    buf.unref()
                skipped += 1
                continue
            if buf is None:
                fail(name)
                continue
            try:
                ok = True
                if kv is not None:
                    n_tok = header.shape[2] if len(header.shape) == 4 else -1
                    ok = (
                        tuple(header.shape) == kv.chunk_shape(n_tok)
                        and header.dtype == kv.paged.dtype
                    )
                ok = ok and cpu.put(header.key, buf)
            finally:
                buf.unref()
            if ok:
                loaded += 1
            else:
                fail(name)
        logger.info(
            "CacheEngine: loaded %d of %d fs chunk files (%d failed, %d skipped)",
            loaded,
            len(files),
            failed_count,
            skipped,
        )
        return {
            "loaded_chunks": loaded,
            "total_files": len(files),
            "failed_keys": failed_keys,
            "failed_count": failed_count,
            "skipped_files": skipped,
        }

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
        self._manager.close()

    def __enter__(self) -> CacheEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_config_file_safely(config_path: str) -> dict[str, Any]:
    """Reads the ``load_fs_chunks`` configuration file, refusing anything but a small, regular
    UTF-8 YAML/JSON mapping; errors never contain the file's contents."""
    if not isinstance(config_path, str) or not config_path:
        raise FSChunkLoadError("config_path is required")
    if "\x00" in config_path:
        raise FSChunkLoadError("config_path is not a valid path")
    try:
        st = os.stat(config_path)
    except FileNotFoundError:
        raise FSChunkLoadError("Configuration file not found") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FSChunkLoadError("Configuration file path has a symlink loop") from None
        raise FSChunkLoadError(f"Configuration file cannot be accessed ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise FSChunkLoadError("Configuration file is a directory, not a regular file")
    if not stat.S_ISREG(st.st_mode):
        raise FSChunkLoadError("Configuration file is not a regular file")
    if st.st_size > MAX_CONFIG_FILE_BYTES:
        raise FSChunkLoadError(
            f"Configuration file is too large ({st.st_size} bytes; limit {MAX_CONFIG_FILE_BYTES})"
        )
    try:
        fd = os.open(config_path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise FSChunkLoadError(f"Configuration file cannot be opened ({exc.strerror})") from None
    try:
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode):  # replaced between stat and open
            raise FSChunkLoadError("Configuration file is not a regular file")
        raw = os.read(fd, MAX_CONFIG_FILE_BYTES + 1)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    if len(raw) > MAX_CONFIG_FILE_BYTES:
        raise FSChunkLoadError(f"Configuration file is too large (limit {MAX_CONFIG_FILE_BYTES})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FSChunkLoadError("Configuration file is not UTF-8 text (not YAML)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise FSChunkLoadError(f"Configuration file is not valid YAML{where}") from None
    except RecursionError:  # PyYAML's parser recurses once per nesting level
        raise FSChunkLoadError("Configuration file is nested too deeply (not YAML)") from None
    if not isinstance(data, dict):
        raise FSChunkLoadError("Configuration file must hold a YAML mapping of keys to values")
    return data
