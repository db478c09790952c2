"""A planned load cannot lose its chunks: what a lookup reported is held until the load.

The worker side runs on a real engine whose CPU tier holds 4 chunks. Between a lookup and its
load, stores of other prompts need room; without the lease the looked-up chunks would be
evicted and the load would come back short. The lease ends with the load, with
``request_finished`` (``released`` in the metadata, or vLLM's finished ids) or on expiry.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import vllm_testlib as vt

pytest.importorskip("vllm")

from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.integration.vllm import metadata as md
from lmcache_native.integration.vllm.worker import WorkerSide

pytestmark = pytest.mark.vllm

NUM_BLOCKS, HEADS, BLOCK, HEAD, CHUNK = 40, 2, 32, 16, 64
CHUNK_BYTES = 2 * 2 * HEADS * HEAD * 4 * CHUNK  # K and V, 2 layers, fp32
PROMPTS = {
    name: list(range(1000 * (i + 1), 1000 * (i + 1) + 128)) for i, name in enumerate("ABCDE")
}
BLOCKS = {name: [1 + 4 * i + j for j in range(4)] for i, name in enumerate("ABCDE")}


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _worker() -> tuple[WorkerSide, _Clock]:
    worker, _ = vt.unit_worker(
        "lease",
        NUM_BLOCKS,
        9,
        max_local_cpu_size=4 * CHUNK_BYTES / 2**30,  # the CPU tier holds 4 chunks
        extra_config={"lookup_lease_secs": 30},
    )
    clock = _Clock()
    worker.clock = clock
    return worker, clock


def _store(worker: WorkerSide, *names: str) -> None:
    saves = [md.SaveSpec(f"s-{n}", PROMPTS[n], BLOCKS[n], num_prompt_tokens=128) for n in names]
    worker.wait_for_save(md.LMCacheNativeConnectorMetadata(saves=saves))


def _load(worker: WorkerSide, req_id: str, name: str) -> tuple[int, set[int]]:
    before = worker.stats.loaded_tokens
    spec = md.LoadSpec(req_id, PROMPTS[name], [30, 31, 32, 33], start=0, end=127)
    worker.start_load_kv(md.LMCacheNativeConnectorMetadata(loads=[spec]))
    return worker.stats.loaded_tokens - before, worker.take_load_errors()


def test_looked_up_chunks_survive_eviction_until_the_load() -> None:
    worker, _ = _worker()
    _store(worker, "A", "B")  # the CPU tier is full: A0 A1 B0 B1
    assert worker.lookup("ra", PROMPTS["A"]) == (128, 0)
    assert worker.leased_requests == ["ra"]
    _store(worker, "C", "D")  # needs room for 4 more chunks: only B's can go
    assert worker.engine.lookup(PROMPTS["A"]) == 128
    assert worker.engine.lookup(PROMPTS["B"]) == 0
    assert _load(worker, "ra", "A") == (127, set())
    assert worker.leased_requests == []  # the load let them go: evictable again
    for key in worker.engine.chunk_keys(PROMPTS["A"]):
        buf = worker.engine.storage.cpu.get(key)
        assert buf is not None
        assert buf.refcount == 2  # the tier and this read only
        buf.unref()
    worker.close()


def test_without_a_lease_the_same_eviction_fails_the_load() -> None:
    worker, clock = _worker()
    _store(worker, "A", "B")
    assert worker.lookup("ra", PROMPTS["A"]) == (128, 0)
    clock.now += 31  # the lease expires
    worker.expire_leases()
    assert worker.stats.leases_expired == 1
    assert worker.leased_requests == []
    _store(worker, "C", "D")
    loaded, errors = _load(worker, "ra", "A")
    assert loaded < 127
    assert errors  # what went missing is reported to vLLM
    worker.close()


def test_leases_end_with_request_finished_or_vllm_finished_ids() -> None:
    worker, _ = _worker()
    _store(worker, "A")
    cpu = worker.engine.storage.cpu
    assert worker.lookup("r1", PROMPTS["A"]) == (128, 0)
    assert worker.lookup("r2", PROMPTS["A"]) == (128, 0)
    worker.lookup("r2", PROMPTS["A"])  # a repeated lookup replaces the request's lease
    assert sorted(worker.leased_requests) == ["r1", "r2"]
    key = worker.engine.chunk_keys(PROMPTS["A"])[0]
    buf = cpu.get(key)
    assert buf is not None
    assert buf.refcount == 1 + 2 + 1  # the tier, two leases, this read
    buf.unref()
    # The scheduler's request_finished arrives as ``released`` with the next step.
    worker.wait_for_save(md.LMCacheNativeConnectorMetadata(released=["r1"]))
    assert worker.leased_requests == ["r2"]
    worker.finished({"r2"})
    assert worker.leased_requests == []
    buf = cpu.get(key)
    assert buf is not None
    assert buf.refcount == 2
    buf.unref()
    worker.close()


def test_scheduler_releases_what_it_will_not_load(tmp_path, monkeypatch) -> None:
    from lmcache_native.integration.vllm.lookup import LookupServer
    from lmcache_native.integration.vllm.scheduler import SchedulerSide

    monkeypatch.setenv("LMCACHE_NATIVE_LOOKUP_DIR", str(tmp_path))
    server = LookupServer.start("lease-s", 0, lambda _r, _toks, _e: (128, 0))
    sched = SchedulerSide(LMCacheEngineConfig.from_defaults(chunk_size=CHUNK), "lease-s", 1, 32)
    try:

        def req(rid: str) -> Any:
            return vt.request(rid, list(range(200)))

        blocks = SimpleNamespace(get_block_ids=lambda: ([1, 2, 3, 4, 5, 6, 7],))
        a, b, c = req("a"), req("b"), req("c")
        assert sched.get_num_new_matched_tokens(a, 128) == 0  # vLLM holds it all: released
        assert sched.get_num_new_matched_tokens(b, 0) == 128
        sched.update_state_after_alloc(b, blocks, 0)  # vLLM did not take the hit: released
        assert sched.get_num_new_matched_tokens(c, 0) == 128
        sched.update_state_after_alloc(c, blocks, 128)  # loaded: the load releases it
        sched.request_finished(c)
        out = SimpleNamespace(
            scheduled_new_reqs=[],
            scheduled_cached_reqs=SimpleNamespace(
                req_ids=[], new_block_ids=[], num_computed_tokens=[], resumed_req_ids=set()
            ),
            num_scheduled_tokens={},
            finished_req_ids=set(),
        )
        assert sched.build_connector_meta(out).released == ["a", "b", "c"]
        assert sched.build_connector_meta(out).released == []
    finally:
        sched.close()
        server.stop()
