"""Prometheus metrics of one engine, on the engine's own ``CollectorRegistry``.

Two kinds of series, all measured:

- engine counters and histograms updated on the data path (requests, chunk hits by tier,
  tokens/bytes stored and retrieved, copy time and bytes of the native gather/scatter,
  checksum time, skipped stores by reason);
- per-tier series read from each tier's own counters at scrape time (hits, misses, chunks,
  tokens and bytes stored and read, evictions, checksum failures, errors, current size), plus
  the buffer pool and the background writer queue.

Serve them with ``prometheus_client.generate_latest(metrics.registry)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
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


class _TierCollector(Collector):
    """Reads tier counters (and pool/writer figures) when Prometheus scrapes."""

    def __init__(self, tier_stats: TierStatsFn, extra: GaugesFn | None) -> None:
        self._tier_stats = tier_stats
        self._extra = extra

    def collect(self) -> Iterator[Metric]:
        stats = self._tier_stats()
        for field, (name, doc, is_counter) in _TIER_SERIES.items():
            fam_cls = CounterMetricFamily if is_counter else GaugeMetricFamily
            fam = fam_cls(f"{PREFIX}_{name}", doc, labels=["tier"])
            for tier, st in stats.items():
                if field in st:
                    fam.add_metric([tier], float(st[field]))
            yield fam
        if self._extra is not None:
            for name, (value, doc, is_counter) in self._extra().items():
                fam_cls = CounterMetricFamily if is_counter else GaugeMetricFamily
                yield fam_cls(f"{PREFIX}_{name}", doc, value=float(value))


class EngineMetrics:
    """The metrics of one engine.

    Attributes:
        registry: the engine's own registry (never the global default one).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests", "Engine calls by operation", ["op"], registry=r
        )
        self.lookup_tokens = Counter(
            f"{PREFIX}_lookup_tokens", "Tokens asked for by lookup()", registry=r
        )
        self.lookup_hit_tokens = Counter(
            f"{PREFIX}_lookup_hit_tokens", "Tokens lookup() found stored", registry=r
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
        self._collector: _TierCollector | None = None

    def bind_storage(self, tier_stats: TierStatsFn, extra: GaugesFn | None = None) -> None:
        """Publishes per-tier counters read from ``tier_stats()`` at scrape time."""
        if self._collector is not None:
            self.registry.unregister(self._collector)
        self._collector = _TierCollector(tier_stats, extra)
        self.registry.register(self._collector)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The current value of a sample (0.0 when absent); for tests and the CLI."""
        v = self.registry.get_sample_value(name, labels or {})
        return 0.0 if v is None else float(v)
