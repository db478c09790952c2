"""Time to first token on a real vLLM: the connector's tiers, concurrency and load modes.

vLLM runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, ``uni`` executor) on a Llama with
dummy weights written here (no download). A batch of N requests is submitted at once through
``LLMEngine.add_request`` and the engine is stepped until each has its first token; a request's
TTFT is the time from the submission of the batch to the step that returned its first token.
Rows, all from the same run:

* ``recompute`` (baseline): no connector, vLLM's prefix cache off: every prompt is computed.
* ``prefix_cache`` (reference): vLLM's own in-memory prefix cache, the prompts seen before.
* ``sync`` / ``async`` / ``layerwise``: the connector with synchronous loads, with
  ``enable_async_loading`` (and ``enable_async_saving``), or with ``use_layerwise``; its N
  repeated prompts' chunks sit in the ``cpu`` tier, only on ``disk`` (CPU tier cleared and the
  chunk files' cached pages dropped before each batch: read from the device), only on disk in
  the page cache (``disk-warm``: CPU tier cleared, pages left cached) or only in ``redis`` (CPU
  and disk tiers cleared; a real ``redis-server`` started here on a free 127.0.0.1 port; the rows
  are skipped, with the reason printed, without it).
* ``mixed``: per connector mode, N/2 never-seen prompts (misses) beside N/2 disk-tier hits,
  ``--mixed-output-tokens`` each: the misses' TTFT beside the hits against the misses alone, and
  the batch's throughput (prompt plus output tokens per second).

Goals (verdict per row): with async loads a miss's TTFT beside cold-tier hits is at most 1.1x its
TTFT alone; a disk-tier hit loads at 0.8x or more of the raw sequential read bandwidth of the
same chunk files (``disk``: plain Python reads of the files right after the batch, their pages
dropped first as for the batch, so both read from the device). ``disk-warm`` shows the same
ratio from the page cache, where the raw read is a memory copy (a reference, no goal).
``load_GBps`` is the KV bytes the connector loaded over the seconds its loads took (``retrieve``:
fetch, xxh3 check, copy into vLLM's blocks), from the worker's own per-request log records.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmcache_native.bench import page_cache
from lmcache_native.bench._util import (
    busy_seconds,
    gbps,
    machine_info,
    parse_int_list,
    parse_str_list,
    ratio,
    write_json,
)
from lmcache_native.bench.report import print_table

_LAYOUT: tuple[str, ...] = ("hidden_size", "intermediate_size", "num_hidden_layers")
_LAYOUT += ("num_attention_heads", "num_key_value_heads", "head_dim")
MODELS: dict[str, dict[str, int]] = {
    # The e2e tests' model: 2 layers, 2 KV heads of 32 (1 KiB of fp32 KV per token).
    "tiny": dict(zip(_LAYOUT, (128, 256, 2, 4, 2, 32), strict=True)),
    # Prefill costs something: 8 layers, 4 KV heads of 64 (16 KiB of fp32 KV per token).
    "small": dict(zip(_LAYOUT, (1024, 2816, 8, 16, 4, 64), strict=True)),
}
MODES = ("sync", "async", "layerwise")
TIERS = ("cpu", "disk", "disk-warm", "redis")
BASELINES = ("recompute", "prefix_cache")
#: Tiers emptied before each batch so the prompts' chunks are found only in the named tier.
CLEARED = {"cpu": [], "disk": ["LocalCPUBackend"], "redis": ["LocalCPUBackend", "LocalDiskBackend"]}
CLEARED["disk-warm"] = CLEARED["disk"]
MODE_KEYS: dict[str, dict[str, bool]] = {
    "sync": {},
    "async": {"enable_async_loading": True, "enable_async_saving": True},
    "layerwise": {"use_layerwise": True},
}
DISK_GOAL, MISS_GOAL = 0.8, 1.1
TTFT_COLUMNS: tuple[str, ...] = ("mode", "tier", "conc", "ttft_ms", "ttft_max_ms")
TTFT_COLUMNS += ("cached", "loaded", "x_recompute", "load_GBps", "raw_GBps", "load/raw")
TTFT_COLUMNS += ("goal", "met")
MIXED_COLUMNS: tuple[str, ...] = ("mode", "conc", "miss_alone_ms", "miss_beside_ms")
MIXED_COLUMNS += ("beside/alone", "tok_s", "goal", "met")


def write_model(directory: Path, name: str, dtype: str) -> str:
    """Writes a Llama ``config.json`` for ``name`` (weights come from ``load_format="dummy"``)."""
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 1000,
        "max_position_embeddings": 16384,
        "rms_norm_eps": 1e-5,
        "torch_dtype": dtype,
        "tie_word_embeddings": False,
        **MODELS[name],
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg))
    return str(directory)


def kv_bytes_per_token(name: str, dtype: str) -> int:
    """KV bytes of one token over all layers of model ``name``."""
    m = MODELS[name]
    elem = 4 if dtype == "float32" else 2
    return 2 * m["num_hidden_layers"] * m["num_key_value_heads"] * m["head_dim"] * elem


def prompt(seed: int, n: int) -> list[int]:
    """``n`` seeded random token ids in ``[3, 1000)``."""
    rng = random.Random(seed)
    return [rng.randrange(3, 1000) for _ in range(n)]


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str | None]:
    """A ``redis-server`` on a free 127.0.0.1 port, stopped on exit: its URL (None: no binary)."""
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis rows skipped: no redis-server binary on PATH", file=sys.stderr)
        yield None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        [*cmd, "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {port}")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()  # no persistence configured: it exits at once
        proc.wait(30)


# --- vLLM engines and timed batches ---------------------------------------------------------------


@dataclass
class Setup:
    """What every engine of the run shares."""

    args: argparse.Namespace
    model: str
    workdir: Path
    redis_url: str | None
    seeds: Iterator[int] = field(default_factory=lambda: itertools.count(10_000))

    def fresh(self, n: int) -> list[list[int]]:
        """``n`` prompts never used before in this run."""
        return [prompt(next(self.seeds), self.args.prompt_tokens) for _ in range(n)]


@contextlib.contextmanager
def engine(setup: Setup, mode: str) -> Iterator[Any]:
    """An in-process ``vllm.LLM`` for ``mode`` (a baseline or a connector mode), shut after."""
    from vllm import LLM

    args = setup.args
    most = max(args.concurrency + args.mixed_concurrency)
    tokens = most * (args.prompt_tokens + args.mixed_output_tokens + 64)
    kv_bytes = int(2 * tokens * kv_bytes_per_token(args.model, args.dtype)) + (64 << 20)
    kw: dict[str, Any] = {
        "model": setup.model,
        "load_format": "dummy",
        "skip_tokenizer_init": True,
        "dtype": args.dtype,
        "block_size": 32,
        "enable_prefix_caching": mode == "prefix_cache",
        "enforce_eager": True,
        "seed": 0,
        "kv_cache_memory_bytes": kv_bytes,
        "max_model_len": args.prompt_tokens + args.mixed_output_tokens + 64,
        "distributed_executor_backend": "uni",
    }
    if mode in MODES:
        disk = setup.workdir / f"disk-{mode}"
        keys: dict[str, Any] = {
            "chunk_size": args.chunk_size,
            "max_local_cpu_size": args.cpu_gb,
            "local_disk": str(disk),
            "max_local_disk_size": args.disk_gb,
            **MODE_KEYS[mode],
        }
        if setup.redis_url is not None:
            keys["remote_url"] = f"{setup.redis_url}/{MODES.index(mode)}"
        kw["kv_transfer_config"] = {
            "kv_connector": "LMCacheNativeConnector",
            "kv_connector_module_path": "lmcache_native.integration.vllm",
            "kv_role": "kv_both",
            "kv_connector_extra_config": {f"lmcache.{k}": v for k, v in keys.items()},
        }
    # NOTE: in-process engine core, so the benchmark reaches the worker's connector and tiers.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    llm = LLM(**kw)
    try:
        yield llm
    finally:
        llm.llm_engine.engine_core.shutdown()


_request_ids = itertools.count()


@dataclass
class Batch:
    """One timed batch: per-request TTFT and cached tokens, the wall time, tokens produced."""

    ttft_s: list[float]
    cached: list[int]
    wall_s: float
    tokens: int


def run_batch(llm: Any, prompts: Sequence[list[int]], max_tokens: int = 1) -> Batch:
    """Submits ``prompts`` at once (``add_request``) and steps the engine until all finish."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(
        max_tokens=max_tokens, temperature=0.0, ignore_eos=True, detokenize=False
    )
    eng = llm.llm_engine
    ids = [f"ttft-{next(_request_ids)}" for _ in prompts]
    first: dict[str, float] = {}
    cached: dict[str, int] = {}
    made = 0
    t0 = time.perf_counter()
    for rid, p in zip(ids, prompts, strict=True):
        eng.add_request(rid, TokensPrompt(prompt_token_ids=p), params)
    while eng.has_unfinished_requests():
        for out in eng.step():
            if out.request_id not in first and out.outputs and out.outputs[0].token_ids:
                first[out.request_id] = time.perf_counter() - t0
            if out.finished:
                cached[out.request_id] = int(out.num_cached_tokens or 0)
                made += len(out.outputs[0].token_ids)
    wall = time.perf_counter() - t0
    return Batch([first[r] for r in ids], [cached[r] for r in ids], wall, made)


class LoadLog(logging.Handler):
    """Collects the worker's per-request load records (tokens, bytes, seconds, end) from its log."""

    LOGGER = "lmcache_native.integration.vllm"

    def __init__(self) -> None:
        """An empty log."""
        super().__init__(logging.INFO)
        self.loads: list[tuple[int, int, float, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keeps ``retrieve`` records (their args: op, id, tokens, asked, bytes, ms, ...)."""
        a: Any = record.args
        if isinstance(a, tuple) and len(a) >= 6 and a[0] == "retrieve":
            self.loads.append((int(a[2]), int(a[4]), float(a[5]) / 1e3, record.created))

    @contextlib.contextmanager
    def attached(self) -> Iterator[LoadLog]:
        """Listens to the worker's logger (at INFO) while the block runs."""
        log = logging.getLogger(self.LOGGER)
        level = log.level
        log.setLevel(logging.INFO)
        log.addHandler(self)
        try:
            yield self
        finally:
            log.removeHandler(self)
            log.setLevel(level)


def settle_stores(llm: Any, cache: Any, max_steps: int = 100_000) -> None:
    """Waits until every store is in the tiers: background saves, then disk and Redis writes.

    With async saves a finished request holds its blocks until its stores are done, so the
    scheduler still lists it; the engine is stepped until it lists none.
    """
    scheduler = llm.llm_engine.engine_core.engine_core.scheduler
    for _ in range(max_steps):
        if not scheduler.requests:
            break
        llm.llm_engine.step()
        time.sleep(0.001)
    cache.flush(60)


# --- rows -----------------------------------------------------------------------------------------


def ttft_row(mode: str, tier: str, n: int, batches: Sequence[Batch]) -> dict[str, Any]:
    """A TTFT table row from the batches of one (mode, tier, concurrency)."""
    ttft = [t for b in batches for t in b.ttft_s]
    ms = statistics.median(ttft) * 1e3
    row = {"table": "ttft", "mode": mode, "tier": tier, "conc": n, "ttft_ms": ms}
    row |= {"ttft_max_ms": max(ttft) * 1e3, "cached": min(c for b in batches for c in b.cached)}
    return row | {"loaded": 0, "goal": "-", "met": "-"}


@dataclass
class ConnectorRun:
    """One connector engine of the run: its LLM, the worker's cache engine, the load log."""

    setup: Setup
    mode: str
    llm: Any
    worker: Any
    log: LoadLog
    hits: list[list[int]]

    def batch(self, prompts: list[list[int]], clear: Sequence[str] = (), out: int = 1,
              cold: Sequence[Path] = ()) -> Batch:  # fmt: skip
        """:func:`run_batch` once earlier stores are in the tiers and ``clear`` is emptied.

        The cached pages of the files ``cold`` are dropped first (read from the device).
        """
        settle_stores(self.llm, self.worker.engine)
        if clear:
            self.worker.engine.clear(list(clear))
        page_cache.drop(cold)
        return run_batch(self.llm, prompts, out)

    def tier_row(self, tier: str, n: int) -> dict[str, Any]:
        """TTFT of ``n`` stored prompts found only in ``tier``; disk: against raw reads."""
        from lmcache_native.storage.serde import chunk_filename

        args, cache, stats = self.setup.args, self.worker.engine, self.worker.stats
        full = args.prompt_tokens // args.chunk_size * args.chunk_size
        keys = [k for p in self.hits[:n] for k in cache.chunk_keys(p[:full])]
        files = [self.setup.workdir / f"disk-{self.mode}" / chunk_filename(k) for k in keys]
        state = "cold" if tier == "disk" else "warm"
        batches, loaded, loads, raw_bytes, raw_s = [], 0, [], 0, 0.0
        for _ in range(args.repeat):
            start_tokens, start_log = stats.loaded_tokens, len(self.log.loads)
            batches.append(self.batch(self.hits[:n], CLEARED[tier], cold=files * (tier == "disk")))
            loaded += stats.loaded_tokens - start_tokens
            loads += self.log.loads[start_log:]
            if tier.startswith("disk"):  # the same files from the same page-cache state
                b, s = page_cache.read_seconds(files, state)
                raw_bytes, raw_s = raw_bytes + b, raw_s + s
        row = ttft_row(self.mode, tier, n, batches)
        row["loaded"] = loaded // (n * args.repeat)
        # Concurrent (background) loads overlap: their time is the time some load was running.
        secs = busy_seconds([(end - s, end) for _, _, s, end in loads])
        row["load_GBps"] = gbps(sum(b for _, b, _, _ in loads), secs) if secs > 0 else None
        if tier.startswith("disk") and raw_s > 0:
            row["raw_GBps"] = gbps(raw_bytes, raw_s)
            row["load/raw"] = ratio(row["load_GBps"], row["raw_GBps"])
        if tier == "disk" and raw_s > 0:  # the goal: the disk's bandwidth (warm: memory's)
            row["goal"] = f">= {DISK_GOAL}x raw read"
            row["met"] = "yes" if (row["load/raw"] or 0) >= DISK_GOAL else "no"
        return row

    def mixed_row(self, n: int) -> dict[str, Any]:
        """``n/2`` misses beside ``n/2`` disk-tier hits against the misses alone."""
        args, half = self.setup.args, n // 2
        alone: list[float] = []
        beside: list[float] = []
        tok_s: list[float] = []
        for _ in range(args.miss_repeat):
            alone += self.batch(self.setup.fresh(half), out=args.mixed_output_tokens).ttft_s
            prompts = self.setup.fresh(half) + self.hits[:half]
            b = self.batch(prompts, CLEARED["disk"], args.mixed_output_tokens)
            beside += b.ttft_s[:half]
            tok_s.append((2 * half * args.prompt_tokens + b.tokens) / b.wall_s)
        a, s = statistics.median(alone) * 1e3, statistics.median(beside) * 1e3
        row: dict[str, Any] = {"table": "mixed", "mode": self.mode, "conc": 2 * half}
        row |= {"miss_alone_ms": a, "miss_beside_ms": s, "beside/alone": ratio(s, a)}
        row |= {"tok_s": statistics.median(tok_s), "goal": "-", "met": "-"}
        if self.mode == "async":
            row["goal"] = f"<= {MISS_GOAL}x alone"
            row["met"] = "yes" if (row["beside/alone"] or 99) <= MISS_GOAL else "no"
        return row


def connector_rows(setup: Setup, mode: str) -> list[dict[str, Any]]:
    """The TTFT rows of one connector mode over the tiers and concurrencies, then its mixed rows."""
    from vllm.distributed.kv_transfer import get_kv_transfer_group

    args = setup.args
    most = max(args.concurrency + [n // 2 for n in args.mixed_concurrency])
    hits = [prompt(i, args.prompt_tokens) for i in range(most)]
    with engine(setup, mode) as llm, LoadLog().attached() as log:
        worker: Any = getattr(get_kv_transfer_group(), "worker_side", None)
        if worker is None or worker.engine is None:
            raise RuntimeError(f"connector disabled: {getattr(worker, 'disabled_reason', None)}")
        run = ConnectorRun(setup, mode, llm, worker, log, hits)
        for warm in [setup.fresh(1)] * 2:  # warm-up: a miss, then its hit
            run.batch(warm)
        rows = [ttft_row(mode, "miss (store)", len(hits), [run.batch(hits)])]
        for tier in args.tiers:
            if tier != "redis" or setup.redis_url is not None:
                rows += [run.tier_row(tier, n) for n in args.concurrency]
        rows += [run.mixed_row(n) for n in args.mixed_concurrency]
    return rows


def baseline_rows(setup: Setup, mode: str) -> list[dict[str, Any]]:
    """Rows of an engine without the connector (``recompute``) or with vLLM's prefix cache."""
    args = setup.args
    rows = []
    with engine(setup, mode) as llm:
        for warm in [setup.fresh(1)] * 2:  # warm-up: twice (a hit with prefix_cache)
            run_batch(llm, warm)
        repeat = args.miss_repeat if mode == "recompute" else args.repeat
        for n in args.concurrency:
            prompts = setup.fresh(n)
            if mode == "prefix_cache":
                run_batch(llm, prompts)
            batches = [run_batch(llm, prompts) for _ in range(repeat)]
            rows.append(ttft_row(mode, "-" if mode == "recompute" else "vLLM", n, batches))
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (``--quick``: concurrency 1 and 4, 256 tokens, cpu and disk tiers)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="small")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3, help="timed batches per row of hits")
    p.add_argument("--miss-repeat", type=int, default=2, help="same, recompute and mixed rows")
    p.add_argument("--concurrency", type=parse_int_list, default=[1, 4, 16])
    mixed_help = "mixed-load batch sizes (default: the largest --concurrency; 0: none)"
    p.add_argument("--mixed-concurrency", type=parse_int_list, default=None, help=mixed_help)
    p.add_argument("--tiers", type=parse_str_list, default=list(TIERS))
    p.add_argument("--modes", type=parse_str_list, default=list(MODES))
    p.add_argument("--baselines", type=parse_str_list, default=list(BASELINES))
    p.add_argument("--mixed-output-tokens", type=int, default=8)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--cpu-gb", type=float, default=2.0)
    p.add_argument("--disk-gb", type=float, default=8.0)
    p.add_argument("--quick", action="store_true", help="a smoke run (smaller settings)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the rows")
    args = p.parse_args(argv)
    lists = (("--tiers", args.tiers, TIERS), ("--modes", args.modes, MODES))
    for name, value, known in (*lists, ("--baselines", args.baselines, BASELINES)):
        if any(v not in known for v in value):
            p.error(f"{name}: choose from {', '.join(known)} (got {', '.join(value)})")
    if args.quick:
        args.repeat = args.miss_repeat = 1
        args.prompt_tokens = min(args.prompt_tokens, 256)
        args.concurrency = [c for c in args.concurrency if c <= 4] or [1]
        args.tiers = [t for t in args.tiers if t in ("cpu", "disk")] or args.tiers
    if args.mixed_concurrency is None:
        args.mixed_concurrency = [max(args.concurrency)]
    args.mixed_concurrency = [n for n in args.mixed_concurrency if n >= 2]
    if args.prompt_tokens < args.chunk_size:
        p.error("--prompt-tokens must be at least --chunk-size (nothing would be stored)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark with ``argv``, prints its two tables; returns the exit code."""
    args = parse_args(argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lmc-ttft-") as tmp:
        work = Path(tmp)
        model = write_model(work / args.model, args.model, args.dtype)
        need_redis = "redis" in args.tiers and bool(args.modes)
        with redis_server(work) if need_redis else contextlib.nullcontext() as url:
            setup = Setup(args, model, work, url)
            for base in args.baselines:
                rows += baseline_rows(setup, base)
            for mode in args.modes:
                rows += connector_rows(setup, mode)
    recompute = {r["conc"]: r["ttft_ms"] for r in rows if r["mode"] == "recompute"}
    for r in rows:
        if r["table"] == "ttft":
            r["x_recompute"] = ratio(recompute.get(r["conc"]), r["ttft_ms"])
    info = machine_info()
    title = (
        f"vLLM TTFT, model {args.model} ({args.dtype}), {args.prompt_tokens}-token prompts, "
        f"chunk {args.chunk_size}, N requests per batch via add_request, median over "
        f"{args.repeat} batch(es) x N requests ({args.miss_repeat} for recompute); "
        f"{info['cpu']} ({info['cpu_count']} cores, "
        f"load {info['load_average']})"
    )
    print_table([r for r in rows if r["table"] == "ttft"], TTFT_COLUMNS, title)
    mixed = [r for r in rows if r["table"] == "mixed"]
    out = f"{args.mixed_output_tokens} output tokens each, {args.miss_repeat} batch(es)"
    if mixed:
        title = f"mixed load: N/2 misses beside N/2 disk-tier hits, {out}; TTFT of the misses"
        print_table(mixed, MIXED_COLUMNS, title)
    write_json(args.json, benchmark="vllm_ttft", args=args, rows=rows)
    return 0
