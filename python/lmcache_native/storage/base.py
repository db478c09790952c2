"""The storage tier interface, its counters, and the buffer protocols tiers depend on.

Tiers store chunk buffers under string keys (``CacheKey.to_string()``). A miss — absent,
corrupt, or a tier that is down — is ``None``/``False``, never an exception. Buffers handed out
by :meth:`StorageBackend.get` carry one reference that the caller must drop with ``unref()``.

The storage layer never imports the engine: buffers and their allocator are protocols here, and
the engine's ``ChunkBufferPool`` implements them.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np
import torch

from lmcache_native.config import size_bytes
from lmcache_native.storage.policies import make_policy


class ChunkBufferLike(Protocol):
    """A reference-counted host chunk buffer (``lmcache_native.engine.memory.ChunkBuffer``)."""

    tensor: torch.Tensor
    nbytes: int

    @property
    def num_tokens(self) -> int:
        """Tokens the chunk covers."""

    def byte_view(self) -> np.ndarray:
        """The payload as a flat uint8 array (no copy)."""

    def ref(self) -> ChunkBufferLike:
        """Takes one more reference; returns the buffer."""

    def unref(self) -> None:
        """Drops one reference (the memory is reused at zero)."""

    @property
    def refcount(self) -> int:
        """Current references."""


#: Allocates a buffer of (shape, dtype) with one reference, or returns None when out of memory.
Allocator = Callable[[Sequence[int], torch.dtype], "ChunkBufferLike | None"]


@dataclass
class TierStats:
    """Measured counters of one tier (monotonic) plus its current size.

    Attributes:
        hits, misses: ``get`` outcomes (a corrupt entry or a down tier is a miss).
        puts: entries written; ``put_bytes``/``put_tokens`` their payload bytes and tokens.
        rejected_puts: ``put`` calls that stored nothing (no room, hot cache off, tier down).
        get_bytes, get_tokens: payload bytes and tokens returned by hits.
        evictions: entries dropped for capacity.
        checksum_failures: entries whose header or payload check failed (then deleted).
        errors: I/O or connection errors (the tier answered a miss instead).
        used_bytes, capacity_bytes, num_chunks: current size (capacity 0 = unbounded/unknown).
    """

    hits: int = 0
    misses: int = 0
    puts: int = 0
    put_bytes: int = 0
    put_tokens: int = 0
    rejected_puts: int = 0
    get_bytes: int = 0
    get_tokens: int = 0
    evictions: int = 0
    checksum_failures: int = 0
    errors: int = 0
    used_bytes: int = 0
    capacity_bytes: int = 0
    num_chunks: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return asdict(self)


class StorageBackend(ABC):
    """One storage tier.

    Subclasses set ``name`` (the name the admin API and ``bypass`` use) and implement the
    abstract methods thread-safely. The batched variants default to loops.
    """

    name: ClassVar[str] = "StorageBackend"

    def __init__(self) -> None:
        """Starts with zeroed counters."""
        self._stats = TierStats()
        self._stats_lock = threading.Lock()

    # -- the interface -------------------------------------------------------------------------

    @abstractmethod
    def contains(self, key: str) -> bool:
        """Whether ``key`` is stored (cheap; does not verify the payload)."""

    @abstractmethod
    def get(self, key: str) -> ChunkBufferLike | None:
        """The chunk under ``key`` with one reference for the caller, or ``None`` on a miss."""

    @abstractmethod
    def put(self, key: str, buf: ChunkBufferLike) -> bool:
        """Stores ``buf`` under ``key``; the caller keeps its own reference.

        Returns:
            ``True`` when the tier holds ``key`` afterwards (also when it already did).
        """

    @abstractmethod
    def remove(self, key: str) -> bool:
        """Deletes ``key``; ``True`` when something was deleted."""

    @abstractmethod
    def clear(self) -> int:
        """Deletes every entry this tier owns; returns how many were deleted."""

    def keys(self) -> list[str]:
        """The stored keys (diagnostics and tests; may be slow for remote tiers)."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Releases resources (buffers, files, connections)."""

    def apply_config(self, name: str, value: Any) -> None:  # noqa: B027 - optional hook
        """Reacts to a runtime change of configuration key ``name`` (its own keys only).

        The engine passes every change to every tier; a tier ignores keys it does not use.
        """

    def batched_contains(self, keys: Sequence[str]) -> list[bool]:
        """``contains`` for each key."""
        return [self.contains(k) for k in keys]

    def batched_get(self, keys: Sequence[str]) -> list[ChunkBufferLike | None]:
        """``get`` for each key."""
        return [self.get(k) for k in keys]

    def batched_put(self, items: Iterable[tuple[str, ChunkBufferLike]]) -> list[bool]:
        """``put`` for each (key, buffer)."""
        return [self.put(k, b) for k, b in items]

    def stats(self) -> dict[str, int]:
        """Counters and current size (see :class:`TierStats`)."""
        with self._stats_lock:
            out = self._stats.as_dict()
        out.update(self._size_stats())
        return out

    def _size_stats(self) -> dict[str, int]:
        """``used_bytes``/``capacity_bytes``/``num_chunks``; subclasses override."""
        return {}

    # -- counter helpers -----------------------------------------------------------------------

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            for field, d in deltas.items():
                setattr(self._stats, field, getattr(self._stats, field) + d)

    def _count_hit(self, buf: ChunkBufferLike) -> None:
        self._count(hits=1, get_bytes=buf.nbytes, get_tokens=buf.num_tokens)

    def _count_put(self, buf: ChunkBufferLike) -> None:
        self._count(puts=1, put_bytes=buf.nbytes, put_tokens=buf.num_tokens)


E = TypeVar("E")


class BoundedBackend(StorageBackend, Generic[E]):
    """A tier with an in-memory index (key -> entry ``E``), a byte capacity and an eviction policy.

    Subclasses keep ``_index``, ``_used`` and ``_policy`` consistent under ``_lock`` and implement
    :meth:`_entry_size` (and :meth:`_evictable`, for entries in use) and :meth:`_dispose_one` (free
    one removed entry, called outside the lock).

    Args:
        capacity_bytes: the most bytes held at once.
        policy: ``cache_policy`` name (LRU, LFU, FIFO).
    """

    #: The configuration key (a size in GB) that resizes this tier at runtime, if any.
    capacity_key: ClassVar[str | None] = None

    def __init__(self, capacity_bytes: int, policy: str) -> None:
        """An empty tier of ``capacity_bytes`` evicting by ``policy``."""
        super().__init__()
        self._lock = threading.Lock()
        self._index: dict[str, E] = {}
        self._policy = make_policy(policy)
        self._capacity = int(capacity_bytes)
        self._used = 0

    @property
    def capacity_bytes(self) -> int:
        """Capacity in bytes."""
        return self._capacity

    def apply_config(self, name: str, value: Any) -> None:
        """A change of :attr:`capacity_key` resizes the tier (evicting down to the new size)."""
        if name == self.capacity_key:
            self.set_capacity(size_bytes(value))

    def set_capacity(self, capacity_bytes: int) -> int:
        """Changes the capacity, evicting down to it. Returns entries evicted."""
        with self._lock:
            self._capacity = int(capacity_bytes)
            victims = self._pick_victims_locked(self._used - self._capacity)
        self._dispose(victims)
        return len(victims)

    def contains(self, key: str) -> bool:
        """Whether ``key`` is stored (from the index; the payload is not read)."""
        with self._lock:
            return key in self._index

    def batched_contains(self, keys: Sequence[str]) -> list[bool]:
        """``contains`` for each key, in one pass."""
        with self._lock:
            return [k in self._index for k in keys]

    def keys(self) -> list[str]:
        """The stored keys."""
        with self._lock:
            return list(self._index)

    def _size_stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "used_bytes": self._used,
                "capacity_bytes": self._capacity,
                "num_chunks": len(self._index),
            }

    @abstractmethod
    def _entry_size(self, entry: E) -> int:
        """Bytes ``entry`` counts against the capacity."""

    def _evictable(self, entry: E) -> bool:  # noqa: ARG002 - a hook
        """Whether ``entry`` may be evicted now (all may, unless a tier says otherwise)."""
        return True

    def _pick_victims_locked(self, need: int, all_or_nothing: bool = False) -> list[E]:
        """Removes evictable entries in policy order until ``need`` bytes are freed.

        With ``all_or_nothing``, removes nothing unless ``need`` bytes can be freed.

        Returns:
            The removed entries (to be disposed of outside the lock).
        """
        if need <= 0:
            return []
        chosen: list[str] = []
        freed = 0
        for key in self._policy.candidates():
            if freed >= need:
                break
            entry = self._index[key]
            if not self._evictable(entry):
                continue
            chosen.append(key)
            freed += self._entry_size(entry)
        if all_or_nothing and freed < need:
            return []
        victims = []
        for key in chosen:
            entry = self._index.pop(key)
            self._used -= self._entry_size(entry)
            self._policy.on_remove(key)
            victims.append(entry)
        return victims

    @abstractmethod
    def _dispose_one(self, entry: E) -> None:
        """Frees one entry already removed from the index (outside the lock)."""

    def clear(self) -> int:
        """Deletes every entry (not counted as evictions); returns how many were deleted."""
        with self._lock:
            victims = list(self._index.values())
            self._index.clear()
            self._policy.clear()
            self._used = 0
        for e in victims:
            self._dispose_one(e)
        return len(victims)

    def _dispose(self, victims: list[E]) -> None:
        """Counts ``victims`` as evictions and frees each (outside the lock)."""
        if victims:
            self._count(evictions=len(victims))
        for e in victims:
            self._dispose_one(e)


class RateLimitedLogger:
    """Logs at most one message per ``interval`` seconds per tag, counting what it suppressed."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        """Logs to ``logger`` at most once per ``interval`` seconds per tag."""
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, tag: str, msg: str, *args: Any) -> None:
        """Logs ``msg % args`` as a warning unless ``tag`` logged within the interval."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(tag)
            if last is not None and now - last < self._interval:
                self._suppressed[tag] = self._suppressed.get(tag, 0) + 1
                return
            suppressed = self._suppressed.pop(tag, 0)
            self._last[tag] = now
        if suppressed:
            msg += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        self._logger.warning(msg, *args)
