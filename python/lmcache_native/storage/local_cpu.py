"""LocalCPUBackend: chunk buffers in host memory.

A byte capacity, an eviction policy, and the hot-cache switch.

The tier holds one reference on each stored buffer. Eviction skips buffers that someone else
still references (a retrieve being scattered, a background write being serialized), so memory
being read is never evicted or reused. With the hot cache off the tier is empty and refuses
every put.
"""

from __future__ import annotations

from lmcache_native.storage.base import BoundedBackend, ChunkBufferLike


class LocalCPUBackend(BoundedBackend[ChunkBufferLike]):
    """The CPU tier.

    Args:
        capacity_bytes: the most payload bytes held at once.
        policy: ``cache_policy`` name (LRU, LFU, FIFO).
    """

    name = "LocalCPUBackend"
    capacity_key = "max_local_cpu_size"

    def __init__(self, capacity_bytes: int, policy: str = "LRU") -> None:
        """An empty CPU tier (hot cache on)."""
        super().__init__(capacity_bytes, policy)
        self._hot = True

    # -- switches ------------------------------------------------------------------------------

    @property
    def hot_cache_enabled(self) -> bool:
        """Whether the tier keeps chunks."""
        return self._hot

    def set_hot_cache(self, enabled: bool) -> int:
        """Turns the hot cache on or off; off clears the tier. Returns entries removed."""
        with self._lock:
            self._hot = bool(enabled)
        return 0 if enabled else self.clear()

    # -- interface -----------------------------------------------------------------------------

    def get(self, key: str) -> ChunkBufferLike | None:
        """The chunk under ``key`` with one reference for the caller, or ``None`` on a miss."""
        with self._lock:
            buf = self._index.get(key)
            if buf is not None:
                buf.ref()
                self._policy.on_access(key)
        if buf is None:
            self._count(misses=1)
            return None
        self._count_hit(buf)
        return buf

    def put(self, key: str, buf: ChunkBufferLike) -> bool:
        """Stores ``buf`` under ``key``; ``True`` when the tier holds it afterwards."""
        victims: list[ChunkBufferLike] = []
        with self._lock:
            if not self._hot:
                ok = False
            elif key in self._index:
                self._policy.on_access(key)
                return True
            elif buf.nbytes > self._capacity:
                ok = False
            else:
                need = self._used + buf.nbytes - self._capacity
                victims = self._pick_victims_locked(need, all_or_nothing=True)
                ok = self._used + buf.nbytes <= self._capacity
                if ok:
                    self._index[key] = buf.ref()
                    self._used += buf.nbytes
                    self._policy.on_insert(key)
        self._dispose(victims)
        if not ok:
            self._count(rejected_puts=1)
            return False
        self._count_put(buf)
        return True

    def remove(self, key: str) -> bool:
        """Deletes ``key``; ``True`` when something was deleted."""
        with self._lock:
            buf = self._pop_locked(key)
        if buf is None:
            return False
        buf.unref()
        return True

    def close(self) -> None:
        """Releases the tier's resources."""
        self.clear()

    def evict_bytes(self, nbytes: int) -> int:
        """Evicts unreferenced entries until ``nbytes`` are freed (or none is left to evict).

        Used by the storage manager when the buffer pool is full. Returns bytes freed.
        """
        with self._lock:
            victims = self._pick_victims_locked(nbytes)
        self._dispose(victims)
        return sum(b.nbytes for b in victims)

    # -- internals -----------------------------------------------------------------------------

    def _pop_locked(self, key: str) -> ChunkBufferLike | None:
        buf = self._index.pop(key, None)
        if buf is not None:
            self._used -= buf.nbytes
            self._policy.on_remove(key)
        return buf

    def _entry_size(self, entry: ChunkBufferLike) -> int:
        return entry.nbytes

    def _evictable(self, entry: ChunkBufferLike) -> bool:
        return entry.refcount <= 1  # being read or written elsewhere: never evicted

    def _dispose_one(self, entry: ChunkBufferLike) -> None:
        entry.unref()
