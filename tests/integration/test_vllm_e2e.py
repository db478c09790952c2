"""End to end on a real vLLM: the connector stores, loads, is really used, and is inspectable.

A tiny Llama (dummy weights, float32) runs on vLLM's CPU backend. Engines in this module run
in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, ``uni`` executor); ``test_multiprocess_mode``
runs vLLM's default multiprocess mode in a subprocess. Chunks persist across engines through the
disk tier, so a later engine starts with an empty vLLM cache and an empty CPU tier.

Prompts (chunk_size 64, block_size 32): ``P`` 200 tokens (3 full chunks + 8), ``Q`` = P's first
chunk then other tokens, ``R1``/``R2`` other 200-token prompts for the negative controls.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import vllm_testlib as vt

pytest.importorskip("vllm")

pytestmark = pytest.mark.vllm

P = vt.prompt(1, 200)
Q = vt.prompt(2, 200, prefix=P[: vt.CHUNK_SIZE])
R1 = vt.prompt(3, 200)
R2 = vt.prompt(4, 200)
FULL = 192  # tokens in the 3 full chunks of a 200-token prompt


def _connector_config(disk: Path, **more: Any) -> dict[str, Any]:
    return {
        "chunk_size": vt.CHUNK_SIZE,
        "max_local_cpu_size": 0.05,
        "local_disk": str(disk),
        "max_local_disk_size": 0.2,
        **more,
    }


class _SlotLog(logging.Handler):
    """Collects the engine's ``record_slot`` lines: (op, slots)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.entries: list[tuple[str, list[int]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if not msg.startswith("kvcache ") or "slot_mapping" not in msg:
            return
        op = msg.split()[1]
        slots: list[int] = []
        for item in ast.literal_eval(msg.split(": ", 1)[1]):
            slots.extend(range(item[0], item[1] + 1) if isinstance(item, list) else [item])
        self.entries.append((op, slots))


@pytest.fixture(scope="module")
def baseline(model: str) -> dict[str, list[int]]:
    """Tokens each prompt generates with no connector."""
    return vt.baseline(model, {"P": P, "Q": Q, "R1": R1, "R2": R2})


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("disk-tier")


@pytest.fixture(scope="module")
def run1(model: str, disk: Path) -> dict[str, Any]:
    """Engine 1: stores P, R1, R2; repeats P (a CPU-tier hit); inspected over its admin API."""
    port = vt.free_port()
    cfg = _connector_config(
        disk,
        internal_api_server_enabled=True,
        internal_api_server_port_start=port - 1,
    )
    out: dict[str, Any] = {"port": port}
    slot_log = _SlotLog()
    engine_logger = logging.getLogger("lmcache_native.engine.cache_engine")
    engine_logger.addHandler(slot_log)
    try:
        with vt.in_process_llm(model, cfg) as llm:
            worker = vt.worker_connector().worker_side
            engine = worker.engine
            assert engine is not None, worker.disabled_reason
            url = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=url, timeout=30) as http:
                r = http.post("/cache/kvcache/record_slot", params={"enabled": "true"})
                assert r.status_code == 200, r.text
                out["P"] = vt.generate(llm, P)
                out["stored_after_P"] = worker.stats.stored_tokens
                out["lookup_P"] = engine.lookup(P)
                out["slot_log"] = list(slot_log.entries)
                out["info"] = http.get("/cache/kvcache/info").json()
                out["meta"] = http.get("/meta").json()
                store_slots = next(s for op, s in slot_log.entries if op == "store")[:FULL]
                out["store_slots"] = store_slots
                r = http.get(
                    "/cache/kvcache/check",
                    params={"slot_mapping": vt.slot_string(store_slots), "chunk_size": 64},
                )
                out["check"] = (r.status_code, r.json())
                # vLLM's real cache tensors, hashed by the naive reference at the same slots.
                from lmcache_native.testing import reference

                layers = vllm_layers(llm)
                out["reference_md5"] = reference.kv_chunk_md5(
                    list(layers.values()), store_slots, 64, "vllm_cpu"
                )[1]
                out["stored_chunks"] = [
                    engine.storage.get(k)[0].tensor.clone() for k in engine.chunk_keys(P)
                ]
                loaded_before = worker.stats.loaded_tokens
                out["P_again"] = vt.generate(llm, P)
                out["P_again_loaded"] = worker.stats.loaded_tokens - loaded_before
                out["R1"] = vt.generate(llm, R1)
                out["R2"] = vt.generate(llm, R2)
                out["keys"] = {
                    name: engine.chunk_keys(p) for name, p in (("P", P), ("R1", R1), ("R2", R2))
                }
                assert engine.flush(timeout=30)
                out["worker_stats"] = worker.stats
                out["scheduler_stats"] = vt.scheduler_connector(llm).scheduler_side.stats
                out["layer_names"] = list(layers)
                out["api_thread"] = worker.api_handle._thread
    finally:
        engine_logger.removeHandler(slot_log)
    return out


def vllm_layers(llm: Any) -> dict[str, torch.Tensor]:
    """VLLM's own per-layer KV cache tensors, by layer name, in layer order."""
    ctx = llm.llm_engine.vllm_config.compilation_config.static_forward_context
    return {
        name: layer.kv_cache
        for name, layer in ctx.items()
        if isinstance(getattr(layer, "kv_cache", None), torch.Tensor)
    }


# -- run 1: stores ---------------------------------------------------------------------------


def test_run1_stores_full_chunks_and_matches_no_connector(
    run1: dict[str, Any], baseline: dict[str, list[int]], disk: Path
) -> None:
    tokens, cached = run1["P"]
    assert cached == 0
    assert tokens == baseline["P"]
    assert run1["stored_after_P"] == FULL  # 3 full chunks; the 8-token tail is not stored
    assert run1["lookup_P"] == FULL
    for name in ("P", "R1", "R2"):
        keys = run1["keys"][name]
        assert len(keys) == 3
        for key in keys:
            assert vt.chunk_path(disk, key).is_file(), key
    # The stored payload is exactly what the disk tier holds.
    for key, chunk in zip(run1["keys"]["P"], run1["stored_chunks"], strict=True):
        assert torch.equal(
            vt.read_chunk(vt.chunk_path(disk, key), key).view(torch.uint8), chunk.view(torch.uint8)
        )


def test_repeat_in_same_engine_loads_from_cpu_tier(
    run1: dict[str, Any], baseline: dict[str, list[int]]
) -> None:
    tokens, cached = run1["P_again"]
    assert cached == FULL
    assert run1["P_again_loaded"] == FULL
    assert tokens == baseline["P"]
    sched = run1["scheduler_stats"]
    assert sched.claimed_tokens == FULL
    assert sched.load_requests == 1
    assert run1["worker_stats"].load_failed_tokens == 0


# -- admin API served from the worker -------------------------------------------------------


def test_admin_api_shows_vllm_layers_and_hashes_vllm_cache(
    run1: dict[str, Any], model: str
) -> None:
    info = run1["info"]
    assert info["status"] == "success"
    assert list(info["layers"]) == run1["layer_names"]
    assert run1["layer_names"] == [
        "model.layers.0.self_attn.attn",
        "model.layers.1.self_attn.attn",
    ]
    # 16 MiB of KV cache over 2 layers: 512 blocks in float32, 1024 in 16-bit dtypes.
    num_blocks = 512 * 4 // torch.empty((), dtype=getattr(torch, vt.DTYPE)).element_size()
    assert info["layers"]["model.layers.0.self_attn.attn"]["shape"] == [num_blocks, 2, 32, 64]
    assert run1["meta"]["model_name"] == model
    assert run1["meta"]["layout"] == "vllm_cpu"
    # record_slot logged the store's slot mapping: one slot per prompt token, in vLLM's blocks.
    stores = [s for op, s in run1["slot_log"] if op == "store"]
    assert len(stores) == 1
    assert len(stores[0]) == len(P)
    assert all(s % vt.BLOCK_SIZE == i % vt.BLOCK_SIZE for i, s in enumerate(stores[0]))
    status, body = run1["check"]
    assert status == 200, body
    assert body["num_chunks"] == 3
    assert body["chunk_size"] == 64
    # /cache/kvcache/check hashed vLLM's real cache: same digests as the naive reference over
    # vLLM's tensors, and as the chunks the connector stored from those slots.
    assert body["chunk_checksums"] == run1["reference_md5"]
    assert body["chunk_checksums"] == [vt.chunk_md5(c) for c in run1["stored_chunks"]]


def test_admin_api_stops_with_the_engine(run1: dict[str, Any]) -> None:
    import threading

    assert not run1["api_thread"].is_alive()
    names = [t.name for t in threading.enumerate()]
    assert not [n for n in names if n.startswith(("lmcn-lookup", "lmcache-native-api"))], names
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{run1['port']}/health", timeout=2)


# -- a fresh engine loads from the disk tier -------------------------------------------------


@pytest.fixture(scope="module")
def run2(model: str, disk: Path, run1: dict[str, Any]) -> dict[str, Any]:
    """Engine 2: fresh vLLM cache and empty CPU tier; the same disk tier."""
    del run1  # engine 1 must have stored first
    out: dict[str, Any] = {}
    with vt.in_process_llm(model, _connector_config(disk)) as llm:
        worker = vt.worker_connector().worker_side
        engine = worker.engine
        engine.set_record_slot(True)
        slot_log = _SlotLog()
        engine_logger = logging.getLogger("lmcache_native.engine.cache_engine")
        engine_logger.addHandler(slot_log)
        try:
            out["P"] = vt.generate(llm, P)
        finally:
            engine_logger.removeHandler(slot_log)
        loads = [s for op, s in slot_log.entries if op == "retrieve"]
        out["retrieve_slots"] = loads
        # What the load wrote into vLLM's cache, hashed where it was written.
        out["loaded_md5"] = engine.kv_checksums(torch.tensor(loads[0]), 64, False)
        out["P_loaded"] = worker.stats.loaded_tokens
        out["Q"] = vt.generate(llm, Q)
        out["Q_loaded"] = worker.stats.loaded_tokens - out["P_loaded"]
        out["worker_stats"] = worker.stats
        out["scheduler_stats"] = vt.scheduler_connector(llm).scheduler_side.stats
    return out


def test_fresh_engine_loads_stored_chunks_and_generates_the_same(
    run1: dict[str, Any], run2: dict[str, Any], baseline: dict[str, list[int]]
) -> None:
    tokens, cached = run2["P"]
    assert cached == FULL
    assert run2["P_loaded"] == FULL
    assert tokens == run1["P"][0] == baseline["P"]
    # The load wrote exactly the KV that run 1 computed: same bytes in vLLM's cache.
    assert len(run2["retrieve_slots"]) == 1
    assert len(run2["retrieve_slots"][0]) == FULL
    assert run2["loaded_md5"] == run1["check"][1]["chunk_checksums"]


def test_prompt_sharing_only_the_first_chunk_loads_exactly_it(
    run2: dict[str, Any], baseline: dict[str, list[int]]
) -> None:
    tokens, cached = run2["Q"]
    assert cached == vt.CHUNK_SIZE
    assert run2["Q_loaded"] == vt.CHUNK_SIZE
    assert tokens == baseline["Q"]
    assert run2["worker_stats"].load_failed_tokens == 0
    assert run2["scheduler_stats"].claimed_tokens == FULL + vt.CHUNK_SIZE


# -- negative controls -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def run3(model: str, disk: Path, run1: dict[str, Any], run2: dict[str, Any]) -> dict[str, Any]:
    """Engine 3 after tampering: R1's payloads replaced (checksums fixed), R2's chunk 1 broken."""
    del run2  # engine 2 must have run first
    gen = torch.Generator().manual_seed(7)
    for key in run1["keys"]["R1"]:
        path = vt.chunk_path(disk, key)
        real = vt.read_chunk(path, key)
        # NOTE: with dummy weights (|w| <= 1e-3) the real KV is ~1e-6 and attention adds only a
        # few percent to the residual stream; values of order 10 make any use of them show.
        other = torch.randn(real.shape, generator=gen, dtype=torch.float32) * 10
        assert not torch.equal(other, real)
        vt.rewrite_chunk(path, key, other.to(real.dtype))
        assert torch.equal(vt.read_chunk(path, key), other.to(real.dtype))  # passes checks
    broken = run1["keys"]["R2"][1]
    vt.break_payload(vt.chunk_path(disk, broken), byte_index=1000)
    out: dict[str, Any] = {"broken_path": vt.chunk_path(disk, broken), "broken_key": broken}
    # Selected by name only: the vllm.general_plugins entry point registers it.
    with vt.in_process_llm(model, _connector_config(disk), module_path=False) as llm:
        worker = vt.worker_connector().worker_side
        out["connector_class"] = type(vt.worker_connector())
        out["R1"] = vt.generate(llm, R1)
        out["R1_loaded"] = worker.stats.loaded_tokens
        stored_before = worker.stats.stored_tokens
        out["R2"] = vt.generate(llm, R2)
        out["R2_loaded"] = worker.stats.loaded_tokens - out["R1_loaded"]
        out["R2_stored"] = worker.stats.stored_tokens - stored_before
        assert worker.engine.flush(timeout=30)
        out["worker_stats"] = worker.stats
        out["checksum_failures"] = worker.engine.storage.stats()["LocalDiskBackend"]
    return out


def test_overwritten_payloads_change_the_output(
    run3: dict[str, Any], baseline: dict[str, list[int]], run1: dict[str, Any]
) -> None:
    tokens, cached = run3["R1"]
    assert run1["R1"][0] == baseline["R1"]
    assert cached == FULL
    assert run3["R1_loaded"] == FULL  # the tampered chunks were loaded...
    assert tokens != baseline["R1"]  # ...and vLLM really attended to them


def test_broken_checksum_is_a_miss_and_output_is_unchanged(
    run3: dict[str, Any], baseline: dict[str, list[int]]
) -> None:
    tokens, _ = run3["R2"]
    # The lookup answers from the disk index (no payload read), so the whole prompt is claimed;
    # chunk 0 is intact and loads, chunk 1 fails its checksum in the load, so the load ends
    # there and reports the rest's blocks, which vLLM recomputes.
    assert run3["R2_loaded"] == vt.CHUNK_SIZE
    assert tokens == baseline["R2"]
    assert run3["worker_stats"].load_failed_tokens > 0
    # The corrupt file was counted and deleted; vLLM recomputed chunks 1 and 2 and the
    # connector stored both again (chunk 2's disk copy is rewritten too: it was not loaded from
    # there, so it may be damaged as well), so the disk tier holds a valid file once more.
    assert run3["checksum_failures"]["checksum_failures"] == 1
    assert run3["R2_stored"] == 2 * vt.CHUNK_SIZE
    assert vt.read_chunk(run3["broken_path"], run3["broken_key"]).shape[2] == vt.CHUNK_SIZE


def test_plugin_entry_point_registers_the_connector(run3: dict[str, Any]) -> None:
    from importlib.metadata import entry_points

    from lmcache_native.integration.vllm import LMCacheNativeConnector
    from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory

    (ep,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "lmcache_native"]
    ep.load()()  # vLLM may call it again: a no-op
    assert KVConnectorFactory.get_connector_class_by_name(vt.CONNECTOR) is LMCacheNativeConnector
    assert run3["connector_class"] is LMCacheNativeConnector  # run 3 named no module path


# -- vLLM's default multiprocess mode --------------------------------------------------------

_MP_DRIVER = textwrap.dedent(
    """
    import json, sys
    import httpx
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    args = json.loads(sys.argv[1])
    llm = LLM(**args["engine"])
    params = SamplingParams(max_tokens=args["max_tokens"], temperature=0.0, ignore_eos=True,
                            detokenize=False)
    result = {}
    for name in ("first", "second"):
        (o,) = llm.generate([TokensPrompt(prompt_token_ids=args["prompt"])], params,
                            use_tqdm=False)
        result[name] = [list(o.outputs[0].token_ids), int(o.num_cached_tokens or 0)]
    url = "http://127.0.0.1:%d" % args["port"]
    result["info"] = httpx.get(url + "/cache/kvcache/info", timeout=30).json()
    result["metrics"] = httpx.get(url + "/metrics", timeout=30).text
    result["inference_info"] = httpx.get(url + "/inference_info", timeout=30).json()
    llm.llm_engine.engine_core.shutdown()
    print("RESULT " + json.dumps(result), flush=True)
    """
)


def test_multiprocess_mode(model: str, baseline: dict[str, list[int]], tmp_path: Path) -> None:
    port = vt.free_port()
    cfg = vt.admin_api_config(port)
    args = {
        "engine": vt.engine_kwargs(model, cfg),
        "prompt": P,
        "max_tokens": vt.MAX_TOKENS,
        "port": port,
    }
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    env["LMCACHE_NATIVE_LOOKUP_DIR"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", _MP_DRIVER, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["first"] == [baseline["P"], 0]
    assert result["second"] == [baseline["P"], FULL]  # loaded through the socket lookup
    assert list(result["info"]["layers"]) == [
        "model.layers.0.self_attn.attn",
        "model.layers.1.self_attn.attn",
    ]
    retrieved = [
        ln
        for ln in result["metrics"].splitlines()
        if ln.startswith("lmcache_retrieved_tokens_total") and 'tier="LocalCPUBackend"' in ln
    ]
    assert retrieved
    assert float(retrieved[0].split()[-1]) == FULL
    counters = {
        ln.split()[0]: float(ln.split()[1])
        for ln in result["metrics"].splitlines()
        if ln.startswith("lmcache_vllm_") and ln.split()[0].endswith("_total")
    }
    assert counters["lmcache_vllm_loaded_tokens_total"] == FULL
    assert counters["lmcache_vllm_stored_tokens_total"] == FULL
    assert counters["lmcache_vllm_load_failed_tokens_total"] == 0
    assert counters["lmcache_vllm_lookups_total"] == 2
    assert result["inference_info"]["inference"]["model"] == model
    # The lookup socket lived in tmp_path and was removed at shutdown.
    assert list(tmp_path.glob("lmcn-*.sock")) == []
