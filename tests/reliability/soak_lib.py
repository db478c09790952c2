"""Soak: a CacheEngine with CPU + disk + Redis tiers under concurrent load, every read verified.

Threads, for ``--seconds``:

* ``--workers`` store/retrieve/lookup workers. Requests are prefixes of a few token
  "families" that share their first chunks, so workers store and read the same keys. Each
  worker owns a slot region of one paged KV cache; before a store it writes, into the slots of
  each chunk, bytes that are a pure function of the chunk's key, and records ``key -> digest``
  in a shared shadow map. Before a retrieve it fills its region with a sentinel; afterwards
  every loaded chunk is read back with plain torch indexing (not the engine's kernels) and
  compared with the shadow digest of its key, and every slot past the loaded prefix must still
  hold the sentinel. A chunk whose key was never stored, or whose bytes differ, is a mismatch.
* a chaos thread: freeze on/off, hot cache off/on, bypass add/remove of a random tier, clear
  of random tiers, half through the admin API, half on the engine.
* an admin thread: the admin API (a real uvicorn server thread from
  ``lmcache_native.api.server``) — GETs of every read-only endpoint, and mock store /
  retrieve / checksum of slot region 0, whose checksum must never change (a retrieve writes
  back exactly the bytes that were stored from those slots).
* a sampler (peak RSS, open fds) and a watchdog that reports any operation running > 5 s.

Exit status 0 only when there were no mismatches, no stalls, no unexpected exceptions, no
admin API 5xx, and RSS / fd growth after warm-up stayed within bounds.

    .venv/bin/python tests/reliability/soak_lib.py --seconds 600          # the recorded run
    .venv/bin/python tests/reliability/soak_lib.py --seconds 60 --json    # what the test runs

``test_soak.py`` runs it as a separate process (its RSS and fd figures are its own).

A Redis server is started on a free port unless ``--redis-url`` names one (``--no-redis``:
CPU + disk only).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch
import xxhash
from lmcache_native.api import server as api_server
from lmcache_native.cli import make_kv_caches
from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine import CacheEngine, EngineMetadata

CHUNK = 16
REGION = 256  # slots per worker region (16 chunks)
NUM_LAYERS = 2
NUM_HEADS = 4
HEAD_SIZE = 32
BLOCK_SIZE = 16
DTYPE = torch.bfloat16
ROW = NUM_HEADS * HEAD_SIZE
SENTINEL = 0xA5
ADMIN_TOKEN_BASE = 1_000_000_000
MB = 1 << 20
REDIS_BIN = "/usr/bin/redis-server"


# -- measurements ---------------------------------------------------------------------------------


def rss_bytes() -> int:
    """Resident set size of this process."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def open_fds() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


@dataclass
class Results:
    """Everything the soak counts (guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    ops: Counter[str] = field(default_factory=Counter)
    verified_chunks: int = 0
    retrieved_tokens: int = 0
    stored_tokens: int = 0
    mismatches: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stalls: list[str] = field(default_factory=list)
    admin_5xx: list[str] = field(default_factory=list)
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    fd_samples: list[tuple[float, int]] = field(default_factory=list)

    def count(self, op: str, n: int = 1) -> None:
        with self.lock:
            self.ops[op] += n

    def fail(self, kind: str, message: str) -> None:
        with self.lock:
            target = {"mismatch": self.mismatches, "stall": self.stalls, "admin": self.admin_5xx}
            bucket = target.get(kind, self.errors)
            if len(bucket) < 1000:
                bucket.append(message)


class Watchdog:
    """Tracks each thread's operation in flight; reports any that runs longer than ``limit``."""

    def __init__(self, results: Results, limit: float) -> None:
        self._results = results
        self._limit = limit
        self._inflight: dict[str, tuple[str, float]] = {}
        self._reported: set[tuple[str, float]] = set()
        self._lock = threading.Lock()
        self.max_op_seconds = 0.0

    @contextlib.contextmanager
    def op(self, name: str) -> Iterator[None]:
        me = threading.current_thread().name
        t0 = time.monotonic()
        with self._lock:
            self._inflight[me] = (name, t0)
        try:
            yield
        finally:
            dt = time.monotonic() - t0
            with self._lock:
                self._inflight.pop(me, None)
                self.max_op_seconds = max(self.max_op_seconds, dt)

    def check(self) -> None:
        now = time.monotonic()
        with self._lock:
            items = list(self._inflight.items())
        for thread, (name, t0) in items:
            if now - t0 > self._limit and (thread, t0) not in self._reported:
                self._reported.add((thread, t0))
                self._results.fail(
                    "stall", f"{thread}: {name} running for {now - t0:.1f}s (> {self._limit}s)"
                )


# -- the KV cache, content and verification -------------------------------------------------------


class Shadow:
    """key -> digest of the bytes stored for it (the bytes are a pure function of the key)."""

    def __init__(self) -> None:
        self._map: dict[str, str] = {}
        self._lock = threading.Lock()

    def record(self, key: str, digest: str) -> None:
        with self._lock:
            old = self._map.setdefault(key, digest)
        if old != digest:  # content is a function of the key: this cannot differ
            raise AssertionError(f"shadow map: two contents for {key}")

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._map.get(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._map)


def chunk_content(key: str) -> torch.Tensor:
    """``[2, NUM_LAYERS, CHUNK, ROW]`` bf16 whose bytes depend only on ``key``.

    Every bit pattern can occur, NaN and Inf included.
    """
    gen = torch.Generator().manual_seed(xxhash.xxh3_64_intdigest(key.encode()) & ((1 << 63) - 1))
    nbytes = 2 * NUM_LAYERS * CHUNK * ROW * 2
    raw = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=gen)
    return raw.view(DTYPE).view(2, NUM_LAYERS, CHUNK, ROW)


def digest(t: torch.Tensor) -> str:
    """MD5 of a tensor's raw bytes."""
    return hashlib.md5(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


class KV:
    """The paged cache (flash-attn layout) and flat per-layer views ``[2, num_slots, ROW]``."""

    def __init__(self, num_regions: int, seed: int) -> None:
        self.num_slots = num_regions * REGION
        num_blocks = self.num_slots // BLOCK_SIZE
        self.caches = make_kv_caches(
            NUM_LAYERS, "flash_attn", num_blocks, BLOCK_SIZE, NUM_HEADS, HEAD_SIZE, DTYPE, seed
        )
        self.flat = [c.view(2, self.num_slots, ROW) for c in self.caches.values()]

    def write(self, slots: torch.Tensor, chunk: torch.Tensor) -> None:
        """Writes ``chunk`` ``[2, NUM_LAYERS, n, ROW]`` into ``slots`` with torch indexing."""
        for li, flat in enumerate(self.flat):
            flat[:, slots] = chunk[:, li]

    def read(self, slots: torch.Tensor) -> torch.Tensor:
        """``[2, NUM_LAYERS, n, ROW]`` read from ``slots`` with torch indexing."""
        return torch.stack([flat[:, slots] for flat in self.flat], dim=1)

    def fill(self, slots: torch.Tensor) -> None:
        """Writes the sentinel byte into every row of ``slots``."""
        for flat in self.flat:
            flat.view(torch.uint8)[:, slots] = SENTINEL

    def is_sentinel(self, slots: torch.Tensor) -> bool:
        """Whether every byte of ``slots`` is the sentinel."""
        for flat in self.flat:
            b = flat.view(torch.uint8)[:, slots]
            if not bool((b == SENTINEL).all()):
                return False
        return True


def make_families(num_families: int, seed: int) -> list[list[int]]:
    """Token sequences of REGION tokens; families share 1-3 leading chunks in groups."""
    rng = random.Random(seed)
    commons = [[rng.randrange(50_000) for _ in range(3 * CHUNK)] for _ in range(4)]
    out = []
    for f in range(num_families):
        shared = rng.choice([0, 1, 2, 3]) * CHUNK
        head = commons[f % len(commons)][:shared]
        out.append(head + [rng.randrange(50_000) for _ in range(REGION - shared)])
    return out


# -- threads --------------------------------------------------------------------------------------


class Soak:
    """One soak run."""

    def __init__(self, args: argparse.Namespace, workdir: Path, redis_url: str | None) -> None:
        self.args = args
        self.results = Results()
        self.watchdog = Watchdog(self.results, args.stall_seconds)
        self.shadow = Shadow()
        self.stop = threading.Event()
        self.kv = KV(args.workers + 1, args.seed)
        self.families = make_families(args.families, args.seed)
        overrides: dict[str, Any] = {
            "chunk_size": CHUNK,
            "local_cpu": True,
            "max_local_cpu_size": args.cpu_mb / 1024,
            "local_disk": str(workdir / "disk"),
            "max_local_disk_size": args.disk_mb / 1024,
            "blocking_timeout_secs": 2,
            "enable_chunk_statistics": True,
            "chunk_statistics_auto_start_statistics": True,
            # NOTE: a clear waits for the queued disk/Redis writes; 16 keeps that wait short on a
            # loaded 2-core machine (each queued write waits for the GIL behind the workers).
            "extra_config": {"writer_queue_size": 16, "remote_retry_interval_secs": 0.5},
        }
        if redis_url:
            overrides["remote_url"] = redis_url
        self.config = LMCacheEngineConfig.from_defaults(**overrides)
        model = f"soak-{os.getpid()}-{int(time.time())}"
        self.engine = CacheEngine(
            self.config, EngineMetadata(model_name=model, world_size=1, worker_id=0, kv_dtype=DTYPE)
        )
        self.engine.register_kv_caches(self.kv.caches, "flash_attn")
        self.server = api_server.start(self.engine, self.config, "127.0.0.1", 0)
        self.backends = self.engine.all_backends()
        self._stalled = False

    # -- workers -------------------------------------------------------------------------------

    def _run(self, name: str, fn: Any) -> None:
        try:
            fn()
        except Exception:  # any exception is a soak failure, reported
            self.results.fail("error", f"{name}: {traceback.format_exc()}")
            self.stop.set()

    def worker(self, index: int) -> None:
        rng = random.Random(self.args.seed * 1000 + index)
        base = (index + 1) * REGION
        region = torch.arange(base, base + REGION, dtype=torch.int64)
        while not self.stop.is_set():
            tokens = self.families[rng.randrange(len(self.families))]
            n = rng.choice(
                [rng.randrange(1, REGION + 1), rng.randrange(1, REGION // CHUNK + 1) * CHUNK]
            )
            req = torch.tensor(tokens[:n], dtype=torch.int64)
            slots = region[:n]
            op = rng.choices(["store", "retrieve", "lookup"], weights=[4, 5, 1])[0]
            with self.watchdog.op(op):
                if self.args.inject == "stall" and index == 0 and not self._stalled:
                    self._stalled = True
                    time.sleep(self.args.stall_seconds + 1.5)
                if op == "store":
                    self._store(req, slots)
                elif op == "retrieve":
                    self._retrieve(req, slots)
                else:
                    hit = self.engine.lookup(req)
                    if hit < 0 or hit > n or (hit % CHUNK and hit != n):
                        self.results.fail("mismatch", f"lookup returned {hit} for {n} tokens")
            self.results.count(op)

    def _store(self, tokens: torch.Tensor, slots: torch.Tensor) -> None:
        keys = self.engine.chunk_keys(tokens)
        for i, key in enumerate(keys):
            content = chunk_content(key)
            self.shadow.record(key, digest(content))
            if self.args.inject == "mismatch" and xxhash.xxh3_64_intdigest(key.encode()) % 8 == 0:
                content = content.clone()
                content.view(torch.uint8).view(-1)[0] ^= 1  # what a copy bug would store
            self.kv.write(slots[i * CHUNK : (i + 1) * CHUNK], content)
        res = self.engine.store(tokens, slots)
        with self.results.lock:
            self.results.stored_tokens += res.num_stored_tokens

    def _retrieve(self, tokens: torch.Tensor, slots: torch.Tensor) -> None:
        keys = self.engine.chunk_keys(tokens)
        self.kv.fill(slots)
        res = self.engine.retrieve(tokens, slots)
        got = res.num_retrieved
        if got % CHUNK or got > len(keys) * CHUNK:
            self.results.fail("mismatch", f"retrieve returned {got} tokens for {len(keys)} chunks")
            return
        for i in range(got // CHUNK):
            expected = self.shadow.get(keys[i])
            actual = digest(self.kv.read(slots[i * CHUNK : (i + 1) * CHUNK]))
            if expected is None:
                self.results.fail("mismatch", f"retrieved a never-stored key {keys[i]}")
            elif actual != expected:
                self.results.fail("mismatch", f"chunk {i} of {keys[i]}: {actual} != {expected}")
        if not self.kv.is_sentinel(slots[got:]):
            self.results.fail("mismatch", f"slots past the loaded prefix ({got}) were written")
        with self.results.lock:
            self.results.verified_chunks += got // CHUNK
            self.results.retrieved_tokens += got

    # -- chaos ---------------------------------------------------------------------------------

    def chaos(self) -> None:
        rng = random.Random(self.args.seed + 7)
        client = httpx.Client(base_url=self.server.url, timeout=30)
        try:
            while not self.stop.wait(rng.uniform(0.2, 1.0)):
                action = rng.choice(["freeze", "hot_cache", "bypass", "clear", "clear"])
                via_api = rng.random() < 0.5
                with self.watchdog.op(f"chaos:{action}:{'api' if via_api else 'engine'}"):
                    self._chaos(action, via_api, client, rng)
                self.results.count(f"chaos_{action}")
        finally:
            client.close()

    def _api(self, client: httpx.Client, method: str, path: str, **kw: Any) -> httpx.Response:
        r = client.request(method, path, **kw)
        if r.status_code >= 500:
            self.results.fail("admin", f"{method} {path}: {r.status_code} {r.text[:200]}")
        return r

    def _chaos(self, action: str, via_api: bool, client: httpx.Client, rng: random.Random) -> None:
        hold = rng.uniform(0.05, 0.4)
        if action == "freeze":
            if via_api:
                self._api(client, "PUT", "/freeze/enable")
                time.sleep(hold)
                self._api(client, "PUT", "/freeze/disable")
            else:
                self.engine.freeze(True)
                time.sleep(hold)
                self.engine.freeze(False)
        elif action == "hot_cache":
            if via_api:
                self._api(client, "PUT", "/hot_cache/disable")
                time.sleep(hold)
                self._api(client, "PUT", "/hot_cache/enable")
            else:
                self.engine.set_hot_cache(False)
                time.sleep(hold)
                self.engine.set_hot_cache(True)
        elif action == "bypass":
            name = rng.choice(self.backends)
            if via_api:
                self._api(client, "PUT", "/bypass/add", params={"backend_name": name})
                time.sleep(hold)
                self._api(client, "PUT", "/bypass/remove", params={"backend_name": name})
            else:
                self.engine.bypass_add(name)
                time.sleep(hold)
                self.engine.bypass_remove(name)
        else:
            names = rng.sample(self.backends, rng.randrange(1, len(self.backends) + 1))
            if via_api:
                params = [("locations", n) for n in names] if rng.random() < 0.7 else []
                self._api(client, "DELETE", "/cache/clear", params=params)
            else:
                self.engine.clear(names)

    # -- admin API -----------------------------------------------------------------------------

    def admin(self) -> None:
        rng = random.Random(self.args.seed + 11)
        client = httpx.Client(base_url=self.server.url, timeout=30)
        region0 = f"[0,{REGION - 1}]"
        gets = [
            "/conf",
            "/meta",
            "/cache/kvcache/info",
            "/chunk_statistics/status",
            "/metrics",
            "/bypass/list",
            "/freeze/status",
            "/hot_cache/status",
            "/health",
            "/inference_info",
            "/version",
        ]
        try:
            check = self._api(
                client,
                "GET",
                "/cache/kvcache/check",
                params={"slot_mapping": region0, "chunk_size": CHUNK},
            )
            reference = check.json()["chunk_checksums"]
            while not self.stop.wait(rng.uniform(0.0, 0.05)):
                kind = rng.choice(["get", "get", "store", "retrieve", "check"])
                with self.watchdog.op(f"admin:{kind}"):
                    if kind == "get":
                        self._api(client, "GET", rng.choice(gets))
                    elif kind in ("store", "retrieve"):
                        start = ADMIN_TOKEN_BASE + rng.randrange(8) * 1000
                        n = rng.randrange(1, REGION // CHUNK + 1) * CHUNK
                        self._api(
                            client,
                            "POST",
                            f"/cache/{kind}",
                            params={"tokens_mock": f"{start},{start + n}"},
                        )
                    else:
                        r = self._api(
                            client,
                            "GET",
                            "/cache/kvcache/check",
                            params={"slot_mapping": region0, "chunk_size": CHUNK},
                        )
                        if r.status_code == 200 and r.json()["chunk_checksums"] != reference:
                            self.results.fail("mismatch", "admin region checksum changed")
                self.results.count(f"admin_{kind}")
        finally:
            client.close()

    # -- sampling ------------------------------------------------------------------------------

    def sampler(self) -> None:
        t0 = time.monotonic()
        while not self.stop.wait(0.5):
            now = time.monotonic() - t0
            with self.results.lock:
                self.results.rss_samples.append((now, rss_bytes()))
                self.results.fd_samples.append((now, open_fds()))
            self.watchdog.check()

    # -- run -----------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        threads = [
            threading.Thread(
                target=self._run,
                args=(f"worker-{i}", lambda i=i: self.worker(i)),
                name=f"worker-{i}",
            )
            for i in range(self.args.workers)
        ]
        threads += [
            threading.Thread(target=self._run, args=("chaos", self.chaos), name="chaos"),
            threading.Thread(target=self._run, args=("admin", self.admin), name="admin"),
        ]
        sampler = threading.Thread(target=self.sampler, name="sampler", daemon=True)
        t0 = time.monotonic()
        sampler.start()
        for t in threads:
            t.start()
        deadline = t0 + self.args.seconds
        last_report = t0
        while not self.stop.wait(1.0):
            now = time.monotonic()
            if now >= deadline:
                break
            if self.args.progress and now - last_report >= 30:
                last_report = now
                with self.results.lock:
                    total = sum(self.results.ops.values())
                print(
                    f"  t={now - t0:5.0f}s ops={total} verified={self.results.verified_chunks} "
                    f"rss={rss_bytes() / MB:.0f}MiB fds={open_fds()} "
                    f"mismatches={len(self.results.mismatches)} stalls={len(self.results.stalls)}",
                    flush=True,
                )
        self.stop.set()
        for t in threads:
            t.join(timeout=60)
            if t.is_alive():
                self.results.fail("stall", f"{t.name} did not stop within 60 s")
        elapsed = time.monotonic() - t0
        self.watchdog.check()
        self.server.stop()
        flushed = self.engine.flush(timeout=30)
        tiers = self.engine.storage.stats()
        self.engine.close()
        return self._summary(elapsed, flushed, tiers)

    def _summary(self, elapsed: float, flushed: bool, tiers: dict[str, Any]) -> dict[str, Any]:
        r = self.results
        warm = max(10.0, 0.1 * self.args.seconds)
        rss_warm = [v for t, v in r.rss_samples if t <= warm] or [rss_bytes()]
        fd_warm = [v for t, v in r.fd_samples if t <= warm] or [open_fds()]
        rss_after = [v for t, v in r.rss_samples if t > warm] or rss_warm
        fd_after = [v for t, v in r.fd_samples if t > warm] or fd_warm
        rss_growth = max(rss_after) - rss_warm[-1]
        fd_growth = max(fd_after) - fd_warm[-1]
        total_ops = sum(r.ops.values())
        out = {
            "seconds": round(elapsed, 1),
            "workers": self.args.workers,
            "tiers": self.backends,
            "ops": total_ops,
            "ops_per_second": round(total_ops / elapsed, 1),
            "ops_by_kind": dict(sorted(r.ops.items())),
            "verified_chunks": r.verified_chunks,
            "retrieved_tokens": r.retrieved_tokens,
            "stored_tokens": r.stored_tokens,
            "distinct_keys": len(self.shadow),
            "mismatches": len(r.mismatches),
            "errors": len(r.errors),
            "admin_5xx": len(r.admin_5xx),
            "stalls": len(r.stalls),
            "max_op_seconds": round(self.watchdog.max_op_seconds, 3),
            "peak_rss_mib": round(max(v for _, v in r.rss_samples) / MB, 1)
            if r.rss_samples
            else None,
            "rss_after_warmup_mib": round(rss_warm[-1] / MB, 1),
            "rss_growth_after_warmup_mib": round(rss_growth / MB, 1),
            "fd_max": max(v for _, v in r.fd_samples) if r.fd_samples else None,
            "fd_growth_after_warmup": fd_growth,
            "writes_flushed": flushed,
            "tier_counters": {
                name: {
                    k: v
                    for k, v in s.items()
                    if k
                    in (
                        "hits",
                        "misses",
                        "puts",
                        "evictions",
                        "checksum_failures",
                        "errors",
                        "rejected_puts",
                    )
                }
                for name, s in tiers.items()
            },
        }
        bounded = (
            rss_growth <= self.args.max_rss_growth_mb * MB and fd_growth <= self.args.max_fd_growth
        )
        out["bounded"] = bounded
        out["ok"] = bool(
            bounded
            and not r.mismatches
            and not r.errors
            and not r.stalls
            and not r.admin_5xx
            and flushed
            and r.verified_chunks > 0
        )
        out["first_failures"] = (r.mismatches + r.errors + r.stalls + r.admin_5xx)[:5]
        return out


# -- Redis ----------------------------------------------------------------------------------------


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server on a free loopback port, no persistence."""
    import redis

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            REDIS_BIN,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        try:
            if client.ping():
                client.close()
                return proc, f"redis://127.0.0.1:{port}/0"
        except redis.RedisError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--families", type=int, default=48, help="token families (prefix groups)")
    parser.add_argument("--cpu-mb", type=float, default=2.0, help="CPU tier / pool size (MiB)")
    parser.add_argument("--disk-mb", type=float, default=8.0, help="disk tier size (MiB)")
    parser.add_argument("--redis-url", default=None, help="use this Redis (default: start one)")
    parser.add_argument("--no-redis", action="store_true", help="CPU + disk tiers only")
    parser.add_argument("--stall-seconds", type=float, default=5.0)
    parser.add_argument("--max-rss-growth-mb", type=float, default=256.0)
    parser.add_argument("--max-fd-growth", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--inject",
        choices=["mismatch", "stall"],
        default=None,
        help="negative control: store wrong bytes for some keys, or hang one operation",
    )
    parser.add_argument("--progress", action="store_true", help="print a line every 30 s")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="lmc-soak-"))
    redis_proc = None
    try:
        redis_url = None
        if not args.no_redis:
            if args.redis_url:
                redis_url = args.redis_url
            else:
                if not shutil.which(REDIS_BIN):
                    print(f"soak: {REDIS_BIN} missing (use --no-redis)", file=sys.stderr)
                    return 2
                redis_proc, redis_url = start_redis(workdir)
        soak = Soak(args, workdir, redis_url)
        summary = soak.run()
    finally:
        if redis_proc is not None:
            redis_proc.kill()
            redis_proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)

    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"soak: {summary['seconds']}s, {summary['workers']} workers, tiers {summary['tiers']}"
        )
        print(f"  ops: {summary['ops']} ({summary['ops_per_second']}/s) {summary['ops_by_kind']}")
        print(
            f"  verified chunks: {summary['verified_chunks']}, "
            f"distinct keys: {summary['distinct_keys']}"
        )
        print(
            f"  mismatches: {summary['mismatches']}, errors: {summary['errors']}, "
            f"admin 5xx: {summary['admin_5xx']}, "
            f"stalls (> {args.stall_seconds:g}s): {summary['stalls']}, "
            f"max op: {summary['max_op_seconds']}s"
        )
        print(
            f"  peak RSS: {summary['peak_rss_mib']} MiB (growth after warm-up "
            f"{summary['rss_growth_after_warmup_mib']} MiB), fd max: {summary['fd_max']} "
            f"(growth {summary['fd_growth_after_warmup']})"
        )
        print(f"  tiers: {summary['tier_counters']}")
        for f in summary["first_failures"]:
            print(f"  FAIL: {f}")
        print("soak: OK" if summary["ok"] else "soak: FAILED")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
