"""The connector's lookup of a long prompt against a large index, beside the 2 ms budget.

What vLLM's scheduler waits for when it asks which prefix of a prompt is stored: the worker's
``lookup`` (hash the prompt's chunks, ask the tiers' indexes, hold the CPU-tier chunks), for a
``--prompt-tokens`` prompt whose chunks are all stored, among ``--chunks`` indexed chunks in all.
Three placements of the prompt's chunks, each a fresh engine:

* ``cpu``: in the CPU tier (the other chunks are CPU-tier entries too, sharing one buffer).
* ``disk``: on the disk tier only (CPU tier emptied). The prompt's chunks are real files; the
  other entries are added to the disk tier's index only (the lookup reads nothing but the index).
* ``redis``: in a real ``redis-server`` only (CPU tier emptied), started on a free 127.0.0.1
  port when the binary is installed; the other keys are real Redis keys.

Timed per placement, in the same run (median of ``--repeat``):

* ``lookup``: the worker's lookup called in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``).
* ``via socket``: the same through the Unix-socket lookup server (vLLM's default multiprocess
  mode: the 32K token ids are sent each time).
* ``cached repeat``: the scheduler side asked again for the same waiting request (answered from
  its lookup cache).
* ``old path``: the lookup before it answered from indexes: ``engine.lookup`` then
  ``verified_prefix`` (reads, verifies and promotes every chunk outside the CPU tier); for disk
  and Redis the promoted chunks are dropped from the CPU tier before each run.
* ``dict limit``: a plain Python dict lookup of the prompt's keys in a dict of ``--chunks`` keys
  (no hashing), and ``hash only``: computing the prompt's chunk keys.

Example::

    python benchmarks/bench_connector_lookup.py --prompt-tokens 32768 --chunks 100000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import torch

from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine import CacheEngine, EngineMetadata
from lmcache_native.engine.keys import CacheKey, KeyExtras
from lmcache_native.integration.vllm.lookup import LookupClient, LookupServer
from lmcache_native.integration.vllm.scheduler import SchedulerSide
from lmcache_native.integration.vllm.worker import WorkerSide
from lmcache_native.storage.base import ChunkBufferLike
from lmcache_native.storage.local_disk import _Entry


def verified_prefix(
    engine: CacheEngine,
    tokens: Sequence[int],
    extras: KeyExtras | None = None,
    held: list[ChunkBufferLike] | None = None,
) -> int:
    """How many leading tokens of ``tokens`` (a stored prefix) the engine can really load.

    The connector's previous lookup, this benchmark's baseline: it reads every chunk not in the
    CPU tier (the connector now answers from the tiers' indexes). Chunks
    in the CPU tier count as they are; any other chunk is fetched through the storage
    manager, which verifies it and promotes it into the CPU tier. With ``held``, the CPU-tier
    buffer of each counted chunk is appended to it with one reference (eviction skips a
    referenced buffer); the caller drops those references.
    """
    storage = engine.storage
    cpu = storage.cpu
    cpu_active = cpu is not None and not storage.is_bypassed(cpu.name)
    chunk = int(engine.config.get("chunk_size"))
    verified = 0
    keys = engine.chunk_keys(tokens, extras)
    for i, key in enumerate(keys):
        buf = cpu.get(key) if cpu is not None and cpu_active else None
        if buf is None:
            got = storage.get(key)
            if got is None:
                storage.mark_suspect(keys[i:])  # the next store rewrites the rest of the prefix
                break
            buf = got[0]
            if not (cpu is not None and cpu_active and cpu.contains(key)):
                buf.unref()  # not kept by the CPU tier: the load reads the lower tier again
                buf = None
        if buf is not None:
            if held is not None:
                held.append(buf)
            else:
                buf.unref()
        verified = min((i + 1) * chunk, len(tokens))
    return verified


BUDGET_MS = 2.0
BLOCK, HEADS, HEAD = 16, 1, 8


def _median_ms(
    fn: Callable[[], Any], repeat: int, before: Callable[[], None] | None = None
) -> float:
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _redis_server() -> Iterator[str | None]:
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def _engine(args: argparse.Namespace, **cfg: Any) -> tuple[WorkerSide, LMCacheEngineConfig]:
    blocks = args.prompt_tokens // BLOCK + 1
    config = LMCacheEngineConfig.from_defaults(
        chunk_size=args.chunk_size, max_local_cpu_size=4.0, **cfg
    )
    caches = {"l0": torch.randn(blocks, HEADS, BLOCK, 2 * HEAD)}
    engine = CacheEngine(config, EngineMetadata(model_name="bench"))
    engine.register_kv_caches(caches, "vllm_cpu")
    vllm_config = SimpleNamespace(cache_config=SimpleNamespace(block_size=BLOCK))
    worker = WorkerSide(vllm_config, None, config, "bench-lookup", 0, 1)  # type: ignore[arg-type]
    worker.engine = engine
    return worker, config


def _other_keys(n: int) -> list[str]:
    return [CacheKey("bench", 1, 0, os.urandom(16).hex(), "float32").to_string() for _ in range(n)]


def run_placement(
    placement: str, args: argparse.Namespace, tokens: list[int], tmp: str, redis_url: str | None
) -> dict[str, float]:
    """Median milliseconds of each lookup path with the prompt's chunks in ``placement``."""
    cfg: dict[str, Any] = {}
    if placement == "disk":
        cfg = {"local_disk": os.path.join(tmp, "disk"), "max_local_disk_size": 50.0}
    elif placement == "redis":
        cfg = {"remote_url": redis_url}
    worker, config = _engine(args, **cfg)
    engine = worker.engine
    assert engine is not None
    keys = engine.chunk_keys(tokens)
    others = _other_keys(args.chunks - len(keys))
    assert engine.store(tokens, torch.arange(len(tokens))).num_stored_tokens == len(tokens)
    assert engine.flush(timeout=120)
    cpu = engine.storage.cpu
    assert cpu is not None
    if placement == "cpu":
        shared = cpu.get(keys[0])
        assert shared is not None
        for k in others:
            cpu.put(k, shared)
        shared.unref()
    else:
        engine.clear(["LocalCPUBackend"])
    if placement == "disk":
        disk = engine.storage.backend("LocalDiskBackend")
        with disk._lock:  # type: ignore[attr-defined]  # index entries only
            for k in others:
                disk._index[k] = _Entry("absent", 1)  # type: ignore[attr-defined]
    elif placement == "redis":
        import redis

        rc = redis.Redis.from_url(str(redis_url))
        pipe = rc.pipeline(transaction=False)
        for i in range(0, len(others), 1000):
            pipe.mset({k: b"x" for k in others[i : i + 1000]})
        pipe.execute()
        rc.close()

    def drop_promoted() -> None:
        if placement != "cpu":
            for k in keys:
                cpu.remove(k)

    expect = len(tokens)
    assert worker.lookup("check", tokens)[0] == expect, placement
    drop_promoted()
    server = LookupServer.start("bench-lookup", 0, worker.lookup)
    client = LookupClient("bench-lookup", 1)
    sched = SchedulerSide(config, "bench-lookup", 1, BLOCK)
    request = SimpleNamespace(
        request_id="waiting",
        prompt_token_ids=tokens,
        mm_features=[],
        lora_request=None,
        cache_salt=None,
        prompt_embeds=None,
    )
    try:
        out = {
            "lookup": _median_ms(lambda: worker.lookup("r", tokens), args.repeat),
            # The socket path, as a scheduler in another process reaches the worker.
            "via socket": _median_ms(lambda: client._remote(0, "r", tokens, None), args.repeat),
        }
        sched.get_num_new_matched_tokens(request, 0)  # type: ignore[arg-type]
        out["cached repeat"] = _median_ms(
            lambda: sched.get_num_new_matched_tokens(request, 0),  # type: ignore[arg-type]
            args.repeat,
        )
        worker.finished({"r", "waiting", "check"})

        def old_path() -> None:
            hit = engine.lookup(tokens)
            held: list[Any] = []
            assert verified_prefix(engine, tokens[:hit], None, held) == expect
            for b in held:
                b.unref()

        out["old path"] = _median_ms(old_path, args.repeat, before=drop_promoted)
    finally:
        sched.close()
        client.close()
        server.stop()
        worker.close()
    return out


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark with ``argv`` and prints its figures; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt-tokens", type=int, default=32768)
    parser.add_argument("--chunks", type=int, default=100_000, help="indexed chunks in all")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--placements", default="cpu,disk,redis")
    args = parser.parse_args(argv)
    tokens = [(i * 7919 + 13) % 32000 for i in range(args.prompt_tokens)]

    # The limit: a plain dict of as many keys, asked for the prompt's keys (no hashing).
    worker, _ = _engine(args)
    assert worker.engine is not None
    keys = worker.engine.chunk_keys(tokens)
    table = dict.fromkeys(_other_keys(args.chunks - len(keys)) + keys, True)
    dict_ms = _median_ms(lambda: all(k in table for k in keys), args.repeat)
    hash_ms = _median_ms(lambda: worker.engine.chunk_keys(tokens), args.repeat)  # type: ignore[union-attr]
    worker.close()

    print(
        f"lookup of a {args.prompt_tokens}-token prompt ({len(keys)} chunks of "
        f"{args.chunk_size}) among {args.chunks} indexed chunks; median of {args.repeat}, "
        f"budget {BUDGET_MS:.1f} ms"
    )
    print(f"  dict limit (keys given): {dict_ms:8.3f} ms")
    print(f"  hash only (chunk keys):  {hash_ms:8.3f} ms")
    header = f"  {'placement':<10}" + "".join(
        f"{c:>16}" for c in ("lookup", "via socket", "cached repeat", "old path")
    )
    print(header + f"{'in budget':>12}")
    with tempfile.TemporaryDirectory() as tmp, _redis_server() as redis_url:
        for placement in args.placements.split(","):
            if placement == "redis" and redis_url is None:
                print(f"  {'redis':<10} skipped: redis-server is not installed")
                continue
            r = run_placement(placement, args, tokens, tmp, redis_url)
            cells = "".join(
                f"{r[c]:>13.3f} ms" for c in ("lookup", "via socket", "cached repeat", "old path")
            )
            ok = "yes" if r["lookup"] < BUDGET_MS else "NO"
            print(f"  {placement:<10}{cells}{ok:>12}")

    return 0
