"""No exception of the connector reaches vLLM: every method answers as a miss instead.

The connector's methods are driven as vLLM drives them, with faults forced inside: the native
copy raising during a load and a store, the scheduler side raising while looking up, planning a
load vLLM already accepted, and building a step's metadata. A failed load reports its blocks
(vLLM recomputes them); a failed store is counted and logged once per cause. The fault-injection
runs on a real vLLM are in ``test_vllm_faults.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import vllm_testlib as vt

pytest.importorskip("vllm")

import lmcache_native.ops as ops
from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.integration.vllm import metadata as md
from lmcache_native.integration.vllm.connector import LMCacheNativeConnector
from lmcache_native.integration.vllm.lookup import LookupServer
from lmcache_native.integration.vllm.scheduler import SchedulerSide
from lmcache_native.integration.vllm.worker import WorkerSide

pytestmark = pytest.mark.vllm

NUM_BLOCKS, HEADS, BLOCK, HEAD, CHUNK = 16, 2, 32, 16, 64


def _worker() -> WorkerSide:
    worker, _ = vt.unit_worker("contain", NUM_BLOCKS, 5, max_local_cpu_size=0.01)
    return worker


def _connector(worker: WorkerSide | None = None, sched: SchedulerSide | None = None) -> Any:
    """The connector class around the given sides, without a vLLM engine."""
    conn = object.__new__(LMCacheNativeConnector)
    conn._failure_causes = set()
    conn._connector_metadata = None
    conn.worker_side = worker
    conn.scheduler_side = sched
    return conn


def _boom(*_args: Any, **_kwargs: Any) -> None:
    raise RuntimeError("forced failure inside the native copy")


def test_native_copy_failures_are_contained(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    worker = _worker()
    conn = _connector(worker)
    tokens = list(range(2000, 2128))
    save = md.SaveSpec("s", tokens, [1, 2, 3, 4], num_prompt_tokens=128)
    load = md.LoadSpec("l", tokens, [8, 9, 10, 11], start=0, end=127)
    with monkeypatch.context() as m:
        m.setattr(ops, "paged_kv_gather_chunks", _boom)
        caplog.set_level(logging.ERROR, logger="lmcache_native.integration.vllm")
        for i in range(2):  # the same cause twice: counted twice, logged once
            conn.bind_connector_metadata(
                md.LMCacheNativeConnectorMetadata(
                    saves=[md.SaveSpec(f"s{i}", tokens, [1, 2, 3, 4], 128)]
                )
            )
            conn.wait_for_save()  # does not raise
    assert worker.stats.store_failures == 2
    errors = [r for r in caplog.records if "store failed" in r.getMessage()]
    assert len(errors) == 1
    assert "RuntimeError" in errors[0].getMessage()
    # Stored for real now, then a load whose scatter raises: its whole window is reported.
    conn.bind_connector_metadata(md.LMCacheNativeConnectorMetadata(saves=[save]))
    conn.wait_for_save()
    assert worker.engine.lookup(tokens) == 128
    with monkeypatch.context() as m:
        m.setattr(ops, "paged_kv_scatter_chunks", _boom)
        conn.bind_connector_metadata(md.LMCacheNativeConnectorMetadata(loads=[load]))
        conn.start_load_kv(None)  # does not raise
    assert conn.get_block_ids_with_load_errors() == {8, 9, 10, 11}
    assert worker.stats.load_failures == 1
    assert worker.stats.load_failed_tokens == 127
    # Without the fault the same load fills the window.
    conn.bind_connector_metadata(md.LMCacheNativeConnectorMetadata(loads=[load]))
    conn.start_load_kv(None)
    assert conn.get_block_ids_with_load_errors() == set()
    assert worker.stats.loaded_tokens == 127
    conn.shutdown()


def test_worker_methods_never_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = _worker()
    conn = _connector(worker)
    for name in ("start_load_kv", "wait_for_save", "finished", "take_load_errors", "close"):
        monkeypatch.setattr(worker, name, _boom)
    monkeypatch.setattr(worker, "register_kv_caches", _boom)
    spec = md.LoadSpec("x", list(range(64)), [3, 4], start=0, end=63)
    conn.bind_connector_metadata(
        md.LMCacheNativeConnectorMetadata(loads=[spec], saves=[md.SaveSpec("y", [1], [1], 1)])
    )
    conn.start_load_kv(None)
    conn.wait_for_save()
    assert conn.get_finished({"x"}) == (None, None)
    assert conn.get_block_ids_with_load_errors() == set()
    conn.shutdown()
    # A failed setup disables the connector in this worker instead of stopping vLLM.
    conn.register_kv_caches({})
    assert worker.engine is None
    assert "setup failed" in (worker.disabled_reason or "")
    monkeypatch.undo()
    conn.bind_connector_metadata(md.LMCacheNativeConnectorMetadata(loads=[spec]))
    conn.start_load_kv(None)
    assert conn.get_block_ids_with_load_errors() == {3, 4}  # disabled: every load is reported


def _output(req_id: str, blocks: list[int], computed: int, scheduled: int) -> SimpleNamespace:
    return SimpleNamespace(
        scheduled_new_reqs=[
            SimpleNamespace(req_id=req_id, block_ids=(blocks,), num_computed_tokens=computed)
        ],
        scheduled_cached_reqs=SimpleNamespace(
            req_ids=[], new_block_ids=[], num_computed_tokens=[], resumed_req_ids=set()
        ),
        num_scheduled_tokens={req_id: scheduled},
        finished_req_ids=set(),
    )


def test_scheduler_methods_never_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_NATIVE_LOOKUP_DIR", str(tmp_path))
    server = LookupServer.start("contain-s", 0, lambda _r, _toks, _e: (192, 0))
    sched = SchedulerSide(LMCacheEngineConfig.from_defaults(chunk_size=CHUNK), "contain-s", 1, 32)
    conn = _connector(sched=sched)
    blocks = SimpleNamespace(get_block_ids=lambda: ([1, 2, 3, 4, 5, 6, 7],))
    try:
        req = vt.request("a", list(range(200)))
        # A lookup that raises is a miss.
        with monkeypatch.context() as m:
            m.setattr(sched.client, "lookup_tiers", _boom)
            assert conn.get_num_new_matched_tokens(req, 0) == (0, False)
        # vLLM accepted 192 tokens, then planning the load raised: the load still reaches the
        # worker, as a load of nothing, so every accepted block is reported and recomputed.
        assert conn.get_num_new_matched_tokens(req, 0) == (192, False)
        with monkeypatch.context() as m:
            m.setattr(sched, "_cacheable", _boom)
            conn.update_state_after_alloc(req, blocks, 192)
        meta = conn.build_connector_meta(_output("a", [1, 2, 3, 4, 5, 6, 7], 192, 8))
        (load,) = meta.loads
        assert load.token_ids == []
        assert (load.start, load.end) == (0, 192)
        worker = _worker()
        worker.start_load_kv(meta)
        assert worker.take_load_errors() == {1, 2, 3, 4, 5, 6}
        worker.close()
        # build_connector_meta raising after the loads were taken: they are salvaged.
        req2 = vt.request("b", list(range(300, 500)))
        assert conn.get_num_new_matched_tokens(req2, 0) == (192, False)
        conn.update_state_after_alloc(req2, blocks, 192)
        with monkeypatch.context() as m:
            m.setattr(sched, "_save_spec", _boom)
            meta = conn.build_connector_meta(_output("b", [1, 2, 3, 4, 5, 6, 7], 192, 8))
        assert [x.req_id for x in meta.loads] == ["b"]
        assert meta.saves == []
        with monkeypatch.context() as m:
            m.setattr(sched, "request_finished", _boom)
            assert conn.request_finished(req2, []) == (False, None)
    finally:
        conn.shutdown()
        server.stop()
