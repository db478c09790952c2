"""Prometheus metrics of one engine, on the engine's own ``CollectorRegistry``.

Two kinds of series, all measured:

- engine counters and histograms updated on the data path (requests, chunk hits by tier,
  tokens/bytes stored and retrieved, copy time and bytes of the native gather/scatter,
  checksum time, skipped stores by reason);
- per-tier series read from each tier's own counters at scrape time (hits, misses, chunks,
  tokens and bytes stored and read, evictions, checksum failures, errors, current size), plus
  the buffer pool and the background writer queue.

LMCache's metric names (``lmcache:num_store_requests``, ``lmcache:time_to_store``, ...) are
derived at scrape time from the same counters and histograms (see
:class:`~lmcache_native.stats.lmcache_collector.LMCacheCollector`):
each measurement is taken once. :meth:`EngineMetrics.reset` zeroes the counters and histograms
of both (as LMCache's ``/metrics/reset`` does); gauges keep reading the current state.

Serve them with ``prometheus_client.generate_latest(metrics.registry)``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from lmcache_native.stats.lmcache_collector import LMCACHE_LABELS, LMCacheCollector

PREFIX = "lmcache"

_COPY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)

# LMCache's buckets (lmcache/observability.py): store/retrieve time (s), lookup time (s), speed
# (tokens/s).
_OP_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
_LOOKUP_BUCKETS = tuple(0.00001 * 2**i for i in range(20))
_SPEED_BUCKETS = tuple(float(2**i) for i in (0, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16))

# tier stat field -> (metric name, help, is_counter)
_TIER_SERIES: dict[str, tuple[str, str, bool]] = {
    "hits": ("tier_hits", "Chunk reads answered by the tier", True),
    "misses": ("tier_misses", "Chunk reads the tier could not answer", True),
    "puts": ("tier_stored_chunks", "Chunks written to the tier", True),
    "put_bytes": ("tier_stored_bytes", "Payload bytes written to the tier", True),
    "put_tokens": ("tier_stored_tokens", "Tokens written to the tier", True),
    "get_bytes": ("tier_retrieved_bytes", "Payload bytes read from the tier", True),
    "get_tokens": ("tier_retrieved_tokens", "Tokens read from the tier", True),
    "rejected_puts": ("tier_rejected_puts", "Writes the tier refused (no room, off, down)", True),
    "evictions": ("tier_evictions", "Chunks evicted for capacity", True),
    "checksum_failures": (
        "checksum_failures",
        "Chunks whose header or payload checksum failed (deleted, served as a miss)",
        True,
    ),
    "errors": ("tier_errors", "I/O or connection errors (served as a miss)", True),
    "used_bytes": ("tier_used_bytes", "Bytes held by the tier", False),
    "capacity_bytes": ("tier_capacity_bytes", "Capacity of the tier in bytes", False),
    "num_chunks": ("tier_chunks", "Chunks held by the tier", False),
}

# attribute -> (series name after the prefix, help, label names, buckets; None: a counter)
_SERIES: dict[str, tuple[str, str, tuple[str, ...], tuple[float, ...] | None]] = {
    "requests": ("requests", "Engine calls by operation", ("op",), None),
    "lookup_tokens": ("lookup_tokens", "Tokens asked for by lookup()", (), None),
    "lookup_hit_tokens": ("lookup_hit_tokens", "Tokens lookup() found stored", (), None),
    "retrieve_requested_tokens": (
        "retrieve_requested_tokens",
        "Tokens asked for by retrieve()",
        (),
        None,
    ),
    "hit_chunks": ("hit_chunks", "Chunks loaded by retrieve(), by source tier", ("tier",), None),
    "miss_chunks": ("miss_chunks", "Chunks retrieve() asked for but did not load", (), None),
    "stored_tokens": ("stored_tokens", "Tokens copied out of the KV cache by store()", (), None),
    "stored_bytes": ("stored_bytes", "Bytes copied out of the KV cache by store()", (), None),
    "retrieved_tokens": (
        "retrieved_tokens",
        "Tokens copied into the KV cache by retrieve(), by source tier",
        ("tier",),
        None,
    ),
    "retrieved_bytes": (
        "retrieved_bytes",
        "Bytes copied into the KV cache by retrieve(), by source tier",
        ("tier",),
        None,
    ),
    "skipped_stores": (
        "skipped_store_chunks",
        "Chunks store() did not copy, by reason",
        ("reason",),
        None,
    ),
    "rejected_chunks": (
        "rejected_chunks",
        "Chunks a tier returned that did not fit the registered cache (dropped, a miss)",
        (),
        None,
    ),
    "copy_seconds": (
        "copy_seconds",
        "Time of one native gather (store) or scatter (retrieve) call",
        ("direction",),
        _COPY_BUCKETS,
    ),
    "copy_bytes": (
        "copy_bytes",
        "Bytes moved by native gather/scatter calls",
        ("direction",),
        None,
    ),
    "checksum_seconds": (
        "kv_checksum_seconds",
        "Time of one kv_checksums() call (native MD5)",
        (),
        _COPY_BUCKETS,
    ),
    "store_seconds": ("store_seconds", "Time of one store() call (whole call)", (), _OP_BUCKETS),
    "retrieve_seconds": (
        "retrieve_seconds",
        "Time of one retrieve() call (whole call)",
        (),
        _OP_BUCKETS,
    ),
    "lookup_seconds": ("lookup_seconds", "Time of one lookup() call", (), _LOOKUP_BUCKETS),
    "store_speed": (
        "store_tokens_per_second",
        "Tokens stored per second of one store() call that stored tokens",
        (),
        _SPEED_BUCKETS,
    ),
    "retrieve_speed": (
        "retrieve_tokens_per_second",
        "Tokens loaded per second of one retrieve() call that loaded tokens",
        (),
        _SPEED_BUCKETS,
    ),
}

TierStatsFn = Callable[[], dict[str, dict[str, int]]]
GaugesFn = Callable[[], dict[str, tuple[float, str, bool]]]
StatusFn = Callable[[], "dict[str, Any] | None"]


class _TierCollector(Collector):
    """Reads tier counters (and pool/writer figures) when Prometheus scrapes."""

    def __init__(self, metrics: EngineMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        stats = self._metrics.tier_stats()
        for field, (name, doc, is_counter) in _TIER_SERIES.items():
            fam_cls = CounterMetricFamily if is_counter else GaugeMetricFamily
            fam = fam_cls(f"{PREFIX}_{name}", doc, labels=["tier"])
            for tier, st in stats.items():
                if field in st:
                    fam.add_metric([tier], float(st[field]))
            yield fam
        for name, (value, doc, is_counter) in self._metrics.extra_gauges().items():
            fam_cls = CounterMetricFamily if is_counter else GaugeMetricFamily
            yield fam_cls(f"{PREFIX}_{name}", doc, value=float(value))


class EngineMetrics:
    """The metrics of one engine.

    Attributes:
        registry: the engine's own registry (never the global default one).
        labels: values of LMCache's labels (``model_name``, ``worker_id``, ``role``,
            ``served_model_name``) on the ``lmcache:*`` series.
        created: when the counters were created or last reset (Unix time).
    """

    requests: Counter
    lookup_tokens: Counter
    lookup_hit_tokens: Counter
    retrieve_requested_tokens: Counter
    hit_chunks: Counter
    miss_chunks: Counter
    stored_tokens: Counter
    stored_bytes: Counter
    retrieved_tokens: Counter
    retrieved_bytes: Counter
    skipped_stores: Counter
    rejected_chunks: Counter
    copy_seconds: Histogram
    copy_bytes: Counter
    checksum_seconds: Histogram
    store_seconds: Histogram
    retrieve_seconds: Histogram
    lookup_seconds: Histogram
    store_speed: Histogram
    retrieve_speed: Histogram

    def __init__(self) -> None:
        """Creates the series on a new registry (bound to storage and engine later)."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.labels: dict[str, str] = {k: "" for k in LMCACHE_LABELS}
        self.health_fn: Callable[[], bool] | None = None
        self.statistics_fn: StatusFn | None = None
        self.threads_fn: StatusFn | None = None
        self._tier_stats: TierStatsFn | None = None
        self._extra: GaugesFn | None = None
        self._baseline: dict[str, dict[str, int]] = {}
        self._extra_baseline: dict[str, float] = {}
        self._reset_lock = threading.Lock()
        self._own: list[Collector] = []
        self._build()
        self.registry.register(_TierCollector(self))
        self.registry.register(LMCacheCollector(self))

    def _build(self) -> None:
        """Creates (again) the counters and histograms measured on the data path."""
        r = self.registry
        for c in self._own:
            r.unregister(c)
        self.created = time.time()
        self._own = []
        for attr, (name, doc, labels, buckets) in _SERIES.items():
            metric: Counter | Histogram
            if buckets is None:
                metric = Counter(f"{PREFIX}_{name}", doc, labels, registry=r)
            else:
                metric = Histogram(f"{PREFIX}_{name}", doc, labels, buckets=buckets, registry=r)
            setattr(self, attr, metric)
            self._own.append(metric)

    def bind_storage(self, tier_stats: TierStatsFn, extra: GaugesFn | None = None) -> None:
        """Publishes per-tier counters read from ``tier_stats()`` at scrape time."""
        self._tier_stats = tier_stats
        self._extra = extra

    def bind_engine(
        self,
        labels: dict[str, str],
        health: Callable[[], bool] | None = None,
        statistics: StatusFn | None = None,
        threads: StatusFn | None = None,
    ) -> None:
        """Sets LMCache's label values and the readers the ``lmcache:*`` gauges use.

        The readers: health, chunk statistics and the background-thread summary.
        """
        self.labels = {k: str(labels.get(k, "")) for k in LMCACHE_LABELS}
        self.health_fn = health
        self.statistics_fn = statistics
        self.threads_fn = threads

    def tier_stats(self) -> dict[str, dict[str, int]]:
        """Each tier's stats, counters counted from the last :meth:`reset`."""
        if self._tier_stats is None:
            return {}
        stats = self._tier_stats()
        out: dict[str, dict[str, int]] = {}
        for tier, st in stats.items():
            base = self._baseline.get(tier, {})
            out[tier] = {
                k: (v - base.get(k, 0)) if _TIER_SERIES.get(k, ("", "", False))[2] else v
                for k, v in st.items()
            }
        return out

    def extra_gauges(self) -> dict[str, tuple[float, str, bool]]:
        """The pool/writer series, counters counted from the last :meth:`reset`."""
        if self._extra is None:
            return {}
        out = {}
        for name, (value, doc, is_counter) in self._extra().items():
            if is_counter:
                value = value - self._extra_baseline.get(name, 0.0)
            out[name] = (value, doc, is_counter)
        return out

    def reset(self) -> None:
        """Zeroes every counter and histogram (LMCache's ``/metrics/reset``).

        The data-path ones are created again, the tiers' counters are counted from now on.
        Gauges (sizes, health, chunk statistics) are state, not reset.
        """
        with self._reset_lock:
            self._build()
            if self._tier_stats is not None:
                self._baseline = {t: dict(st) for t, st in self._tier_stats().items()}
            if self._extra is not None:
                self._extra_baseline = {
                    n: float(v) for n, (v, _, is_counter) in self._extra().items() if is_counter
                }

    def observe_op(self, op: str, seconds: float, tokens: int) -> None:
        """Records one store/retrieve/lookup call.

        Its time and, when it moved tokens, its speed (tokens per second).
        """
        if op == "store":
            self.store_seconds.observe(seconds)
            if tokens > 0 and seconds > 0:
                self.store_speed.observe(tokens / seconds)
        elif op == "retrieve":
            self.retrieve_seconds.observe(seconds)
            if tokens > 0 and seconds > 0:
                self.retrieve_speed.observe(tokens / seconds)
        elif op == "lookup":
            self.lookup_seconds.observe(seconds)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The current value of a sample (0.0 when absent); for tests and the CLI."""
        v = self.registry.get_sample_value(name, labels or {})
        return 0.0 if v is None else float(v)
