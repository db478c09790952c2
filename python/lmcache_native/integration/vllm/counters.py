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


class ConnectorMetrics:
    """The connector's Prometheus counters, in the engine's registry (served at ``/metrics``).

    Args:
        registry: the engine's ``metrics.registry``.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        """Registers the counters."""
        self.lookups = Counter(
            "lmcache_vllm_lookups", "Scheduler lookups answered by this worker", registry=registry
        )
        self.lookup_tokens = Counter(
            "lmcache_vllm_lookup_loadable_tokens",
            "Tokens lookups reported loadable (listed in a tier's index)",
            registry=registry,
        )
        self.loaded_tokens = Counter(
            "lmcache_vllm_loaded_tokens",
            "Tokens loaded into vLLM's KV cache",
            registry=registry,
        )
        self.load_failed_tokens = Counter(
            "lmcache_vllm_load_failed_tokens",
            "Planned tokens a load could not fill (reported to vLLM as invalid blocks)",
            registry=registry,
        )
        self.stored_tokens = Counter(
            "lmcache_vllm_stored_tokens",
            "Tokens of vLLM's KV cache newly stored",
            registry=registry,
        )
        self.load_failures = Counter(
            "lmcache_vllm_load_failures",
            "Loads that raised (their blocks were reported to vLLM and recomputed)",
            registry=registry,
        )
        self.store_failures = Counter(
            "lmcache_vllm_store_failures",
            "Stores that raised (nothing more of that step's request was stored)",
            registry=registry,
        )
