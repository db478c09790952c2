"""What the connector reports to vLLM's own stats: counters and KV cache events.

**Stats.** Each step, every worker (and the scheduler side) hands vLLM an
:class:`LMCacheNativeStats` with what it did since its last report; vLLM sums the workers'
reports (:meth:`LMCacheNativeStats.aggregate`), logs a summary with its throughput log
("KV Transfer metrics: ...", see :meth:`LMCacheNativeStats.reduce`) and adds the counts to
the Prometheus counters of :class:`LMCacheNativePromMetrics` (``vllm:lmcache_native_*`` on
vLLM's ``/metrics``; ``LLM.get_metrics()`` in-process). Token counts come from rank 0 only (every
rank loads and stores the same tokens, each its own shard); bytes, seconds and failures are
summed over ranks (seconds are worker-seconds).

**Events.** With vLLM's ``kv_events_config`` on, a worker turns each chunk it newly stores into
a ``BlockStored`` event and each chunk it stored that later left its tier (evicted, removed,
cleared) into a ``BlockRemoved`` event; the events travel to the scheduler side in vLLM's
connector output (:class:`LMCacheNativeKVEvents`) and are handed to vLLM's KV event publisher by
``take_events``. One event block is one chunk: ``block_hashes`` is the chunk's chained prefix
hash (the bytes of the hex hash in the chunk keys), ``parent_block_hash`` the previous chunk's,
``token_ids`` the chunk's tokens, ``block_size`` the chunk's token count (``chunk_size``, less
for a stored unfull tail), ``lora_id``/``lora_name`` the request's adapter, and ``medium`` the
tier the chunk went to first: ``"CPU"`` (the CPU tier), ``"DISK"`` (the disk tier) or
``"REMOTE"`` (Redis, a cluster, an ``fs://`` directory). With several ranks, an event is
published once, when every rank reported it.
"""

from __future__ import annotations

from collections import Counter as _Tally
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vllm.distributed.kv_events import KVCacheEvent, KVConnectorKVEvents
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import (
    KVConnectorPromMetrics,
    KVConnectorStats,
)

if TYPE_CHECKING:
    from vllm.config import VllmConfig

#: The counters, each summed by :meth:`LMCacheNativeStats.aggregate`.
STAT_FIELDS: dict[str, str] = {
    "lookups": "Lookups the scheduler made (asked of the workers)",
    "lookup_cache_hits": "Lookups answered from the scheduler's lookup cache",
    "lookup_hit_tokens": "Tokens lookups found stored",
    "load_requests": "Requests whose KV was loaded",
    "loaded_tokens": "Tokens loaded into vLLM's KV cache",
    "loaded_bytes": "Bytes loaded into vLLM's KV cache (all ranks)",
    "load_seconds": "Seconds spent loading (worker-seconds, all ranks)",
    "failed_loads": "Loads that could not fill every block (reported to vLLM, recomputed)",
    "failed_load_tokens": "Tokens a load could not fill (recomputed by vLLM)",
    "store_requests": "Saves of requests' KV",
    "stored_tokens": "Tokens stored",
    "stored_bytes": "Bytes stored (all ranks)",
    "save_seconds": "Seconds spent saving (worker-seconds, all ranks)",
    "failed_stores": "Saves that raised (a later miss only)",
}

#: Tier class name -> ``medium`` of the events.
MEDIUMS = {"LocalCPUBackend": "CPU", "LocalDiskBackend": "DISK", "RemoteBackend": "REMOTE"}


@dataclass
class LMCacheNativeStats(KVConnectorStats):
    """The connector's counters since the last report (``data``: :data:`STAT_FIELDS`)."""

    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in STAT_FIELDS:
            self.data.setdefault(name, 0)

    def add(self, name: str, value: float = 1) -> None:
        """Adds ``value`` to counter ``name``."""
        self.data[name] += value

    def reset(self) -> None:
        """Zeroes every counter."""
        for name in STAT_FIELDS:
            self.data[name] = 0

    def aggregate(self, other: KVConnectorStats) -> KVConnectorStats:
        """Adds ``other``'s counters to this one's (workers of a step, or steps)."""
        for name, value in other.data.items():
            if name in STAT_FIELDS:
                self.data[name] = self.data.get(name, 0) + value
        return self

    def reduce(self) -> dict[str, int | float]:
        """The summary vLLM logs for an interval."""
        d = self.data
        loads, stores = d["load_requests"], d["store_requests"]
        return {
            "lookups": d["lookups"] + d["lookup_cache_hits"],
            "lookup_hit_tokens": d["lookup_hit_tokens"],
            "loaded_tokens": d["loaded_tokens"],
            "loaded_MB": round(d["loaded_bytes"] / 1e6, 3),
            "avg_load_ms": round(d["load_seconds"] * 1e3 / loads, 3) if loads else 0.0,
            "failed_loads": d["failed_loads"],
            "stored_tokens": d["stored_tokens"],
            "stored_MB": round(d["stored_bytes"] / 1e6, 3),
            "avg_save_ms": round(d["save_seconds"] * 1e3 / stores, 3) if stores else 0.0,
            "failed_stores": d["failed_stores"],
        }

    def is_empty(self) -> bool:
        """Whether nothing was counted."""
        return not any(self.data.get(name) for name in STAT_FIELDS)

    def take(self) -> LMCacheNativeStats | None:
        """A copy of the counters (``None`` when all are zero), then zeroes them."""
        if self.is_empty():
            return None
        out = LMCacheNativeStats(data=dict(self.data))
        self.reset()
        return out


class LMCacheNativePromMetrics(KVConnectorPromMetrics):
    """One Prometheus counter per stat, ``vllm:lmcache_native_<name>``, per vLLM engine."""

    def __init__(
        self,
        vllm_config: VllmConfig,
        metric_types: dict[type[Any], type[Any]],
        labelnames: list[str],
        per_engine_labelvalues: dict[int, list[object]],
    ) -> None:
        super().__init__(vllm_config, metric_types, labelnames, per_engine_labelvalues)
        self._counters: dict[str, dict[int, Any]] = {}
        for name, doc in STAT_FIELDS.items():
            counter = self._counter_cls(
                name=f"vllm:lmcache_native_{name}",
                documentation=f"lmcache-native connector: {doc}",
                labelnames=labelnames,
            )
            self._counters[name] = {
                idx: counter.labels(*values) for idx, values in per_engine_labelvalues.items()
            }

    def observe(self, transfer_stats_data: dict[str, Any], engine_idx: int = 0) -> None:
        """Adds one report's counters."""
        for name, value in transfer_stats_data.items():
            per_engine = self._counters.get(name)
            if per_engine is not None and value and engine_idx in per_engine:
                per_engine[engine_idx].inc(value)


class LMCacheNativeKVEvents(KVConnectorKVEvents):
    """The KV events of one step, from one worker or (after vLLM merged them) all workers."""

    def __init__(self, num_workers: int = 1, events: Iterable[KVCacheEvent] = ()) -> None:
        self._events: list[KVCacheEvent] = list(events)
        self._workers = num_workers

    def add_events(self, events: list[KVCacheEvent]) -> None:
        """Appends ``events``."""
        self._events.extend(events)

    def aggregate(self) -> LMCacheNativeKVEvents:
        """Keeps the events every worker reported, once each, in their first order."""
        if self._workers > 1:
            tally = _Tally(self._events)
            kept: list[KVCacheEvent] = []
            for event in self._events:
                if tally.get(event, 0) >= self._workers:
                    kept.append(event)
                    tally[event] = 0
            self._events = kept
            self._workers = 1
        return self

    def increment_workers(self, count: int = 1) -> None:
        """Counts ``count`` more workers' events in."""
        self._workers += count

    def get_all_events(self) -> list[KVCacheEvent]:
        """The events."""
        return list(self._events)

    def get_number_of_workers(self) -> int:
        """How many workers' events this holds."""
        return self._workers

    def clear_events(self) -> None:
        """Drops the events."""
        self._events = []
