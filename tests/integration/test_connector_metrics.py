"""The connector's Prometheus counters: every declared attribute is a registered counter."""

from __future__ import annotations

from lmcache_native.integration.vllm.counters import COUNTERS, ConnectorMetrics
from prometheus_client import CollectorRegistry, Counter, generate_latest


def test_every_declared_counter_is_registered_under_its_name() -> None:
    registry = CollectorRegistry()
    metrics = ConnectorMetrics(registry)
    declared = set(ConnectorMetrics.__annotations__)
    assert declared == {attr for attr, _, _ in COUNTERS}
    assert len(COUNTERS) == 7
    for attr, name, documentation in COUNTERS:
        counter = getattr(metrics, attr)
        assert isinstance(counter, Counter)
        assert registry.get_sample_value(f"{name}_total") == 0.0
        counter.inc(3)
        assert registry.get_sample_value(f"{name}_total") == 3.0
        assert f"# HELP {name}_total {documentation}\n" in generate_latest(registry).decode()


def test_the_exported_names_are_the_connectors() -> None:
    registry = CollectorRegistry()
    ConnectorMetrics(registry)
    names = sorted(m.name for m in registry.collect())
    assert names == [
        "lmcache_vllm_load_failed_tokens",
        "lmcache_vllm_load_failures",
        "lmcache_vllm_loaded_tokens",
        "lmcache_vllm_lookup_loadable_tokens",
        "lmcache_vllm_lookups",
        "lmcache_vllm_store_failures",
        "lmcache_vllm_stored_tokens",
    ]
