"""StorageManager: the tiers in order, promotion, bypass, freeze, and the background writer.

Tier order is LocalCPUBackend -> LocalDiskBackend -> RemoteBackend (whichever exist).

- ``put`` stores into the CPU tier on the caller's thread and queues the chunk (one more buffer
  reference) for the disk and remote tiers, which a background thread writes; the queue is
  bounded and a full queue drops the write (counted) rather than block the request.
- ``get`` asks the tiers in order, stops at the first hit and promotes a lower-tier hit into
  the CPU tier.
- ``lookup_prefix`` is the longest run of leading keys each stored in some tier.
- ``store_plan`` tells a store which chunks it may skip: those the CPU tier holds. A chunk that
  only a lower tier lists is stored again (the CPU tier takes it, and the lower tier's copy is
  rewritten, since a store of it means it was not loaded from there: it may be corrupt or gone).
  A chunk a read could not deliver, and the chunks after it in the same prefix, are marked
  suspect (``mark_suspect``): the next store rewrites them even where the hot tier lists them, so
  the later corrupt chunks of a damaged prefix do not stay indexed until each is read.
- A bypassed tier is skipped by contains/put/get (and by queued writes not yet done).
- While frozen, ``put`` stores nothing and contains/get/lookup use the CPU tier only.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import torch

from lmcache_native.errors import UnknownBackendError
from lmcache_native.storage.base import ChunkBufferLike, StorageBackend
from lmcache_native.storage.local_cpu import LocalCPUBackend

logger = logging.getLogger(__name__)

_SUSPECT_MAX = 1 << 16


class _PoolLike(Protocol):
    """The buffer pool the manager allocates from (``engine.memory.ChunkBufferPool``)."""

    def allocate(self, shape: Sequence[int], dtype: torch.dtype) -> ChunkBufferLike | None: ...


class StorageManager:
    """Tiers behind one interface.

    Args:
        backends: the tiers in lookup order (a LocalCPUBackend, if any, first).
        pool: the buffer pool new chunks and promoted chunks are allocated from.
        writer_queue_size: queued disk/remote writes before new ones are dropped.
        async_writes: write disk/remote tiers on a background thread (``False``: inline).
    """

    def __init__(
        self,
        backends: Sequence[StorageBackend],
        pool: _PoolLike,
        writer_queue_size: int = 256,
        async_writes: bool = True,
    ) -> None:
        """Puts ``backends`` behind one interface; starts the writer thread if needed."""
        names = [b.name for b in backends]
        if len(set(names)) != len(names):
            raise ValueError(f"backend names must be unique, got {names}")
        self._backends = list(backends)
        self._by_name = {b.name: b for b in self._backends}
        self._pool = pool
        cpu = self._by_name.get(LocalCPUBackend.name)
        self.cpu: LocalCPUBackend | None = cpu if isinstance(cpu, LocalCPUBackend) else None
        self._lower = [b for b in self._backends if b is not self.cpu]
        self._lock = threading.Lock()
        self._bypassed: set[str] = set()
        self._frozen = False
        self.dropped_writes = 0
        self.failed_allocations = 0
        self._async = async_writes and bool(self._lower)
        self._queue: queue.Queue[tuple[str, ChunkBufferLike, bool] | None] = queue.Queue(
            maxsize=max(1, writer_queue_size)
        )
        # Writes queued and writes finished, in queue order (one writer): flush() waits for the
        # writes queued before it, never for a moment when the queue is empty (under steady
        # stores that moment may never come).
        self._written = threading.Condition()
        self._queued_count = 0
        self._done_count = 0
        self._writer: threading.Thread | None = None
        self._write_failures = 0
        self._last_write_time = 0.0
        self._closed = False
        self._suspect: OrderedDict[str, None] = OrderedDict()
        if self._async:
            self._writer = threading.Thread(
                target=self._writer_loop, name="lmcache-storage-writer", daemon=True
            )
            self._writer.start()

    # -- tiers ---------------------------------------------------------------------------------

    @property
    def backends(self) -> list[StorageBackend]:
        """The tiers in order."""
        return list(self._backends)

    def backend_names(self) -> list[str]:
        """Names of the tiers in order."""
        return [b.name for b in self._backends]

    def backend(self, name: str) -> StorageBackend:
        """The tier called ``name``.

        Raises:
            UnknownBackendError: no such tier.
        """
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownBackendError(name, self.backend_names()) from None

    def _active(self, for_read: bool) -> list[StorageBackend]:
        with self._lock:
            bypassed = set(self._bypassed)
            frozen = self._frozen
        tiers = [b for b in self._backends if b.name not in bypassed]
        if frozen and for_read:
            tiers = [b for b in tiers if b is self.cpu]
        return tiers

    # -- switches ------------------------------------------------------------------------------

    @property
    def frozen(self) -> bool:
        """Whether stores are skipped and reads use the CPU tier only."""
        return self._frozen

    def set_frozen(self, frozen: bool) -> None:
        """Freezes or unfreezes."""
        with self._lock:
            self._frozen = bool(frozen)

    def bypass_add(self, name: str) -> bool:
        """Bypasses ``name``; returns whether it already was."""
        self.backend(name)
        with self._lock:
            was = name in self._bypassed
            self._bypassed.add(name)
        return was

    def bypass_remove(self, name: str) -> bool:
        """Stops bypassing ``name``; returns whether it was bypassed."""
        self.backend(name)
        with self._lock:
            was = name in self._bypassed
            self._bypassed.discard(name)
        return was

    def bypassed(self) -> list[str]:
        """Bypassed tier names, in tier order."""
        with self._lock:
            return [n for n in self.backend_names() if n in self._bypassed]

    def is_bypassed(self, name: str) -> bool:
        """Whether ``name`` is bypassed."""
        with self._lock:
            return name in self._bypassed

    # -- memory --------------------------------------------------------------------------------

    def allocate(self, shape: Sequence[int], dtype: torch.dtype) -> ChunkBufferLike | None:
        """A pooled buffer, evicting unreferenced CPU-tier chunks when the pool is full.

        Returns ``None`` when nothing more can be freed (all memory is referenced).
        """
        buf = self._pool.allocate(shape, dtype)
        while buf is None:
            need = 1
            for s in shape:
                need *= int(s)
            need *= torch.empty((), dtype=dtype).element_size()
            if self.cpu is None or self.cpu.evict_bytes(need) == 0:
                self.failed_allocations += 1
                return None
            buf = self._pool.allocate(shape, dtype)
        return buf

    # -- data path -----------------------------------------------------------------------------

    def contains(self, key: str) -> bool:
        """Whether some active tier holds ``key``."""
        return any(b.contains(key) for b in self._active(for_read=True))

    def contains_many(self, keys: Sequence[str]) -> list[bool]:
        """For each key, whether some active tier holds it (one batched call per tier)."""
        n = len(keys)
        found = [False] * n
        for tier in self._active(for_read=True):
            todo = [i for i in range(n) if not found[i]]
            if not todo:
                break
            for i, hit in zip(todo, tier.batched_contains([keys[i] for i in todo]), strict=True):
                found[i] = hit
        return found

    def lookup_prefix(self, keys: Sequence[str]) -> int:
        """How many leading ``keys`` are each stored in some active tier."""
        found = self.contains_many(keys)
        for i, hit in enumerate(found):
            if not hit:
                return i
        return len(keys)

    def store_plan(self, keys: Sequence[str]) -> tuple[list[bool], list[bool]]:
        """What a store of ``keys`` must do: ``(skip, rewrite)`` per key.

        A key is skipped only when the hot tier holds it: the CPU tier (when active with its
        hot cache on), else the first active tier. A key the hot tier lacks but a lower tier
        lists is written again everywhere (the lower tier's copy rewritten: the chunk is being
        stored because it was not loaded from there, so that copy may be corrupt or gone), so
        one store repairs a prefix whose lower-tier copies are damaged.
        """
        n = len(keys)
        tiers = self._active(for_read=False)
        cpu = self.cpu
        if cpu is not None and cpu in tiers and not cpu.hot_cache_enabled:
            tiers.remove(cpu)
        if not tiers:
            return [False] * n, [False] * n
        hot = tiers[0]
        with self._lock:
            suspect = [k in self._suspect for k in keys]
        skip = [h and not s for h, s in zip(hot.batched_contains(keys), suspect, strict=True)]
        rewrite = [False] * n
        for tier in tiers:
            if tier is cpu:  # its put replaces nothing; memory copies are never damaged
                continue
            todo = [i for i in range(n) if not skip[i] and not rewrite[i]]
            if not todo:
                break
            for i, hit in zip(todo, tier.batched_contains([keys[i] for i in todo]), strict=True):
                rewrite[i] = hit
        return skip, rewrite

    def mark_suspect(self, keys: Sequence[str]) -> None:
        """Marks ``keys`` as possibly damaged in the tiers that list them.

        A read of the first failed: the next store of each rewrites it. The most recent 65536
        marks are kept.
        """
        with self._lock:
            for k in keys:
                self._suspect[k] = None
                self._suspect.move_to_end(k)
            while len(self._suspect) > _SUSPECT_MAX:
                self._suspect.popitem(last=False)

    def get(self, key: str) -> tuple[ChunkBufferLike, str] | None:
        """The chunk and the name of the tier it came from, or ``None``.

        The buffer carries one reference for the caller. A hit below the CPU tier is promoted
        into it (when the CPU tier is active and its hot cache is on).
        """
        tiers = self._active(for_read=True)
        for tier in tiers:
            buf = tier.get(key)
            if buf is None:
                continue
            if tier is not self.cpu and self.cpu is not None and self.cpu in tiers:
                self.cpu.put(key, buf)
            return buf, tier.name
        return None

    def put(self, key: str, buf: ChunkBufferLike, rewrite: bool = False) -> list[str]:
        """Stores ``buf`` into every active tier (disk/remote in the background).

        The caller keeps its reference. Returns the tiers written or queued (empty when frozen).
        With ``rewrite``, a lower tier that already lists ``key`` has its copy replaced.
        """
        if self._frozen:
            return []
        with self._lock:
            self._suspect.pop(key, None)  # a fresh copy goes to every tier
        tiers = self._active(for_read=False)
        done: list[str] = []
        lower = []
        for tier in tiers:
            if tier is self.cpu:
                if tier.put(key, buf):
                    done.append(tier.name)
            else:
                lower.append(tier)
        if not lower:
            return done
        if not self._async:
            for tier in lower:
                if self._put_lower(tier, key, buf, rewrite):
                    done.append(tier.name)
            return done
        with self._written:
            try:
                self._queue.put_nowait((key, buf.ref(), rewrite))
            except queue.Full:
                buf.unref()
                with self._lock:
                    self.dropped_writes += 1
                return done
            self._queued_count += 1
        return done + [t.name for t in lower]

    @staticmethod
    def _put_lower(tier: StorageBackend, key: str, buf: ChunkBufferLike, rewrite: bool) -> bool:
        if rewrite and tier.contains(key):
            tier.remove(key)
        return tier.put(key, buf)

    def remove(self, key: str) -> int:
        """Deletes ``key`` from every tier; returns how many tiers held it."""
        return sum(int(b.remove(key)) for b in self._backends)

    def clear(self, locations: Sequence[str] | None = None) -> dict[str, int]:
        """Clears the named tiers (all when ``None``); returns entries removed per tier.

        Raises:
            UnknownBackendError: a name is not a tier (nothing is cleared then).
        """
        names = self.backend_names() if locations is None else list(dict.fromkeys(locations))
        tiers = [self.backend(n) for n in names]
        if any(t is not self.cpu for t in tiers):
            self.flush()
        return {t.name: t.clear() for t in tiers}

    # -- background writer ---------------------------------------------------------------------

    def _writer_loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                key, buf, rewrite = item
                try:
                    for tier in self._lower:
                        if self.is_bypassed(tier.name):
                            continue
                        try:
                            self._put_lower(tier, key, buf, rewrite)
                        except Exception:
                            logger.exception("StorageManager: %s.put(%s) failed", tier.name, key)
                            with self._written:
                                self._write_failures += 1
                finally:
                    buf.unref()
                    with self._written:
                        self._done_count += 1
                        self._last_write_time = time.time()
                        self._written.notify_all()
            finally:
                self._queue.task_done()

    @property
    def writer_thread(self) -> threading.Thread | None:
        """The background writer (``None`` when writes are inline or there is no lower tier)."""
        return self._writer

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def writer_stats(self) -> tuple[int, int, float]:
        """The background writer's figures.

        Returns:
            ``(queued writes finished, writes a tier raised on, time of the last finished
            write or 0.0)``.
        """
        with self._written:
            return self._done_count, self._write_failures, self._last_write_time

    def pending_writes(self) -> int:
        """Queued disk/remote writes not yet finished."""
        return self._queue.unfinished_tasks

    def flush(self, timeout: float | None = None) -> bool:
        """Waits until every write queued before this call is done; ``False`` on timeout.

        Writes queued while it waits are not waited for, so it returns even under a steady
        stream of stores.
        """
        if not self._async:
            return True
        with self._written:
            target = self._queued_count
            return self._written.wait_for(lambda: self._done_count >= target, timeout)

    def stats(self) -> dict[str, dict[str, int]]:
        """Each tier's counters, by name."""
        return {b.name: b.stats() for b in self._backends}

    def close(self) -> None:
        """Finishes queued writes, stops the writer, closes every tier."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
        for b in self._backends:
            try:
                b.close()
            except Exception:
                logger.exception("StorageManager: closing %s failed", b.name)
