"""The connector's save path over a long chunked prefill: whole-prefix saves against incremental.

A prompt of ``--prompt-tokens`` is prefilled ``--step`` tokens per engine step (vLLM's chunked
prefill); after each step the connector saves what the step computed. Two paths, in the same run,
on the same KV cache, each into a fresh engine:

* ``whole``: what the connector did before saves became incremental (kept here, callable): the
  scheduler copies every computed token id and block id into the step's metadata, and the worker
  builds the slot mapping of the whole prefix and hands all of it to ``CacheEngine.store``,
  which rehashes every chunk and asks the tiers about each one before skipping the stored ones.
* ``incremental``: the connector's real ``SchedulerSide`` and ``WorkerSide``: the metadata
  carries only the new token and block ids, and the worker hashes and stores only from its last
  full chunk on (continuing the hash chain).

Both store exactly the same chunks (checked). Per step it times the scheduler's metadata
(including pickling it, as vLLM's multiprocess mode does), the worker's save, and counts the
pickled metadata bytes.

Example::

    python benchmarks/bench_connector_save.py --prompt-tokens 16384 --step 512
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine import CacheEngine, EngineMetadata
from lmcache_native.integration.vllm.metadata import (
    LMCacheNativeConnectorMetadata,
    SaveSpec,
    slot_mapping,
)
from lmcache_native.integration.vllm.scheduler import SchedulerSide
from lmcache_native.integration.vllm.worker import WorkerSide


@dataclass
class StepTimes:
    """One path's measurements over the prefill."""

    sched_s: list[float]
    worker_s: list[float]
    meta_bytes: list[int]

    @property
    def total_s(self) -> float:
        """Scheduler plus worker seconds over every save."""
        return sum(self.sched_s) + sum(self.worker_s)


def _config(args: argparse.Namespace) -> LMCacheEngineConfig:
    kv_bytes = args.prompt_tokens * args.layers * 2 * args.heads * args.head_size * 2
    return LMCacheEngineConfig.from_defaults(
        chunk_size=args.chunk_size,
        max_local_cpu_size=2 * kv_bytes / 2**30,
        extra_config={"lookup_lease_secs": 30},
    )


def _engine(config: LMCacheEngineConfig, caches: list[torch.Tensor]) -> CacheEngine:
    engine = CacheEngine(config, EngineMetadata(model_name="bench/save"))
    engine.register_kv_caches({f"l{i}": c for i, c in enumerate(caches)}, "vllm_cpu")
    return engine


def whole_prefix_path(
    args: argparse.Namespace, caches: list[torch.Tensor], tokens: list[int], blocks: list[int]
) -> tuple[StepTimes, CacheEngine]:
    """The replaced save path: every save carries and stores the whole computed prefix."""
    engine = _engine(_config(args), caches)
    times = StepTimes([], [], [])
    chunk = args.chunk_size
    saved_upto = 0
    for computed in range(args.step, args.prompt_tokens + 1, args.step):
        t0 = time.perf_counter()
        crossed = computed // chunk > saved_upto // chunk
        prompt_end = computed >= args.prompt_tokens
        if not crossed and not prompt_end:
            continue
        saved_upto = computed
        nb = (computed + args.block_size - 1) // args.block_size
        spec = SaveSpec("r", list(tokens[:computed]), list(blocks[:nb]), args.prompt_tokens)
        payload = pickle.dumps(LMCacheNativeConnectorMetadata(saves=[spec]))
        t1 = time.perf_counter()
        meta = pickle.loads(payload)
        (s,) = meta.saves
        slots = slot_mapping(s.block_ids, args.block_size, len(s.token_ids))
        engine.store(s.token_ids, slots)
        t2 = time.perf_counter()
        times.sched_s.append(t1 - t0)
        times.worker_s.append(t2 - t1)
        times.meta_bytes.append(len(payload))
    return times, engine


def incremental_path(
    args: argparse.Namespace, caches: list[torch.Tensor], tokens: list[int], blocks: list[int]
) -> tuple[StepTimes, CacheEngine]:
    """The connector's scheduler and worker sides, driven as vLLM drives them."""
    config = _config(args)
    engine = _engine(config, caches)
    sched = SchedulerSide(config, "bench-save", 1, args.block_size, loads=False)
    vllm_config: Any = SimpleNamespace(cache_config=SimpleNamespace(block_size=args.block_size))
    worker = WorkerSide(vllm_config, None, config, "bench-save", rank=0, world_size=1)
    worker.engine = engine
    request: Any = SimpleNamespace(
        request_id="r",
        prompt_token_ids=tokens,
        all_token_ids=tokens,
        num_prompt_tokens=args.prompt_tokens,
        mm_features=[],
        lora_request=None,
        cache_salt=None,
        prompt_embeds=None,
    )
    no_blocks: Any = SimpleNamespace(get_block_ids=lambda: ([],))
    sched.update_state_after_alloc(request, no_blocks, 0)
    times = StepTimes([], [], [])
    done_blocks = 0
    for computed in range(0, args.prompt_tokens, args.step):
        nb = (computed + args.step + args.block_size - 1) // args.block_size
        new_blocks = blocks[done_blocks:nb]
        first = computed == 0
        output: Any = SimpleNamespace(
            scheduled_new_reqs=(
                [SimpleNamespace(req_id="r", block_ids=(new_blocks,), num_computed_tokens=0)]
                if first
                else []
            ),
            scheduled_cached_reqs=SimpleNamespace(
                req_ids=[] if first else ["r"],
                new_block_ids=[] if first else [(new_blocks,)],
                num_computed_tokens=[] if first else [computed],
                resumed_req_ids=set(),
            ),
            num_scheduled_tokens={"r": args.step},
            finished_req_ids=set(),
        )
        done_blocks = nb
        t0 = time.perf_counter()
        meta = sched.build_connector_meta(output)
        if not meta.saves:
            continue
        payload = pickle.dumps(meta)
        t1 = time.perf_counter()
        worker.wait_for_save(pickle.loads(payload))
        t2 = time.perf_counter()
        times.sched_s.append(t1 - t0)
        times.worker_s.append(t2 - t1)
        times.meta_bytes.append(len(payload))
    sched.close()
    return times, engine


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark with ``argv`` and prints its figures; returns the exit code."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prompt-tokens", type=int, default=16384)
    p.add_argument("--step", type=int, default=512, help="tokens prefilled per engine step")
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=4, help="KV heads")
    p.add_argument("--head-size", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)

    torch.manual_seed(0)
    num_blocks = (args.prompt_tokens + args.block_size - 1) // args.block_size + 8
    caches = [
        torch.randn(num_blocks, args.heads, args.block_size, 2 * args.head_size).to(torch.bfloat16)
        for _ in range(args.layers)
    ]
    blocks = list(torch.randperm(num_blocks)[: num_blocks - 8].tolist())
    tokens = torch.randint(3, 32000, (args.prompt_tokens,)).tolist()

    runs: dict[str, list[StepTimes]] = {"whole": [], "incremental": []}
    for _ in range(args.repeat):
        for name, fn in (("whole", whole_prefix_path), ("incremental", incremental_path)):
            times, engine = fn(args, caches, tokens, blocks)
            # Both paths stored every full chunk of the prompt under the same keys.
            assert engine.lookup(tokens) == args.prompt_tokens // args.chunk_size * args.chunk_size
            runs[name].append(times)
            engine.close()

    def med(name: str, f: Any) -> float:
        return float(statistics.median(f(t) for t in runs[name]))

    w = runs["whole"][0]
    print(
        f"prompt {args.prompt_tokens} tokens, {args.step} per step ({len(w.worker_s)} saves), "
        f"chunk_size {args.chunk_size}, block_size {args.block_size}, "
        f"{args.layers} layers x {args.heads} KV heads x {args.head_size}, bf16, "
        f"median of {args.repeat} runs"
    )
    print(f"{'':28s}{'whole prefix':>14s}{'incremental':>14s}{'ratio':>8s}")
    rows = [
        ("total save time (ms)", lambda t: t.total_s * 1e3),
        ("  scheduler + pickle (ms)", lambda t: sum(t.sched_s) * 1e3),
        ("  worker save (ms)", lambda t: sum(t.worker_s) * 1e3),
        ("first save (ms)", lambda t: (t.sched_s[0] + t.worker_s[0]) * 1e3),
        ("last save (ms)", lambda t: (t.sched_s[-1] + t.worker_s[-1]) * 1e3),
        ("metadata bytes, all saves", lambda t: float(sum(t.meta_bytes))),
        ("metadata bytes, last save", lambda t: float(t.meta_bytes[-1])),
    ]
    for label, f in rows:
        a, b = med("whole", f), med("incremental", f)
        print(f"{label:28s}{a:14.1f}{b:14.1f}{a / b if b else float('nan'):8.1f}")

    return 0
