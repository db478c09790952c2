"""A real Prometheus scrapes a real `lmcache-native serve`.

Its HTTP API answers LMCache's metric names: a counter, a histogram quantile and a gauge.
"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
from prometheus_testlib import Prometheus, require_prometheus
from test_serve import Served

LABELS = 'model_name="lmcache-native-test"'


@pytest.mark.slow
def test_prometheus_scrapes_lmcache_names_from_serve(tmp_path: Path) -> None:
    require_prometheus()
    served = Served("--model-name", "lmcache-native-test")
    prom: Prometheus | None = None
    try:
        prom = Prometheus(tmp_path / "prom", [f"127.0.0.1:{served.port}"])
        targets = prom.wait_until_scraped()
        # the strict media-type parse and the exposition parse both succeeded
        assert [t["lastError"] for t in targets] == [""]
        # a first scrape before the stores, so rate() sees them as an increase
        assert prom.wait_for(
            lambda: prom.value(f"lmcache:num_store_requests_total{{{LABELS}}}") == 0.0,
            "the counter at zero",
        )
        with httpx.Client(base_url=served.url, timeout=60) as c:
            for end in (256, 512):  # the second store adds the second chunk
                r = c.post(f"/cache/store?tokens_mock=0,{end}")
                assert r.status_code == 200, r.text
                assert r.json()["num_stored_tokens"] == 256, r.text
            r = c.post("/cache/retrieve?tokens_mock=0,512")
            assert r.json()["num_retrieved"] == 512
            used = c.get("/backends").json()["LocalCPUBackend"]["used_bytes"]
        assert used > 0

        counter = prom.wait_for(
            lambda: prom.value(f"lmcache:num_store_requests_total{{{LABELS}}}") == 2.0,
            "lmcache:num_store_requests_total == 2",
        )
        assert counter
        quantile = prom.wait_for(
            lambda: prom.value("histogram_quantile(0.5, rate(lmcache:time_to_store_bucket[1m]))"),
            "a finite median store time",
        )
        assert 0 < quantile <= 10.0
        gauge = prom.wait_for(
            lambda: prom.value(f"lmcache:local_cache_usage{{{LABELS}}}"),
            "lmcache:local_cache_usage",
        )
        assert gauge == used
        # this project's own names come from the same scrape
        assert prom.value("sum(lmcache_stored_tokens_total)") == 512.0
        assert prom.value(f"lmcache:num_hit_tokens_total{{{LABELS}}}") == 512.0
        labels = prom.query("lmcache:num_store_requests_total")[0]["metric"]
        # LMCache's labels (an empty served_model_name is no label in Prometheus)
        assert labels["model_name"] == "lmcache-native-test"
        assert labels["worker_id"] == "0"
        assert labels["role"] == "standalone"
    finally:
        if prom is not None:
            prom.stop()
        code = served.stop(signal.SIGINT)
    assert code == 0
