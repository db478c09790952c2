"""The worker side's counters: plain ones for tests and logs, Prometheus ones for ``/metrics``."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter


@dataclass
class WorkerStats:
    """Counters of the worker side (read by tests, logs and the metrics).

    Attributes:
        load_requests: loads attempted.
        loaded_tokens: tokens written into vLLM's cache by loads.
        load_failed_tokens: planned tokens that could not be loaded (vLLM recomputes them).
        store_requests: store calls made.
        stored_tokens: tokens newly stored (chunks the engine did not hold yet).
        lookups: lookups answered for the scheduler.
        load_failures: loads that raised (reported to vLLM as failed blocks).
        store_failures: stores that raised.
        leases: leases taken by lookups (chunks held for a request until its load).
        leases_expired: leases that expired before their request loaded or finished.
        async_loads: background loads reported done to vLLM (``finished_recving``).
        async_saves: background stores done.
        delayed_frees: finished requests whose held blocks were handed back to vLLM
            (``finished_sending``).
    """

    load_requests: int = 0
    loaded_tokens: int = 0
    load_failed_tokens: int = 0
    store_requests: int = 0
    stored_tokens: int = 0
    lookups: int = 0
    load_failures: int = 0
    store_failures: int = 0
    leases: int = 0
    leases_expired: int = 0
    async_loads: int = 0
    async_saves: int = 0
    delayed_frees: int = 0


#: ``(attribute, metric name, help text)`` of each of :class:`ConnectorMetrics`' counters.
COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("lookups", "lmcache_vllm_lookups", "Scheduler lookups answered by this worker"),
    (
        "lookup_tokens",
        "lmcache_vllm_lookup_loadable_tokens",
        "Tokens lookups reported loadable (listed in a tier's index)",
    ),
    ("loaded_tokens", "lmcache_vllm_loaded_tokens", "Tokens loaded into vLLM's KV cache"),
    (
        "load_failed_tokens",
        "lmcache_vllm_load_failed_tokens",
        "Planned tokens a load could not fill (reported to vLLM as invalid blocks)",
    ),
    ("stored_tokens", "lmcache_vllm_stored_tokens", "Tokens of vLLM's KV cache newly stored"),
    (
        "load_failures",
        "lmcache_vllm_load_failures",
        "Loads that raised (their blocks were reported to vLLM and recomputed)",
    ),
    (
        "store_failures",
        "lmcache_vllm_store_failures",
        "Stores that raised (nothing more of that step's request was stored)",
    ),
)


class ConnectorMetrics:
    """The connector's Prometheus counters, in the engine's registry (served at ``/metrics``).

    One ``Counter`` per row of :data:`COUNTERS`, under the row's attribute name.

    Args:
        registry: the engine's ``metrics.registry``.
    """

    lookups: Counter
    lookup_tokens: Counter
    loaded_tokens: Counter
    load_failed_tokens: Counter
    stored_tokens: Counter
    load_failures: Counter
    store_failures: Counter

    def __init__(self, registry: CollectorRegistry) -> None:
        """Registers the counters."""
        for attr, name, documentation in COUNTERS:
            setattr(self, attr, Counter(name, documentation, registry=registry))
