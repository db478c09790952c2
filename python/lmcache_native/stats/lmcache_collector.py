"""LMCache's metric names (``lmcache:*``), derived from an engine's metrics at scrape time.

Each measurement is taken once, by :class:`~lmcache_native.stats.metrics.EngineMetrics`; this
collector re-exposes its counters, histograms and tier figures under LMCache's names, types and
labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from lmcache_native.stats.metrics import EngineMetrics

LMCACHE_LABELS = ("model_name", "worker_id", "role", "served_model_name")
"""Label names of LMCache's metrics (its ``PrometheusLogger`` labels)."""

CPU_TIER = "LocalCPUBackend"
DISK_TIER = "LocalDiskBackend"


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


# lmcache:<name> gauge -> (help, chunk statistics status field, divisor)
_STATISTICS_GAUGES = (
    ("chunk_statistics_total_requests", "Requests seen by chunk statistics", "requests", 1),
    ("chunk_statistics_total_chunks", "Chunks seen by chunk statistics", "total_chunks", 1),
    (
        "chunk_statistics_unique_chunks",
        "Distinct chunks seen (Bloom filter estimate)",
        "unique_chunks",
        1,
    ),
    ("chunk_statistics_reuse_rate", "Share of chunks seen before (0 to 1)", "reuse_rate", 1),
    (
        "chunk_statistics_bloom_filter_size_mb",
        "Memory of the Bloom filter (MiB)",
        "bloom_filter_bytes",
        1024 * 1024,
    ),
)


class LMCacheCollector(Collector):
    """LMCache's in-process metric names, derived from :class:`EngineMetrics` at scrape time.

    Same names, types and label names (``model_name``, ``worker_id``, ``role``,
    ``served_model_name``) as LMCache's ``PrometheusLogger``; counters are exposed with the
    ``_total`` suffix as prometheus_client exposes LMCache's. Hit-rate gauges are the ratio
    since the start (or the last reset) rather than over LMCache's last logging interval.
    """

    def __init__(self, metrics: EngineMetrics) -> None:
        """Reads ``metrics`` at each scrape."""
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        """The ``lmcache:*`` families, read now."""
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
            *(
                (name, doc, float(st.get(field, 0)) / scale)
                for name, doc, field, scale in _STATISTICS_GAUGES
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
