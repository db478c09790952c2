"""``use_layerwise`` and ``enable_async_saving`` together on a real vLLM (CPU backend, tiny Llama).

Three in-process engines over one disk tier, each starting with an empty vLLM cache and CPU
tier:

1. no connector: the reference outputs of ``P`` and ``Q``;
2. layer-wise with async saves: computes both (nothing stored yet); each prefill step copies
   every layer out as it is written, ``wait_for_save`` hands the commit of the filled buffers to
   the background thread (the forward thread commits nothing), and all of it reaches the disk;
3. a fresh engine, layer-wise on: loads both prompts layer by layer from the disk tier.

Every output must equal the reference token for token. The dtype follows
``LMC_TEST_VLLM_DTYPE`` (``float32`` by default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import vllm_testlib as vt

pytest.importorskip("vllm")

pytestmark = pytest.mark.vllm

PROMPTS = {"P": vt.prompt(21, 200), "Q": vt.prompt(22, 200)}
FULL = 192  # tokens of the 3 full chunks of a 200-token prompt


def _config(disk: Path, async_saving: bool) -> dict[str, Any]:
    return vt.disk_tier_config(disk, use_layerwise=True, enable_async_saving=async_saving)


def _run(model: str, disk: Path, async_saving: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with vt.in_process_llm(model, _config(disk, async_saving)) as llm:
        connector = vt.worker_connector()
        worker = connector.worker_side
        engine = worker.engine
        assert engine is not None, worker.disabled_reason
        out["layerwise"] = connector.layerwise is not None
        out["async_saving"] = worker.async_saving
        out["threads"] = vt.record_save_threads(engine)
        for name, tokens in PROMPTS.items():
            loaded = worker.stats.loaded_tokens
            out[name] = vt.generate(llm, tokens)
            out[f"{name}_loaded"] = worker.stats.loaded_tokens - loaded
            last = connector.layerwise.last_load
            out[f"{name}_layers_loaded"] = last.layers_loaded if last is not None else 0
        worker.wait_saves()
        saver = connector.layerwise._saver
        out["layers_saved"] = saver.layers_saved if saver is not None else 0
        out["num_layers"] = len(engine.layer_names)
        out["stored"] = worker.stats.stored_tokens
        out["async_saves"] = worker.stats.async_saves
        out["batched_gathers"] = engine.metrics.value(
            "lmcache_copy_seconds_count", {"direction": "gather"}
        )
        assert engine.flush(timeout=30)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    model = vt.write_model(tmp_path_factory.mktemp("tiny-llama"))
    disk = tmp_path_factory.mktemp("disk-tier")
    out: dict[str, Any] = {"reference": vt.baseline(model, PROMPTS)}
    out["saver"] = _run(model, disk, async_saving=True)
    out["loader"] = _run(model, disk, async_saving=False)
    vt.report(f"vllm_layerwise_async_{vt.DTYPE}", out)
    return out


def test_layerwise_async_saves_commit_in_the_background(runs: dict[str, Any]) -> None:
    saver, reference = runs["saver"], runs["reference"]
    assert saver["layerwise"]
    assert saver["async_saving"]
    for name in PROMPTS:
        tokens, cached = saver[name]
        assert cached == 0, name  # nothing stored before: computed from scratch
        assert tokens == reference[name], name
    assert saver["stored"] == 2 * FULL
    assert saver["async_saves"] >= 2
    # Each prefill step copied every layer out as it was written (no batched gather after the
    # forward), and every commit ran on the background save thread.
    assert saver["layers_saved"] >= 2 * saver["num_layers"]
    assert saver["batched_gathers"] == 0
    threads = saver["threads"]
    assert len(threads["commit"]) >= 2
    assert all(t.startswith("lmcn-save") for t in threads["commit"])
    assert not any(t.startswith("lmcn-save") for t in threads["stage"])


def test_a_fresh_engine_loads_what_layerwise_async_saves_stored(runs: dict[str, Any]) -> None:
    loader, reference = runs["loader"], runs["reference"]
    for name in PROMPTS:
        tokens, cached = loader[name]
        assert cached == FULL, name
        assert loader[f"{name}_loaded"] == FULL, name
        assert loader[f"{name}_layers_loaded"] == loader["num_layers"], name
        assert tokens == reference[name], name
