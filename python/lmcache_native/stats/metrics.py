"""Prometheus metrics of one engine, on the engine's own ``CollectorRegistry``.

Two kinds of series, all measured:

- engine counters and histograms updated on the data path (requests, chunk hits by tier,
  tokens/bytes stored and retrieved, copy time and bytes of the native gather/scatter,
  checksum time, skipped stores by reason);
- per-tier series read from each tier's own counters at scrape time (hits, misses, chunks,
  tokens and bytes stored and read, evictions, checksum failures, errors, current size), plus
  the buffer pool and the background writer queue.

LMCache's metric names (``lmcache:num_store_requests``, ``lmcache:time_to_store``, ...) are
derived at scrape time from the same counters and histograms (see :class:`LMCacheCollector`):
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
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

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

LMCACHE_LABELS = ("model_name", "worker_id", "role", "served_model_name")
"""Label names of LMCache's metrics (its ``PrometheusLogger`` labels)."""

CPU_TIER = "LocalCPUBackend"
DISK_TIER = "LocalDiskBackend"

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


def _counter_value(counter: Counter, **match: str) -> float:
    """Sum of a counter's ``_total`` samples whose labels include ``match``."""
    total = 0.0
    for fam in counter.collect():
        for sample in fam.samples:
            if not sample.name.endswith("_total"):
                continue
            if all(sample.labels.get(k) == v for k, v in match.items()):
                total += sample.value
    return total


def _histogram_parts(hist: Histogram) -> tuple[list[tuple[str, float]], float]:
    """``(cumulative buckets as (le, count), sum)`` of an unlabelled histogram."""
    buckets: list[tuple[str, float]] = []
    total = 0.0
    for fam in hist.collect():
        for sample in fam.samples:
            if sample.name.endswith("_bucket"):
                buckets.append((sample.labels["le"], sample.value))
            elif sample.name.endswith("_sum"):
                total = sample.value
    return buckets, total


class LMCacheCollector(Collector):
    """LMCache's in-process metric names, derived from :class:`EngineMetrics` at scrape time.

    Same names, types and label names (``model_name``, ``worker_id``, ``role``,
    ``served_model_name``) as LMCache's ``PrometheusLogger``; counters are exposed with the
    ``_total`` suffix as prometheus_client exposes LMCache's. Hit-rate gauges are the ratio
    since the start (or the last reset) rather than over LMCache's last logging interval.
    """

    def __init__(self, metrics: EngineMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        labelnames = list(LMCACHE_LABELS)
        values = [m.labels.get(k, "") for k in LMCACHE_LABELS]
        created = m.created

        tiers = m.tier_stats()
        remote = [st for name, st in tiers.items() if name not in (CPU_TIER, DISK_TIER)]
        requested = _counter_value(m.retrieve_requested_tokens)
        hit = _counter_value(m.retrieved_tokens)
        lookup_tokens = _counter_value(m.lookup_tokens)
        lookup_hits = _counter_value(m.lookup_hit_tokens)
        dropped = m.extra_gauges().get("write_queue_dropped", (0.0, "", True))[0]
        healthy = m.health_fn() if m.health_fn is not None else True
        st = (m.statistics_fn() if m.statistics_fn is not None else None) or {}

        def remote_sum(*fields: str) -> float:
            return float(sum(t.get(f, 0) for t in remote for f in fields))

        def tier_field(tier: str, field: str) -> float:
            return float(tiers.get(tier, {}).get(field, 0))

        counters = (
            ("num_retrieve_requests", "Retrieve calls", _counter_value(m.requests, op="retrieve")),
            ("num_store_requests", "Store calls", _counter_value(m.requests, op="store")),
            ("num_lookup_requests", "Lookup calls", _counter_value(m.requests, op="lookup")),
            ("num_requested_tokens", "Tokens asked for by retrieve calls", requested),
            ("num_hit_tokens", "Tokens retrieve calls loaded", hit),
            (
                "num_stored_tokens",
                "Tokens stored (evicted ones included)",
                _counter_value(m.stored_tokens),
            ),
            ("num_lookup_tokens", "Tokens asked for by lookup calls", lookup_tokens),
            ("num_lookup_hits", "Tokens lookup calls found stored", lookup_hits),
            (
                "num_remote_read_requests",
                "Chunk reads sent to the remote tier",
                remote_sum("hits", "misses"),
            ),
            (
                "num_remote_read_bytes",
                "Payload bytes read from the remote tier",
                remote_sum("get_bytes"),
            ),
            (
                "num_remote_write_requests",
                "Chunk writes sent to the remote tier",
                remote_sum("puts", "rejected_puts"),
            ),
            (
                "num_remote_write_bytes",
                "Payload bytes written to the remote tier",
                remote_sum("put_bytes"),
            ),
            (
                "local_cpu_evict_count",
                "Chunks the CPU tier evicted for room",
                tier_field(CPU_TIER, "evictions"),
            ),
        )
        gauges: list[tuple[str, str, float]] = [
            (
                "retrieve_hit_rate",
                "Loaded / requested tokens of retrieve calls (since start or the last reset)",
                hit / requested if requested > 0 else 0.0,
            ),
            (
                "lookup_hit_rate",
                "Found / requested tokens of lookup calls (since start or the last reset)",
                lookup_hits / lookup_tokens if lookup_tokens > 0 else 0.0,
            ),
            ("local_cache_usage", "Bytes held by the CPU tier", tier_field(CPU_TIER, "used_bytes")),
            ("remote_cache_usage", "Bytes held by the remote tier", remote_sum("used_bytes")),
            (
                "local_storage_usage",
                "Bytes held by the disk tier",
                tier_field(DISK_TIER, "used_bytes"),
            ),
            (
                "put_failed_count",
                "Writes a tier refused plus writes the full writer queue dropped",
                float(sum(t.get("rejected_puts", 0) for t in tiers.values())) + float(dropped),
            ),
            (
                "lmcache_is_healthy",
                "1 while every tier and critical thread is healthy, else 0",
                1.0 if healthy else 0.0,
            ),
            (
                "chunk_statistics_enabled",
                "1 while chunk statistics are collected",
                1.0 if st.get("is_collecting") else 0.0,
            ),
            (
                "chunk_statistics_total_requests",
                "Requests seen by chunk statistics",
                float(st.get("requests", 0)),
            ),
            (
                "chunk_statistics_total_chunks",
                "Chunks seen by chunk statistics",
                float(st.get("total_chunks", 0)),
            ),
            (
                "chunk_statistics_unique_chunks",
                "Distinct chunks seen (Bloom filter estimate)",
                float(st.get("unique_chunks", 0)),
            ),
            (
                "chunk_statistics_reuse_rate",
                "Share of chunks seen before (0 to 1)",
                float(st.get("reuse_rate", 0.0)),
            ),
            (
                "chunk_statistics_bloom_filter_size_mb",
                "Memory of the Bloom filter (MiB)",
                float(st.get("bloom_filter_bytes", 0)) / (1024 * 1024),
            ),
        ]
        histograms = (
            ("time_to_retrieve", "Seconds per retrieve call", m.retrieve_seconds),
            ("time_to_store", "Seconds per store call", m.store_seconds),
            ("time_to_lookup", "Seconds per lookup call", m.lookup_seconds),
            (
                "retrieve_speed",
                "Tokens per second of retrieve calls that loaded tokens",
                m.retrieve_speed,
            ),
            ("store_speed", "Tokens per second of store calls that stored tokens", m.store_speed),
        )
        for name, doc, value in counters:
            fam = CounterMetricFamily(f"lmcache:{name}", doc, labels=labelnames)
            fam.add_metric(values, value, created=created)
            yield fam
        threads = m.threads_fn() if m.threads_fn is not None else None
        if threads is not None:
            gauges += [
                (
                    "periodic_threads_total_count",
                    "Registered background threads",
                    float(threads["total_count"]),
                ),
                (
                    "periodic_threads_running_count",
                    "Background threads running",
                    float(threads["running_count"]),
                ),
                (
                    "periodic_threads_active_count",
                    "Background threads that ran recently",
                    float(threads["active_count"]),
                ),
            ]
        for name, doc, value in gauges:
            fam_g = GaugeMetricFamily(f"lmcache:{name}", doc, labels=labelnames)
            fam_g.add_metric(values, value)
            yield fam_g
        for name, doc, hist in histograms:
            buckets, total = _histogram_parts(hist)
            fam_h = HistogramMetricFamily(f"lmcache:{name}", doc, labels=labelnames)
            fam_h.add_metric(values, buckets, total)
            yield fam_h


class EngineMetrics:
    """The metrics of one engine.

    Attributes:
        registry: the engine's own registry (never the global default one).
        labels: values of LMCache's labels (``model_name``, ``worker_id``, ``role``,
            ``served_model_name``) on the ``lmcache:*`` series.
        created: when the counters were created or last reset (Unix time).
    """

    def __init__(self) -> None:
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
        self.requests = Counter(
            f"{PREFIX}_requests", "Engine calls by operation", ["op"], registry=r
        )
        self.lookup_tokens = Counter(
            f"{PREFIX}_lookup_tokens", "Tokens asked for by lookup()", registry=r
        )
        self.lookup_hit_tokens = Counter(
            f"{PREFIX}_lookup_hit_tokens", "Tokens lookup() found stored", registry=r
        )
        self.retrieve_requested_tokens = Counter(
            f"{PREFIX}_retrieve_requested_tokens", "Tokens asked for by retrieve()", registry=r
        )
        self.hit_chunks = Counter(
            f"{PREFIX}_hit_chunks",
            "Chunks loaded by retrieve(), by source tier",
            ["tier"],
            registry=r,
        )
        self.miss_chunks = Counter(
            f"{PREFIX}_miss_chunks", "Chunks retrieve() asked for but did not load", registry=r
        )
        self.stored_tokens = Counter(
            f"{PREFIX}_stored_tokens", "Tokens copied out of the KV cache by store()", registry=r
        )
        self.stored_bytes = Counter(
            f"{PREFIX}_stored_bytes", "Bytes copied out of the KV cache by store()", registry=r
        )
        self.retrieved_tokens = Counter(
            f"{PREFIX}_retrieved_tokens",
            "Tokens copied into the KV cache by retrieve(), by source tier",
            ["tier"],
            registry=r,
        )
        self.retrieved_bytes = Counter(
            f"{PREFIX}_retrieved_bytes",
            "Bytes copied into the KV cache by retrieve(), by source tier",
            ["tier"],
            registry=r,
        )
        self.skipped_stores = Counter(
            f"{PREFIX}_skipped_store_chunks",
            "Chunks store() did not copy, by reason",
            ["reason"],
            registry=r,
        )
        self.rejected_chunks = Counter(
            f"{PREFIX}_rejected_chunks",
            "Chunks a tier returned that did not fit the registered cache (dropped, a miss)",
            registry=r,
        )
        self.copy_seconds = Histogram(
            f"{PREFIX}_copy_seconds",
            "Time of one native gather (store) or scatter (retrieve) call",
            ["direction"],
            buckets=_COPY_BUCKETS,
            registry=r,
        )
        self.copy_bytes = Counter(
            f"{PREFIX}_copy_bytes",
            "Bytes moved by native gather/scatter calls",
            ["direction"],
            registry=r,
        )
        self.checksum_seconds = Histogram(
            f"{PREFIX}_kv_checksum_seconds",
            "Time of one kv_checksums() call (native MD5)",
            buckets=_COPY_BUCKETS,
            registry=r,
        )
        self.store_seconds = Histogram(
            f"{PREFIX}_store_seconds",
            "Time of one store() call (whole call)",
            buckets=_OP_BUCKETS,
            registry=r,
        )
        self.retrieve_seconds = Histogram(
            f"{PREFIX}_retrieve_seconds",
            "Time of one retrieve() call (whole call)",
            buckets=_OP_BUCKETS,
            registry=r,
        )
        self.lookup_seconds = Histogram(
            f"{PREFIX}_lookup_seconds",
            "Time of one lookup() call",
            buckets=_LOOKUP_BUCKETS,
            registry=r,
        )
        self.store_speed = Histogram(
            f"{PREFIX}_store_tokens_per_second",
            "Tokens stored per second of one store() call that stored tokens",
            buckets=_SPEED_BUCKETS,
            registry=r,
        )
        self.retrieve_speed = Histogram(
            f"{PREFIX}_retrieve_tokens_per_second",
            "Tokens loaded per second of one retrieve() call that loaded tokens",
            buckets=_SPEED_BUCKETS,
            registry=r,
        )
        self._own = [
            self.requests,
            self.lookup_tokens,
            self.lookup_hit_tokens,
            self.retrieve_requested_tokens,
            self.hit_chunks,
            self.miss_chunks,
            self.stored_tokens,
            self.stored_bytes,
            self.retrieved_tokens,
            self.retrieved_bytes,
            self.skipped_stores,
            self.rejected_chunks,
            self.copy_seconds,
            self.copy_bytes,
            self.checksum_seconds,
            self.store_seconds,
            self.retrieve_seconds,
            self.lookup_seconds,
            self.store_speed,
            self.retrieve_speed,
        ]

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
        """Sets LMCache's label values and the readers of health, chunk statistics and the
        background-thread summary used by the ``lmcache:*`` gauges."""
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
        """Zeroes every counter and histogram (LMCache's ``/metrics/reset``): the data-path
        ones are created again, the tiers' counters are counted from now on. Gauges (sizes,
        health, chunk statistics) are state, not reset."""
        with self._reset_lock:
            self._build()
            if self._tier_stats is not None:
                self._baseline = {t: dict(st) for t, st in self._tier_stats().items()}
            if self._extra is not None:
                self._extra_baseline = {
                    n: float(v) for n, (v, _, is_counter) in self._extra().items() if is_counter
                }

    def observe_op(self, op: str, seconds: float, tokens: int) -> None:
        """Records one store/retrieve/lookup call: its time and, when it moved tokens, its
        speed (tokens per second)."""
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
