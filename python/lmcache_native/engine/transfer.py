"""Batched copies between vLLM's paged cache and the storage tiers, under pool pressure.

A store gathers every chunk it writes in one native call (``ops.paged_kv_gather_chunks``) into
pooled chunk buffers (``stage``), then puts each into storage (``commit``: at once, or later
from another thread, see :mod:`.staged`); a retrieve fetches the chunks of the stored prefix
(those below the CPU tier read ahead on a few threads, :mod:`.fetch`) and scatters them in one
native call (``ops.paged_kv_scatter_chunks``). When the chunk-buffer pool runs out mid-batch,
the batch so far is copied and released first and the allocation asked again, as one chunk at a
time would.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from lmcache_native import ops
from lmcache_native.engine.fetch import FetchPool, ReadAhead
from lmcache_native.engine.inflight import InFlightCopies
from lmcache_native.engine.keys import ChunkSpan
from lmcache_native.engine.memory import ChunkBuffer
from lmcache_native.engine.slots import batch_slots, padding_counts
from lmcache_native.engine.staged import (
    KeyClaims,
    StagedChunk,
    StagedStore,
    StoreOutcome,
    wait_copies,
)
from lmcache_native.stats.metrics import EngineMetrics
from lmcache_native.storage import StorageManager
from lmcache_native.storage.base import ChunkBufferLike

logger = logging.getLogger(__name__)

_LoadItem = tuple[ChunkSpan, ChunkBufferLike, str]


@contextlib.contextmanager
def _unref_on_error(batch: list[Any], pos: int) -> Iterator[None]:
    """Drops the buffer at ``pos`` of each item of ``batch`` when the block raises."""
    try:
        yield
    except BaseException:
        for item in batch:
            item[pos].unref()
        raise


@dataclass(frozen=True)
class KVState:
    """A snapshot of the registered caches."""

    names: list[str]
    caches: list[torch.Tensor]
    layout: str
    paged: ops.PagedKV

    def chunk_shape(self, num_tokens: int) -> tuple[int, int, int, int]:
        """The shape of a chunk buffer of ``num_tokens`` tokens."""
        return self.paged.chunk_shape(num_tokens)

    def fits(self, shape: tuple[int, ...], dtype: torch.dtype) -> bool:
        """Whether a chunk of ``shape`` and ``dtype`` belongs to these caches."""
        num_tokens = shape[2] if len(shape) == 4 else -1
        return shape == self.chunk_shape(num_tokens) and dtype == self.paged.dtype


@dataclass(frozen=True)
class CopyRequest:
    """One store or retrieve, checked.

    Attributes:
        kv: the registered caches.
        slot_mapping: the request's slots as given (any device; the copy reads them there).
        slots: the same slots, checked, as a CPU int64 tensor.
        spans: the chunks to copy.
        keys: their keys.
    """

    kv: KVState
    slot_mapping: torch.Tensor
    slots: torch.Tensor
    spans: Sequence[ChunkSpan]
    keys: Sequence[str]


class Transfer:
    """The store and retrieve copies of one engine.

    Args:
        manager: the tiers (and the pool, through :meth:`StorageManager.allocate`).
        metrics: where copy times, bytes and per-tier hits are counted.
    """

    def __init__(self, manager: StorageManager, metrics: EngineMetrics) -> None:
        """Copies through ``manager``'s tiers, counting into ``metrics``."""
        self._manager = manager
        self.metrics = metrics
        self._fetch = FetchPool()  # reads ahead of retrieves, below the CPU tier
        self._inflight = InFlightCopies()  # buffers CUDA scatters still read
        self._claims = KeyClaims()  # keys staged stores are about to put

    def close(self) -> None:
        """Stops the read-ahead threads (after the reads in flight); waits for the scatters."""
        self._fetch.close()
        self._inflight.reap(wait=True)

    def read_ahead(self, keys: Sequence[str]) -> ReadAhead:
        """A :class:`~.fetch.ReadAhead` over ``keys`` on the engine's reader threads."""
        return ReadAhead(self._manager, self._fetch, keys)

    def promote(self, keys: Sequence[str]) -> int:
        """Starts reading ``keys`` into the CPU tier on the reader threads (see :mod:`.fetch`)."""
        return self._fetch.promote(self._manager, keys)

    def allocate(self, shape: Sequence[int], dtype: torch.dtype) -> ChunkBuffer | None:
        """A pooled chunk buffer (one reference), or ``None`` when the pool has no room."""
        return self._manager.allocate(shape, dtype)  # type: ignore[return-value]

    # -- store ---------------------------------------------------------------------------------

    def why_not_writable(self) -> str | None:
        """Why no tier would accept a chunk now, or ``None`` when some tier would."""
        manager = self._manager
        cpu = manager.cpu
        active = [b for b in manager.backend_names() if not manager.is_bypassed(b)]
        if cpu is not None and cpu.name in active and not cpu.hot_cache_enabled:
            active.remove(cpu.name)
            if not active:
                return "hot cache disabled"
        if not active:
            return "no storage backend"
        return None

    def store(self, req: CopyRequest) -> StoreOutcome:
        """Copies the chunks of ``spans`` that storage lacks out of the paged cache.

        :meth:`stage` and :meth:`commit` in a row.
        """
        staged = StagedStore(int(req.slots.numel()))
        self.stage(req, staged)
        return self.commit(staged)

    def stage(
        self, req: CopyRequest, staged: StagedStore, *, copy: bool = True, blocking: bool = True
    ) -> None:
        """Takes a pool buffer for each chunk of ``spans`` that storage lacks, and fills them.

        Chunks the CPU tier holds, or another staged store is about to put, are skipped; a
        chunk only a lower tier lists is copied again and that tier's copy rewritten (it was
        not loaded from there, so it may be corrupt or gone). A chunk with a padding slot (-1)
        ends the store (its KV is not in the cache). The chunks are copied out in one native
        gather (a CUDA one only enqueued unless ``blocking``; its handle goes to
        ``staged.copies``); when the pool runs out mid-batch, the batch so far is copied and put
        first and the allocation asked again, as one chunk at a time would. Without ``copy``
        the buffers are only taken (the caller fills them, or :meth:`fill` does) and the store
        stops where the pool runs out.
        """
        kv, slot_mapping, spans, keys = req.kv, req.slot_mapping, req.spans, req.keys
        present, rewrite = self._manager.store_plan(list(keys))
        out = staged.outcome
        pads = padding_counts(req.slots)
        batch = staged.chunks
        staged.source = req
        try:
            for i, (span, key) in enumerate(zip(spans, keys, strict=True)):
                if present[i]:
                    out.skipped += 1
                    continue
                if pads[span.end] != pads[span.start]:
                    staged.stop = ("padding slots", len(spans) - i)
                    break
                if not self._claims.claim(key):
                    out.skipped += 1
                    continue
                shape = kv.chunk_shape(span.num_tokens)
                buf = self.allocate(shape, kv.paged.dtype)
                if buf is None and batch and copy:
                    # NOTE: the pool is full and the batch holds buffers the CPU tier cannot
                    # evict yet: store them first, then ask again (as one chunk at a time would).
                    todo = batch[:]
                    batch.clear()
                    self._claims.guarded(todo, partial(self._gather, kv, slot_mapping, todo, True))
                    self._put(todo, out)
                    buf = self.allocate(shape, kv.paged.dtype)
                if buf is None:
                    self._claims.unclaim([key])
                    staged.stop = ("out of memory", len(spans) - i)
                    break
                batch.append(StagedChunk(span, key, rewrite[i], buf))
            if batch and copy:
                handle = self._gather(kv, slot_mapping, batch, blocking)
                if not blocking:
                    staged.copies.append(handle)
        except BaseException:
            self.release(staged)
            raise

    def fill(self, staged: StagedStore) -> None:
        """Copies a store staged without ``copy`` out of the paged cache (blocking)."""
        req = staged.source
        if req is not None and staged.chunks:
            self._claims.guarded(
                staged.chunks,
                lambda: self._gather(req.kv, req.slot_mapping, staged.chunks, True),
                staged,
            )

    def commit(self, staged: StagedStore) -> StoreOutcome:
        """Puts a staged store's chunks into the tiers (after its copies finished).

        Each buffer reference is dropped right after its put, so the CPU tier may evict it
        again (all are dropped on an error). Counts what was not stored and why.
        """
        batch, staged.chunks = staged.chunks, []
        out = staged.outcome
        if batch:
            self._claims.guarded(batch, partial(wait_copies, staged.copies))
            self._put(batch, out)
        skipped_stores = self.metrics.skipped_stores
        if staged.stop is not None:
            reason, chunks = staged.stop
            out.reason = out.reason or reason
            out.skipped += chunks
            skipped_stores.labels(reason=reason).inc(chunks)
        if out.skipped and out.reason is None and out.stored_tokens == 0:
            out.reason = "already stored"
            skipped_stores.labels(reason="already stored").inc(out.skipped)
        return out

    def release(self, staged: StagedStore) -> None:
        """Drops a staged store that will not be committed (its buffers and claimed keys)."""
        batch, staged.chunks = staged.chunks, []
        self._claims.drop(batch)

    def _gather(
        self,
        kv: KVState,
        slot_mapping: torch.Tensor,
        batch: Sequence[StagedChunk],
        blocking: bool,
    ) -> ops.CopyHandle:
        """Copies ``batch``'s chunks out of the paged cache in one native call."""
        m = self.metrics
        t0 = time.perf_counter()
        handle = ops.paged_kv_gather_chunks(
            kv.caches,
            batch_slots(slot_mapping, [c.span for c in batch]),
            [c.buf.tensor for c in batch],
            kv.layout,
            blocking=blocking,
        )
        m.copy_seconds.labels(direction="gather").observe(time.perf_counter() - t0)
        m.copy_bytes.labels(direction="gather").inc(sum(c.buf.nbytes for c in batch))
        return handle

    def _put(self, batch: list[StagedChunk], out: StoreOutcome) -> None:
        """Puts each of ``batch``'s chunks into storage, dropping its buffer after its put.

        Takes over the batch's buffer references and key claims (all dropped on an error).
        Adds to ``out``.
        """
        m = self.metrics
        released = 0
        stored_tokens = stored_bytes = 0
        try:
            for c in batch:
                written = self._manager.put(c.key, c.buf, rewrite=c.rewrite)
                c.buf.unref()
                self._claims.unclaim([c.key])
                released += 1
                if not written:
                    out.reason = out.reason or self.why_not_writable() or "storage full"
                    out.skipped += 1
                    m.skipped_stores.labels(reason=out.reason).inc()
                    continue
                stored_tokens += c.span.num_tokens
                stored_bytes += c.buf.nbytes
        finally:
            self._claims.drop(batch[released:])
        if stored_tokens:
            out.stored_tokens += stored_tokens
            m.stored_tokens.inc(stored_tokens)
            m.stored_bytes.inc(stored_bytes)

    # -- lookup --------------------------------------------------------------------------------

    def lookup_held(self, keys: Sequence[str], held: list[ChunkBufferLike] | None) -> int:
        """How many leading ``keys`` the tiers list, from their indexes only.

        No payload is read or verified: the CPU tier's index is asked first, then every lower
        tier once for the remaining keys (one batched existence query each: the disk index, one
        Redis pipeline, one listing of an ``fs://`` directory). A chunk listed below the CPU
        tier is fetched (verified, promoted) by the later retrieve, which reports it when that
        fails. With ``held``, the CPU-tier buffer of each chunk of the reported prefix that the
        CPU tier holds is appended with one reference (eviction skips it until the caller
        drops it).
        """
        manager = self._manager
        cpu = manager.cpu
        if cpu is not None and manager.is_bypassed(cpu.name):
            cpu = None
        bufs: list[ChunkBufferLike] = []
        try:
            hit = 0
            if cpu is not None:
                for key in keys:
                    buf = cpu.get(key)
                    if buf is None:
                        break
                    bufs.append(buf)
                    hit += 1
            if hit < len(keys):
                n_cpu = hit
                hit += manager.lookup_prefix(list(keys[n_cpu:]))
                if cpu is not None and held is not None:
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
        return hit

    # -- retrieve ------------------------------------------------------------------------------

    def retrieve(self, req: CopyRequest) -> int:
        """Loads the chunks of ``spans`` into their slots, in order, up to the first missing.

        Chunks are fetched CPU tier first (lower tiers promoted into it). Slots of -1 are left
        untouched; a chunk whose slots are all -1 is only checked for presence, not read. A
        chunk no tier can deliver marks the rest of the prefix suspect (the next store rewrites
        it); one of the wrong shape is dropped from storage.

        Returns:
            The number of leading tokens loaded (or found present, for all-padding chunks).
        """
        kv, slot_mapping, spans, keys = req.kv, req.slot_mapping, req.spans, req.keys
        manager = self._manager
        pads = padding_counts(req.slots)
        padding = [pads[s.end] - pads[s.start] == s.num_tokens for s in spans]
        ahead = self.read_ahead([k for k, p in zip(keys, padding, strict=True) if not p])
        self._inflight.reap()
        failed = manager.failed_allocations
        loaded = 0
        batch: list[_LoadItem] = []
        with _unref_on_error(batch, 1), contextlib.closing(ahead):
            for idx, (span, key) in enumerate(zip(spans, keys, strict=True)):
                if padding[idx]:
                    if not manager.contains(key):
                        break
                    loaded = span.end
                    continue
                got = ahead.get(key)
                held = batch or self._inflight.pending()
                if got is None and held and manager.failed_allocations != failed:
                    # NOTE: no host memory to read a lower-tier chunk into while the batch, the
                    # reads ahead and earlier scatters hold buffers: load and release them
                    # first, then ask again (as one chunk at a time would).
                    ahead.close()
                    todo = batch[:]
                    batch.clear()
                    if todo:
                        self._retrieve_batch(kv, slot_mapping, todo)
                    self._inflight.reap(wait=True)
                    failed = manager.failed_allocations
                    got = manager.get(key)
                if got is None:
                    # NOTE: a tier may list the rest of this prefix with damaged copies too:
                    # the next store rewrites them instead of skipping them.
                    manager.mark_suspect(list(keys[idx:]))
                    break
                buf, tier = got
                if not self._fits(kv, span, key, buf, tier):
                    break
                batch.append((span, buf, tier))
                loaded = span.end
        if batch:
            self._retrieve_batch(kv, slot_mapping, batch)
        hit_chunks = sum(1 for s in spans if s.end <= loaded)
        self.metrics.miss_chunks.inc(len(spans) - hit_chunks)
        return loaded

    def _fits(
        self, kv: KVState, span: ChunkSpan, key: str, buf: ChunkBufferLike, tier: str
    ) -> bool:
        """Whether ``buf`` has the chunk's shape and dtype; if not it is dropped from storage."""
        expected = kv.chunk_shape(span.num_tokens)
        if tuple(buf.tensor.shape) == expected and buf.tensor.dtype == kv.paged.dtype:
            return True
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
        return False

    def _retrieve_batch(
        self, kv: KVState, slot_mapping: torch.Tensor, batch: list[_LoadItem]
    ) -> None:
        """Scatters ``batch``'s chunks into their slots in one native call.

        Drops the batch's buffer references (on an error at once; after a CUDA copy once it has
        run, see :mod:`.inflight`) and counts the hits per tier.
        """
        bufs = [buf for _, buf, _ in batch]
        try:
            t0 = time.perf_counter()
            handle = ops.paged_kv_scatter_chunks(
                [buf.tensor for buf in bufs],
                kv.caches,
                batch_slots(slot_mapping, [span for span, _, _ in batch]),
                kv.layout,
                blocking=False,  # enqueued on the caller's stream: nothing reads it before
            )
            if handle.done():  # a CPU copy (a CUDA one's enqueue time is not its copy time)
                seconds = time.perf_counter() - t0
                self.metrics.copy_seconds.labels(direction="scatter").observe(seconds)
        except BaseException:
            for buf in bufs:
                buf.unref()
            raise
        self._inflight.add(handle, bufs)
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
