"""Eviction policies (``cache_policy``): LRU, LFU, FIFO.

A policy only orders keys; the tier decides whether a candidate may go (e.g. the CPU tier
skips buffers someone is still reading). Callers hold the tier's lock; policies are not
thread-safe on their own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator


class EvictionPolicy(ABC):
    """Orders keys for eviction."""

    @abstractmethod
    def on_insert(self, key: str) -> None:
        """A new key was stored."""

    @abstractmethod
    def on_access(self, key: str) -> None:
        """A stored key was read."""

    @abstractmethod
    def on_remove(self, key: str) -> None:
        """A key left the tier (evicted, removed or cleared)."""

    @abstractmethod
    def candidates(self) -> Iterator[str]:
        """Keys in eviction order (first = evict first). Do not mutate while iterating."""

    @abstractmethod
    def clear(self) -> None:
        """Forgets every key."""


class LRUPolicy(EvictionPolicy):
    """Least recently used (inserted or read) goes first."""

    def __init__(self) -> None:
        """An empty order."""
        self._order: OrderedDict[str, None] = OrderedDict()

    def on_insert(self, key: str) -> None:
        """Records a new ``key``."""
        self._order[key] = None
        self._order.move_to_end(key)

    def on_access(self, key: str) -> None:
        """Records a read of ``key``."""
        if key in self._order:
            self._order.move_to_end(key)

    def on_remove(self, key: str) -> None:
        """Forgets ``key``."""
        self._order.pop(key, None)

    def candidates(self) -> Iterator[str]:
        """Keys in eviction order, first victim first."""
        return iter(self._order)

    def clear(self) -> None:
        """Forgets every key."""
        self._order.clear()


class FIFOPolicy(LRUPolicy):
    """First inserted goes first; reads do not change the order."""

    def on_access(self, key: str) -> None:  # noqa: ARG002 - reads do not reorder FIFO
        """Records a read of ``key``."""
        return


class LFUPolicy(EvictionPolicy):
    """Least frequently used goes first; ties go least recently used first.

    Frequency buckets make every update O(1).
    """

    def __init__(self) -> None:
        """An empty order."""
        self._freq: dict[str, int] = {}
        self._buckets: dict[int, OrderedDict[str, None]] = {}

    def _bucket_add(self, key: str, f: int) -> None:
        self._buckets.setdefault(f, OrderedDict())[key] = None

    def _bucket_del(self, key: str, f: int) -> None:
        b = self._buckets[f]
        del b[key]
        if not b:
            del self._buckets[f]

    def on_insert(self, key: str) -> None:
        """Records a new ``key``."""
        if key in self._freq:
            self.on_access(key)
            return
        self._freq[key] = 1
        self._bucket_add(key, 1)

    def on_access(self, key: str) -> None:
        """Records a read of ``key``."""
        f = self._freq.get(key)
        if f is None:
            return
        self._bucket_del(key, f)
        self._freq[key] = f + 1
        self._bucket_add(key, f + 1)

    def on_remove(self, key: str) -> None:
        """Forgets ``key``."""
        f = self._freq.pop(key, None)
        if f is not None:
            self._bucket_del(key, f)

    def candidates(self) -> Iterator[str]:
        """Keys in eviction order, first victim first."""
        for f in sorted(self._buckets):
            yield from self._buckets[f]

    def clear(self) -> None:
        """Forgets every key."""
        self._freq.clear()
        self._buckets.clear()


_POLICIES: dict[str, type[EvictionPolicy]] = {
    "LRU": LRUPolicy,
    "LFU": LFUPolicy,
    "FIFO": FIFOPolicy,
}


def make_policy(name: str) -> EvictionPolicy:
    """A new policy by its ``cache_policy`` name (case-insensitive).

    Raises:
        ValueError: unknown name.
    """
    try:
        return _POLICIES[name.upper()]()
    except KeyError:
        raise ValueError(f"cache_policy must be one of {list(_POLICIES)}, got {name!r}") from None
