"""``use_layerwise`` on a real vLLM (CPU backend, tiny Llama, dummy weights).

Three engines share one disk tier, each starting with an empty vLLM cache and CPU tier:

1. layer-wise on: computes ``P`` and ``S`` (nothing stored yet: their tokens are recompute's)
   and stores them layer by layer;
2. layer-wise off: loads ``P`` (stored layer-wise) and computes and stores ``R``;
3. layer-wise on: loads ``P`` and ``R`` (stored the whole-forward way) layer by layer, and ``S``
   whose second chunk was damaged on disk (the load reports it; vLLM recomputes from there).

Every output must equal what the engine that computed it from scratch generated. The dtype
follows ``LMC_TEST_VLLM_DTYPE`` (``float32`` by default; ``bfloat16`` in the bf16 run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import vllm_testlib as vt

pytest.importorskip("vllm")

pytestmark = pytest.mark.vllm

P = vt.prompt(11, 200)
R = vt.prompt(12, 200)
S = vt.prompt(13, 200)
FULL = 192  # tokens of the 3 full chunks of a 200-token prompt


def _config(disk: Path, layerwise: bool) -> dict[str, Any]:
    return vt.disk_tier_config(disk, use_layerwise=layerwise)


def _run(model: str, disk: Path, layerwise: bool, prompts: dict[str, list[int]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with vt.in_process_llm(model, _config(disk, layerwise)) as llm:
        connector = vt.worker_connector()
        worker = connector.worker_side
        engine = worker.engine
        assert engine is not None, worker.disabled_reason
        out["layerwise"] = connector.layerwise is not None
        for name, tokens in prompts.items():
            loaded = worker.stats.loaded_tokens
            failed = worker.stats.load_failed_tokens
            out[name] = vt.generate(llm, tokens)
            out[f"{name}_loaded"] = worker.stats.loaded_tokens - loaded
            out[f"{name}_failed"] = worker.stats.load_failed_tokens - failed
            if connector.layerwise is not None and connector.layerwise.last_load is not None:
                out[f"{name}_layers_loaded"] = connector.layerwise.last_load.layers_loaded
        out["keys"] = {name: engine.chunk_keys(tokens) for name, tokens in prompts.items()}
        saver = connector.layerwise._saver if connector.layerwise is not None else None
        out["layers_saved"] = saver.layers_saved if saver is not None else 0
        out["num_layers"] = len(engine.layer_names)
        out["stored"] = worker.stats.stored_tokens
        assert engine.flush(timeout=30)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    model = vt.write_model(tmp_path_factory.mktemp("tiny-llama"))
    disk = tmp_path_factory.mktemp("disk-tier")
    first = _run(model, disk, True, {"P": P, "S": S})
    second = _run(model, disk, False, {"P": P, "R": R})
    # S's second chunk is damaged on disk: its header checksum no longer matches.
    vt.break_payload(vt.chunk_path(disk, first["keys"]["S"][1]), byte_index=100)
    third = _run(model, disk, True, {"P": P, "R": R, "S": S})
    out = {"first": first, "second": second, "third": third}
    vt.report(f"vllm_layerwise_{vt.DTYPE}", out)
    return out


def test_layerwise_stores_each_layer_and_computes_like_recompute(
    runs: dict[str, dict[str, Any]],
) -> None:
    first = runs["first"]
    assert first["layerwise"]
    assert first["P"][1] == 0  # nothing stored before: computed from scratch
    assert first["S"][1] == 0
    assert first["stored"] == 2 * FULL
    # Each prompt's prefill step copied every layer out as it was written.
    assert first["layers_saved"] >= 2 * first["num_layers"]


def test_layerwise_store_loads_with_layerwise_off(runs: dict[str, dict[str, Any]]) -> None:
    first, second = runs["first"], runs["second"]
    assert not second["layerwise"]
    assert second["keys"]["P"] == first["keys"]["P"]
    tokens, cached = second["P"]
    assert (cached, second["P_loaded"], second["P_failed"]) == (FULL, FULL, 0)
    assert tokens == first["P"][0]
    assert second["R"][1] == 0  # computed: recompute's tokens, stored the whole-forward way


def test_layerwise_load_of_both_kinds_of_store_matches_recompute(
    runs: dict[str, dict[str, Any]],
) -> None:
    first, second, third = runs["first"], runs["second"], runs["third"]
    assert third["layerwise"]
    for name, computed in (("P", first["P"][0]), ("R", second["R"][0])):
        tokens, cached = third[name]
        assert cached == FULL, name
        assert third[f"{name}_loaded"] == FULL, name
        assert third[f"{name}_failed"] == 0, name
        assert third[f"{name}_layers_loaded"] == third["num_layers"], name
        assert tokens == computed, name


def test_a_damaged_chunk_in_a_layerwise_load_is_recomputed(
    runs: dict[str, dict[str, Any]],
) -> None:
    first, third = runs["first"], runs["third"]
    tokens, _ = third["S"]
    # The first chunk loads; the damaged second one ends the load; the rest is recomputed.
    assert third["S_loaded"] == vt.CHUNK_SIZE
    assert third["S_failed"] == FULL - vt.CHUNK_SIZE
    assert tokens == first["S"][0]
