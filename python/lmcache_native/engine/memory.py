"""Chunk buffers and the host pool they come from.

A chunk buffer is a contiguous host tensor ``[num_kv, num_layers, num_tokens, num_heads *
head_size]`` (pinned when CUDA is in use, so the gather/scatter kernels address it directly).
Buffers carry a reference count: the CPU tier holds one reference, every reader (a retrieve, a
background write) holds one more, and a buffer returns to the pool only when the last reference
is dropped. So a buffer being read is never reused; the CPU tier also never evicts an entry whose
buffer is referenced by someone else.

The pool is sized by ``max_local_cpu_size``. Its budget covers live buffers and the freed
buffers it keeps for reuse (pinned allocation is slow); when a new size does not fit, cached
free buffers are dropped first, and ``allocate`` returns ``None`` when live buffers alone leave
no room (the storage manager then evicts from the CPU tier and retries).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np
import torch


class ChunkBuffer:
    """A reference-counted chunk buffer from a :class:`ChunkBufferPool`.

    Attributes:
        tensor: the buffer, ``[num_kv, num_layers, num_tokens, num_heads * head_size]`` (any
            shape the allocator was asked for), contiguous, on the host.
        nbytes: size of ``tensor`` in bytes.
    """

    __slots__ = ("_pool", "_raw", "_refs", "nbytes", "tensor")

    def __init__(
        self, pool: ChunkBufferPool, raw: torch.Tensor, shape: Sequence[int], dtype: torch.dtype
    ) -> None:
        """Wraps ``tensor`` with one reference held by the creator."""
        self._pool = pool
        self._raw = raw
        self._refs = 1
        self.nbytes = int(raw.numel())
        self.tensor = (
            raw.view(dtype).view(tuple(shape))
            if self.nbytes
            else torch.empty(tuple(shape), dtype=dtype)
        )

    @property
    def refcount(self) -> int:
        """Current number of references (0 once released)."""
        return self._refs

    @property
    def num_tokens(self) -> int:
        """Tokens held (dimension 2 of a chunk-shaped buffer)."""
        return int(self.tensor.shape[2]) if self.tensor.dim() == 4 else 0

    def byte_view(self) -> np.ndarray:
        """The buffer's bytes as a writable 1-D ``uint8`` numpy array (no copy)."""
        return self._raw.numpy()

    def ref(self) -> ChunkBuffer:
        """Takes one more reference and returns ``self``.

        Raises:
            RuntimeError: the buffer was already released.
        """
        with self._pool._lock:
            if self._refs <= 0:
                raise RuntimeError("ChunkBuffer.ref() on a released buffer")
            self._refs += 1
        return self

    def unref(self) -> None:
        """Drops one reference; the last one returns the buffer to its pool."""
        with self._pool._lock:
            if self._refs <= 0:
                raise RuntimeError("ChunkBuffer.unref() on a released buffer")
            self._refs -= 1
            if self._refs == 0:
                self._pool._release_locked(self._raw)
                self._raw = torch.empty(0, dtype=torch.uint8)

    def __repr__(self) -> str:
        """A short description for logs."""
        return (
            f"ChunkBuffer(shape={tuple(self.tensor.shape)}, dtype={self.tensor.dtype}, "
            f"refs={self._refs})"
        )


class ChunkBufferPool:
    """A byte-budgeted pool of host chunk buffers.

    Args:
        capacity_bytes: the budget for live plus cached free buffers.
        pin_memory: allocate page-locked memory (needs CUDA); ``None`` = pin when CUDA is
            available.
    """

    def __init__(self, capacity_bytes: int, pin_memory: bool | None = None) -> None:
        """A pool of at most ``capacity_bytes``."""
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self._lock = threading.Lock()
        self._capacity = int(capacity_bytes)
        self._used = 0  # bytes of live buffers
        self._cached = 0  # bytes of free buffers kept for reuse
        self._free: dict[int, list[torch.Tensor]] = {}
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.allocations = 0  # fresh allocations (reuse does not count)
        self.reuses = 0
        self.failed = 0

    @staticmethod
    def nbytes_for(shape: Sequence[int], dtype: torch.dtype) -> int:
        """Bytes of a buffer of ``shape`` and ``dtype``."""
        return math.prod(int(s) for s in shape) * dtype.itemsize

    @property
    def capacity_bytes(self) -> int:
        """The budget in bytes."""
        return self._capacity

    @property
    def used_bytes(self) -> int:
        """Bytes held by live buffers."""
        return self._used

    @property
    def cached_bytes(self) -> int:
        """Bytes of freed buffers kept for reuse."""
        return self._cached

    def set_pin_memory(self, pin_memory: bool) -> None:
        """Switches page-locked allocation on or off.

        Cached buffers of the other kind are dropped, so every later allocation has the
        requested kind.
        """
        with self._lock:
            if bool(pin_memory) != self.pin_memory:
                self.pin_memory = bool(pin_memory)
                self._trim_cache_locked(0)

    def set_capacity(self, capacity_bytes: int) -> None:
        """Changes the budget; cached free buffers beyond it are dropped at once.

        Live buffers are never taken back; the caller evicts them (CPU tier) if it must.
        """
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        with self._lock:
            self._capacity = int(capacity_bytes)
            self._trim_cache_locked(self._capacity - self._used)

    def allocate(self, shape: Sequence[int], dtype: torch.dtype) -> ChunkBuffer | None:
        """A buffer of ``shape``/``dtype`` with one reference, or ``None`` when over budget.

        The contents are undefined (a reused buffer keeps old bytes).
        """
        nbytes = self.nbytes_for(shape, dtype)
        with self._lock:
            bucket = self._free.get(nbytes)
            if bucket:
                raw = bucket.pop()
                self._cached -= nbytes
                self._used += nbytes
                self.reuses += 1
                return ChunkBuffer(self, raw, shape, dtype)
            if self._used + nbytes > self._capacity:
                self.failed += 1
                return None
            self._trim_cache_locked(self._capacity - self._used - nbytes)
            self._used += nbytes
            self.allocations += 1
        try:
            raw = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pin_memory)
        except BaseException:
            with self._lock:
                self._used -= nbytes
            raise
        return ChunkBuffer(self, raw, shape, dtype)

    def _trim_cache_locked(self, room: int) -> None:
        """Drops cached free buffers until they fit in ``room`` bytes."""
        if self._cached <= room:
            return
        for size in sorted(self._free, reverse=True):
            bucket = self._free[size]
            while bucket and self._cached > room:
                bucket.pop()
                self._cached -= size
            if not bucket:
                del self._free[size]
            if self._cached <= room:
                return

    def _release_locked(self, raw: torch.Tensor) -> None:
        nbytes = int(raw.numel())
        self._used -= nbytes
        if self._used + self._cached + nbytes <= self._capacity:
            self._free.setdefault(nbytes, []).append(raw)
            self._cached += nbytes

    def stats(self) -> dict[str, int | bool]:
        """Budget, live and cached bytes, and allocation counters."""
        with self._lock:
            return {
                "capacity_bytes": self._capacity,
                "used_bytes": self._used,
                "cached_bytes": self._cached,
                "allocations": self.allocations,
                "reuses": self.reuses,
                "failed_allocations": self.failed,
                "pinned": self.pin_memory,
            }
