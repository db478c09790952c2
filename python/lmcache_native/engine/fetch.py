"""Read-ahead of a retrieve's chunks from the tiers below the CPU tier, on a few threads.

A retrieve consumes its chunks in prefix order; a chunk the CPU tier lacks costs a file read or
a Redis GET plus its xxh3 check. :class:`ReadAhead` starts those reads on a small shared pool
(:class:`FetchPool`) a few chunks ahead of the consumer, so the reads of one request overlap
each other (queue depth for a disk, round trips for Redis) and the consumer's own work. Results
come back in the consumer's order and mean exactly what ``StorageManager.get`` returns; chunks
read ahead but never consumed (the prefix stopped earlier) are released by :meth:`ReadAhead.close`.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from lmcache_native.storage import StorageManager
from lmcache_native.storage.base import ChunkBufferLike

FETCH_THREADS = 4  # reads in flight at once, over every retrieve of the engine
WINDOW = 4  # chunks read ahead of the one being consumed (bounds the buffers held early)

Fetched = tuple[ChunkBufferLike, str] | None


def _promote(manager: StorageManager, key: str) -> None:
    """Reads ``key`` from the tiers, which puts a lower-tier hit into the CPU tier."""
    got = manager.get(key)
    if got is not None:
        got[0].unref()


class FetchPool:
    """The engine's read-ahead threads, started on first use (again in a forked child).

    Besides one retrieve's reads (:class:`ReadAhead`) it promotes chunks into the CPU tier
    ahead of the retrieves that will want them (:meth:`promote`), e.g. every request of a
    step before the first is loaded; a retrieve waits for such a read instead of repeating it.
    """

    def __init__(self, threads: int = FETCH_THREADS) -> None:
        """A pool of ``threads`` reader threads (none started yet)."""
        self._threads = threads
        # NOTE: reentrant: a read already done runs its callback inside ``promote``'s lock.
        self._lock = threading.RLock()
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0
        self._closed = False
        self._promoting: dict[str, Future[None]] = {}

    def submit(self, manager: StorageManager, key: str) -> Future[Fetched] | None:
        """``manager.get(key)`` on a reader thread; ``None`` once the pool is closed."""
        with self._lock:
            pool = self._executor()
            return None if pool is None else pool.submit(manager.get, key)

    def promote(self, manager: StorageManager, keys: Sequence[str]) -> int:
        """Starts reading ``keys`` the CPU tier lacks into it; returns how many were started.

        Nothing is started without an active CPU tier that keeps what is read (hot cache on):
        the read would be thrown away.
        """
        cpu = manager.cpu
        if cpu is None or manager.is_bypassed(cpu.name) or not cpu.hot_cache_enabled:
            return 0
        todo = [k for k, hit in zip(keys, cpu.batched_contains(keys), strict=True) if not hit]
        started = 0
        with self._lock:
            for key in todo:
                pool = self._executor()
                if pool is None or key in self._promoting:
                    continue
                future = pool.submit(_promote, manager, key)
                self._promoting[key] = future
                future.add_done_callback(functools.partial(self._promoted, key))
                started += 1
        return started

    def promoting(self, key: str) -> Future[None] | None:
        """The read started by :meth:`promote` for ``key`` while it runs, else ``None``."""
        with self._lock:
            return self._promoting.get(key)

    def _promoted(self, key: str, _future: Future[None]) -> None:
        with self._lock:
            self._promoting.pop(key, None)

    def _executor(self) -> ThreadPoolExecutor | None:
        """The executor (started here), ``None`` once closed; the caller holds the lock."""
        if self._closed:
            return None
        if self._pool is None or self._pid != os.getpid():
            # NOTE: a forked child inherits the executor but not its threads: start anew.
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="lmcn-fetch")
            self._pid = os.getpid()
            self._promoting = {}
        return self._pool

    def close(self) -> None:
        """Waits for the reads in flight and stops the threads. Idempotent."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.shutdown(wait=True)


class ReadAhead:
    """One retrieve's reads: ``get(key)`` in prefix order, lower-tier chunks read ahead.

    Args:
        manager: the tiers.
        pool: the engine's reader threads.
        keys: the keys the consumer will ``get``, in order (it may stop early).
    """

    def __init__(self, manager: StorageManager, pool: FetchPool, keys: Sequence[str]) -> None:
        """Plans the reads: only keys the CPU tier lacks go to the reader threads."""
        self._manager = manager
        self._pool = pool
        cpu = manager.cpu
        in_cpu = cpu.batched_contains(keys) if cpu is not None else [False] * len(keys)
        ahead = [
            k
            for k, hit in zip(keys, in_cpu, strict=True)
            if not hit and pool.promoting(k) is None  # being read into the CPU tier already
        ]
        # NOTE: one lower-tier chunk gains nothing from a thread hand-off.
        self._ahead = ahead if len(ahead) > 1 else []
        self._pos = {k: i for i, k in enumerate(self._ahead)}
        self._next = 0
        self._futures: dict[str, Future[Fetched]] = {}

    def get(self, key: str) -> Fetched:
        """What ``manager.get(key)`` returns, from a read started ahead when there is one."""
        promoting = self._pool.promoting(key)
        if promoting is not None:
            promoting.result()  # then the CPU tier has it (or the read failed: read it again)
        pos = self._pos.get(key)
        if pos is not None:
            self._submit_until(pos + WINDOW)
            future = self._futures.pop(key, None)
            if future is not None:
                return future.result()
        return self._manager.get(key)

    def _submit_until(self, end: int) -> None:
        while self._next < min(end, len(self._ahead)):
            key = self._ahead[self._next]
            self._next += 1
            future = self._pool.submit(self._manager, key)
            if future is not None:
                self._futures[key] = future

    def close(self) -> None:
        """Stops reading ahead; waits for the reads never consumed and releases their buffers.

        Later ``get`` calls read inline (a retrieve short of pool memory calls it to free what
        was read ahead before it asks again).
        """
        self._ahead, self._pos = [], {}
        futures, self._futures = self._futures, {}
        for future in futures.values():
            try:
                got = future.result()
            except Exception:  # an unconsumed read's failure changes nothing
                continue
            if got is not None:
                got[0].unref()
