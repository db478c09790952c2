"""Host buffers that CUDA copies still read, released once the copies have run.

A retrieve into a CUDA cache scatters from pooled host buffers with ``blocking=False``: the
copy is only enqueued on the caller's stream (vLLM's forward, enqueued next on that stream, runs
after it), so the host does not wait for it. The buffers must not be reused or freed while the
copy reads them; :class:`InFlightCopies` keeps their references until the copy's event has
fired. It is checked without blocking at every retrieve, waited for when the pool runs short
and at close. A CPU copy is finished when it returns: its buffers are released at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from lmcache_native import ops
from lmcache_native.storage.base import ChunkBufferLike

logger = logging.getLogger(__name__)


class InFlightCopies:
    """Copies in flight and the buffer references each keeps until it has run."""

    def __init__(self) -> None:
        """None in flight."""
        self._lock = threading.Lock()
        self._items: list[tuple[ops.CopyHandle, Sequence[ChunkBufferLike]]] = []

    def add(self, handle: ops.CopyHandle, bufs: Sequence[ChunkBufferLike]) -> None:
        """Keeps ``bufs`` until ``handle``'s copy has run (released now if it has)."""
        if handle.done():
            _finish(handle, bufs)
            return
        with self._lock:
            self._items.append((handle, bufs))

    def pending(self) -> int:
        """How many copies still hold buffers."""
        with self._lock:
            return len(self._items)

    def reap(self, wait: bool = False) -> int:
        """Releases the buffers of the copies that have run (with ``wait``: of all of them).

        Returns:
            How many copies were released.
        """
        with self._lock:
            items, self._items = self._items, []
            # NOTE: each handle is asked once: a copy finishing between two questions would
            # otherwise be in neither list and its buffers never released.
            ran = [wait or handle.done() for handle, _ in items]
            done = [item for item, r in zip(items, ran, strict=True) if r]
            self._items = [item for item, r in zip(items, ran, strict=True) if not r]
        for handle, bufs in done:
            _finish(handle, bufs)
        return len(done)


def _finish(handle: ops.CopyHandle, bufs: Sequence[ChunkBufferLike]) -> None:
    """Waits for ``handle`` (a no-op once it has run) and drops ``bufs``' references."""
    try:
        handle.wait()
    except IndexError as exc:  # the engine checked the slots first: not expected
        logger.error("CacheEngine: a scatter found a bad slot after it was queued: %s", exc)
    finally:
        for buf in bufs:
            buf.unref()
