"""Chunk statistics: how many chunks requests carry, how many are unique, the reuse rate.

Unique chunks are counted with a Bloom filter (rbloom), so memory stays bounded however many
chunks pass: ``expected_items`` sizes the filter (about 1.8 bytes per expected item at a 0.1 %
false-positive rate); beyond that the unique count drifts low, memory does not grow. A false
positive counts a new chunk as a duplicate, so ``unique_chunks`` is a lower bound.

Collection stops by itself after ``chunk_statistics_auto_exit_timeout_hours`` or once
``chunk_statistics_auto_exit_target_unique_chunks`` unique chunks were seen (0 = never); both
are read from the config on every check, so a runtime change applies at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

import xxhash
from rbloom import Bloom

from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.errors import StatisticsUnavailableError

DEFAULT_FALSE_POSITIVE_RATE = 0.001


def _bloom_hash(item: str) -> int:
    # rbloom wants a signed 128-bit int; xxh3_128 of the hex string spreads 64-bit chunk hashes
    # over all 128 bits, and (unlike hash()) is the same in every process.
    return xxhash.xxh3_128_intdigest(item.encode()) - (1 << 127)


class ChunkStatistics:
    """Counts chunks seen by the engine while collecting.

    Args:
        config: the engine config (``enable_chunk_statistics`` and the auto-exit keys).
        expected_items: Bloom filter sizing (default: ``chunk_statistics_expected_items``).
    """

    def __init__(self, config: LMCacheEngineConfig, expected_items: int | None = None) -> None:
        """Statistics per ``config``; collecting starts now when auto-start is on."""
        self._config = config
        self.available: bool = bool(config.get("enable_chunk_statistics"))
        self._expected = int(expected_items or config.get("chunk_statistics_expected_items"))
        self._lock = threading.Lock()
        self._bloom: Bloom | None = None
        self._collecting = False
        self._started_at: float | None = None
        self._stopped_at: float | None = None
        self._stop_reason: str | None = None
        self._requests = 0
        self._total = 0
        self._unique = 0
        self._record_seconds = 0.0
        if self.available and config.get("chunk_statistics_auto_start_statistics"):
            self.start()

    def _require(self) -> None:
        if not self.available:
            raise StatisticsUnavailableError()

    # -- control -------------------------------------------------------------------------------

    @property
    def is_collecting(self) -> bool:
        """Whether chunks are being counted now (after applying the auto-exit rules)."""
        with self._lock:
            self._check_auto_exit_locked()
            return self._collecting

    def start(self) -> None:
        """Starts (or keeps) collecting; counts so far are kept.

        Raises:
            StatisticsUnavailableError: statistics are disabled.
        """
        self._require()
        with self._lock:
            if self._bloom is None:
                self._bloom = Bloom(self._expected, DEFAULT_FALSE_POSITIVE_RATE, _bloom_hash)
            if not self._collecting:
                self._collecting = True
                self._started_at = time.time()
                self._stopped_at = None
                self._stop_reason = None

    def stop(self) -> None:
        """Stops collecting; counts are kept."""
        self._require()
        with self._lock:
            self._stop_locked("stopped")

    def reset(self) -> None:
        """Zeroes the counts and forgets the seen chunks (collection state unchanged)."""
        self._require()
        with self._lock:
            if self._bloom is not None:
                self._bloom.clear()
            self._requests = self._total = self._unique = 0
            self._record_seconds = 0.0
            if self._collecting:
                self._started_at = time.time()

    def _stop_locked(self, reason: str) -> None:
        if self._collecting:
            self._collecting = False
            self._stopped_at = time.time()
            self._stop_reason = reason

    def _check_auto_exit_locked(self) -> None:
        if not self._collecting:
            return
        hours = float(self._config.get("chunk_statistics_auto_exit_timeout_hours"))
        target = int(self._config.get("chunk_statistics_auto_exit_target_unique_chunks"))
        started = self._started_at
        if hours > 0 and started is not None and time.time() - started >= hours * 3600.0:
            self._stop_locked("auto_exit_timeout")
            return
        if target > 0 and self._unique >= target:
            self._stop_locked("auto_exit_target_unique_chunks")

    # -- recording -----------------------------------------------------------------------------

    def record(self, chunk_hashes: Iterable[str | int]) -> None:
        """Counts one request carrying ``chunk_hashes`` (hex strings or ints).

        A no-op unless collecting.
        """
        if not self.available:
            return
        t0 = time.perf_counter()
        items = [h if isinstance(h, str) else format(int(h), "x") for h in chunk_hashes]
        with self._lock:
            self._check_auto_exit_locked()
            if not self._collecting or self._bloom is None:
                return
            self._requests += 1
            for item in items:
                self._total += 1
                if item not in self._bloom:
                    self._bloom.add(item)
                    self._unique += 1
            self._record_seconds += time.perf_counter() - t0
            self._check_auto_exit_locked()

    # -- reading -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The counts, timing and auto-exit settings (the ``/chunk_statistics/status`` body).

        Raises:
            StatisticsUnavailableError: statistics are disabled.
        """
        self._require()
        hours = float(self._config.get("chunk_statistics_auto_exit_timeout_hours"))
        target = int(self._config.get("chunk_statistics_auto_exit_target_unique_chunks"))
        with self._lock:
            self._check_auto_exit_locked()
            now = time.time()
            dup = self._total - self._unique
            end = now if self._collecting else (self._stopped_at or now)
            elapsed = (end - self._started_at) if self._started_at is not None else 0.0
            return {
                "is_collecting": self._collecting,
                "requests": self._requests,
                "total_chunks": self._total,
                "unique_chunks": self._unique,
                "duplicate_chunks": dup,
                "reuse_rate": (dup / self._total) if self._total else 0.0,
                "timestamp": now,
                "started_at": self._started_at,
                "stopped_at": self._stopped_at,
                "stop_reason": self._stop_reason,
                "collection_seconds": elapsed,
                "record_seconds": self._record_seconds,
                "strategy": "memory_bloom_filter",
                "bloom_filter_bytes": (
                    self._bloom.size_in_bits // 8 if self._bloom is not None else 0
                ),
                "bloom_filter_expected_items": self._expected,
                "auto_exit_enabled": hours > 0 or target > 0,
                "auto_exit_timeout_hours": hours,
                "auto_exit_target_unique_chunks": target,
            }
