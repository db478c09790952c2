"""The engine's store API: a store, or the same store in two steps (copy out, then commit).

:class:`EngineStores` is a base of :class:`~lmcache_native.engine.CacheEngine`.
``store`` copies the chunks storage lacks out of vLLM's paged cache and puts them into the
tiers. ``stage_store`` does the first half only (chunk keys, which chunks storage lacks, a pool
buffer for each, one native gather into them) and returns a
:class:`~lmcache_native.engine.staged.StagedStore`; once it returns, the paged cache may be
overwritten (a CUDA copy made with ``blocking=False``: once ``copy_done()``).
``commit_store`` puts the staged chunks into the tiers (the CPU tier; the disk and remote
writes are queued to the tiers' writer thread, which checksums them) and counts them, from any
thread; ``release_store`` drops a staged store instead.
Keys staged and not yet committed are skipped by other stores, so two stores of one prefix
copy it once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine.keys import ChunkNamer, KeyExtras
from lmcache_native.engine.metadata import StoreResult
from lmcache_native.engine.staged import StagedStore
from lmcache_native.engine.transfer import CopyRequest, KVState, Transfer
from lmcache_native.stats.chunk_statistics import ChunkStatistics
from lmcache_native.stats.metrics import EngineMetrics
from lmcache_native.storage import StorageManager


class EngineStores:
    """``store``, ``stage_store``, ``fill_store``, ``commit_store`` and ``release_store``."""

    _config: LMCacheEngineConfig
    _chunk_size: int
    _names: ChunkNamer
    _manager: StorageManager
    _transfer: Transfer
    metrics: EngineMetrics
    statistics: ChunkStatistics
    _begin_copy: Callable[..., tuple[KVState, np.ndarray, torch.Tensor]]

    def store(
        self,
        tokens: Sequence[int] | torch.Tensor,
        slot_mapping: torch.Tensor,
        extras: KeyExtras | None = None,
        *,
        offset: int = 0,
        prev_hash: str | None = None,
    ) -> StoreResult:
        """Copies the KV of ``tokens`` out of the paged cache into storage.

        Chunks storage holds are skipped (see :meth:`.transfer.Transfer.stage`); without a CPU
        tier, chunks any active tier lists are skipped. The last chunk is stored only when it
        is full or ``save_unfull_chunk`` is on. A chunk with a padding slot (-1) ends the store.
        The call's time and speed are recorded. :meth:`stage_store` then :meth:`commit_store`.

        Args:
            tokens: the request's token ids, ``[num_tokens]``.
            slot_mapping: ``[num_tokens]`` int slots of the tokens in the paged cache (any
                device).
            extras: salt, LoRA adapter, multimodal items, mixed into the keys.
            offset: request position of ``tokens[0]`` (a chunk boundary) when continuing a
                request's chain.
            prev_hash: the hash of the chunk before ``offset``.

        Returns:
            What was stored, and why not more.

        Raises:
            NoKVCacheError: no caches registered.
            InvalidSlotsError: a slot outside the cache.
        """
        staged = self.stage_store(tokens, slot_mapping, extras, offset=offset, prev_hash=prev_hash)
        return self.commit_store(staged)

    def stage_store(
        self,
        tokens: Sequence[int] | torch.Tensor,
        slot_mapping: torch.Tensor,
        extras: KeyExtras | None = None,
        *,
        offset: int = 0,
        prev_hash: str | None = None,
        copy: bool = True,
        blocking: bool = True,
    ) -> StagedStore:
        """The first half of :meth:`store`: copies the chunks to store into pool buffers.

        Arguments and errors as :meth:`store`. With ``blocking=False`` a CUDA copy is only
        enqueued on the current stream (``StagedStore.copy_done``; the commit waits for it).
        Without ``copy`` the buffers are only taken: the caller fills them (layer-wise saves)
        or :meth:`fill_store` copies them. The result must be given to :meth:`commit_store` or
        :meth:`release_store` (it holds pool buffers).
        """
        t0 = time.perf_counter()
        kv, arr, slots = self._begin_copy("store", tokens, slot_mapping)
        n = int(arr.shape[0])
        staged = StagedStore(n)
        save_unfull = bool(self._config.get("save_unfull_chunk"))
        spans = self._names.spans(arr, extras, offset, prev_hash, save_unfull)
        self.statistics.record(s.chunk_hash for s in spans)
        out = staged.outcome
        why_not = None
        if not spans:
            out.reason = "shorter than chunk_size" if n else None
        else:
            why_not = "frozen" if self._manager.frozen else self._transfer.why_not_writable()
        if why_not is not None:
            self.metrics.skipped_stores.labels(reason=why_not).inc(len(spans))
            out.skipped, out.reason = len(spans), why_not
        elif spans:
            keys = self._names.keys(spans, kv.paged.dtype)
            slot_mapping_dev = slot_mapping if isinstance(slot_mapping, torch.Tensor) else slots
            req = CopyRequest(kv, slot_mapping_dev, slots, spans, keys)
            self._transfer.stage(req, staged, copy=copy, blocking=blocking)
            if not save_unfull and n % self._chunk_size != 0:
                staged.note = "unfull chunk not saved"
        staged.seconds = time.perf_counter() - t0
        return staged

    def fill_store(self, staged: StagedStore) -> None:
        """Copies a store staged without ``copy`` out of the paged cache now (blocking)."""
        t0 = time.perf_counter()
        self._transfer.fill(staged)
        staged.seconds += time.perf_counter() - t0

    def commit_store(self, staged: StagedStore) -> StoreResult:
        """The second half of :meth:`store`: puts a staged store's chunks into the tiers.

        Waits for its copies first (raising a bad slot of a non-blocking copy). Any thread may
        commit; the store's time (staging and commit) and speed are recorded here.
        """
        t0 = time.perf_counter()
        out = self._transfer.commit(staged)
        result = StoreResult(
            staged.num_tokens, out.stored_tokens, out.skipped, out.reason or staged.note
        )
        dt = staged.seconds + time.perf_counter() - t0
        self.metrics.observe_op("store", dt, result.num_stored_tokens)
        return result

    def release_store(self, staged: StagedStore) -> None:
        """Drops a staged store that will not be committed (its buffers go back to the pool)."""
        self._transfer.release(staged)
