"""Injected faults with real components.

Redis killed and stalled, chunks corrupted on disk, in Redis and in an fs:// store, `lmcache-native
serve` killed mid-write, a full disk.

The invariant everywhere: the caller never sees an exception, a failure is a miss plus a
counter, and no byte that was not stored for a key ever reaches the KV cache (every retrieved
chunk is compared with what was stored; every slot past the loaded prefix keeps its sentinel).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import torch
from lmcache_native.cli import make_kv_caches
from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine import CacheEngine, EngineMetadata
from lmcache_native.engine.memory import ChunkBufferPool
from lmcache_native.storage import LocalCPUBackend, LocalDiskBackend, StorageManager
from lmcache_native.storage.serde import (
    chunk_filename,
    encode,
    is_temp_file,
    read_chunk_file,
)
from lmcache_native.testing import reference
from reliability_lib import (
    CHUNK,
    Served,
    fill_sentinel,
    is_sentinel,
    random_cache,
    rows,
)

TOKENS = list(range(9000, 9064))  # 4 chunks of 16


def _metric(engine: CacheEngine, name: str, **labels: str) -> float:
    return engine.metrics.value(name, labels)


def _verify_file(path: Path) -> str:
    """Fully verifies a chunk file (header, length, payload checksum); returns its key."""
    pool = ChunkBufferPool(1 << 30, pin_memory=False)
    buf, header = read_chunk_file(path, None, pool.allocate)
    assert buf is not None
    buf.unref()
    return header.key


# -- Redis killed --------------------------------------------------------------------------------


@pytest.mark.redis
def test_redis_sigkill_during_store_retrieve_loop(make_engine, redis_server):
    """A caller loops store -> retrieve over 4 prefixes while Redis is SIGKILLed and restarted.

    No exception, every loaded chunk byte-exact, misses and tier errors counted, and the tier serves
    hits again after the restart.
    """
    redis_server.start()
    caches = random_cache(21)
    e = make_engine(caches, remote_url=redis_server.url, blocking_timeout_secs=1)
    e.bypass_add("LocalCPUBackend")  # every read and write goes to Redis
    e.clear()
    remote = e.storage.backend("RemoteBackend")
    families = [[f * 1000 + t for t in range(64)] for f in range(4)]
    src = [torch.arange(f * 64, f * 64 + 64) for f in range(4)]
    expected = [rows(caches, s) for s in src]
    dst = torch.arange(320, 384)
    errors: list[str] = []
    outcomes: list[tuple[str, int]] = []
    phase = ["up"]
    stop = threading.Event()

    def loop() -> None:
        i = 0
        while not stop.is_set():
            f = i % 4
            i += 1
            try:
                e.store(families[f], src[f])
                fill_sentinel(caches, dst)
                got = e.retrieve(families[f], dst).num_retrieved
            except Exception as exc:
                errors.append(repr(exc))
                return
            if got % CHUNK or not torch.equal(rows(caches, dst[:got]), expected[f][:, :, :got]):
                errors.append(f"wrong bytes for family {f} ({got} tokens)")
            if not is_sentinel(caches, dst[got:]):
                errors.append(f"rows past the loaded prefix written ({got} tokens)")
            outcomes.append((phase[0], got))

    t = threading.Thread(target=loop)
    t.start()
    try:
        time.sleep(0.7)
        phase[0] = "down"
        redis_server.kill()
        time.sleep(1.5)
        phase[0] = "restarted"
        stats_at_restart = remote.stats()
        redis_server.start()
        time.sleep(1.5)
    finally:
        stop.set()
        t.join(timeout=60)
        redis_server.start()
    assert not t.is_alive()
    assert errors == []
    by_phase = {p: [g for ph, g in outcomes if ph == p] for p in ("up", "down", "restarted")}
    assert all(by_phase[p] for p in by_phase), {p: len(v) for p, v in by_phase.items()}
    assert any(g > 0 for g in by_phase["up"])  # Redis served hits before the kill
    assert by_phase["down"][-1] == 0  # and nothing while it was down
    end = remote.stats()
    assert end["errors"] >= 1
    assert end["misses"] >= 1
    assert _metric(e, "lmcache_tier_errors_total", tier="RemoteBackend") >= 1
    assert end["hits"] > stats_at_restart["hits"], (stats_at_restart, end)  # used again
    assert any(g > 0 for g in by_phase["restarted"])
    # And a plain round trip through Redis works after the restart.
    assert e.store(families[0], src[0]).num_stored_tokens in (0, 64)
    assert e.flush(timeout=30)
    fill_sentinel(caches, dst)
    assert e.retrieve(families[0], dst).num_retrieved == 64
    assert torch.equal(rows(caches, dst), expected[0])


@pytest.mark.redis
def test_redis_stall_is_bounded_by_blocking_timeout(make_engine, redis_server):
    """``DEBUG SLEEP`` stalls the server for 8 s.

    Each engine call gives up after about ``blocking_timeout_secs`` (1 s) with a miss, counted as a
    tier error.
    """
    redis_server.start()
    caches = random_cache(22)
    e = make_engine(
        caches,
        remote_url=redis_server.url,
        blocking_timeout_secs=1,
        extra_config={"remote_retry_interval_secs": 0.0},  # every call really tries Redis
    )
    e.bypass_add("LocalCPUBackend")
    e.clear()
    assert e.store(TOKENS, torch.arange(64)).num_stored_tokens == 64
    assert e.flush(timeout=30)
    assert e.lookup(TOKENS) == 64
    sleeper_client = redis.Redis.from_url(redis_server.url, socket_timeout=60)
    sleeper = threading.Thread(target=lambda: sleeper_client.execute_command("DEBUG", "SLEEP", 8))
    sleeper.start()
    time.sleep(0.3)  # the server is now asleep
    errors_before = e.storage.backend("RemoteBackend").stats()["errors"]
    timings: dict[str, float] = {}
    try:
        dst = torch.arange(200, 264)
        fill_sentinel(caches, dst)
        for name, call in (
            ("lookup", lambda: e.lookup(TOKENS)),
            ("retrieve", lambda: e.retrieve(TOKENS, dst).num_retrieved),
            ("contains", lambda: int(e.storage.contains(e.chunk_keys(TOKENS)[0]))),
        ):
            t0 = time.monotonic()
            assert call() == 0  # a miss, not an exception
            timings[name] = time.monotonic() - t0
        # Every call gave up while the server still slept: none waited for the stall to end.
        assert sleeper.is_alive(), timings
        assert is_sentinel(caches, dst)
    finally:
        sleeper.join(timeout=30)
        sleeper_client.close()
    print(f"\ncalls during an 8 s DEBUG SLEEP with blocking_timeout_secs=1: {timings}")
    assert e.storage.backend("RemoteBackend").stats()["errors"] >= errors_before + 3
    # The server woke up: the tier answers again.
    assert e.retrieve(TOKENS, torch.arange(200, 264)).num_retrieved == 64


# -- corrupt chunks --------------------------------------------------------------------------------


class TierBytes:
    """Raw stored bytes of a key in one tier (disk file, fs:// file or Redis value)."""

    def __init__(self, kind: str, location: str) -> None:
        self.kind = kind
        self.location = location
        self.client = redis.Redis.from_url(location) if kind == "redis" else None

    def path(self, key: str) -> Path:
        return Path(self.location) / chunk_filename(key)

    def read(self, key: str) -> bytes:
        if self.client is not None:
            value = self.client.get(key)
            assert isinstance(value, bytes)
            return value
        return self.path(key).read_bytes()

    def write(self, key: str, data: bytes) -> None:
        if self.client is not None:
            self.client.set(key, data)
        else:
            self.path(key).write_bytes(data)

    def exists(self, key: str) -> bool:
        if self.client is not None:
            return bool(self.client.exists(key))
        return self.path(key).exists()


def _tier_setup(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    if kind == "disk":
        return {"local_cpu": False, "local_disk": str(tmp_path / "disk")}
    if kind == "fs":
        return {"local_cpu": False, "remote_url": f"fs://{tmp_path / 'fs'}"}
    return {"local_cpu": False, "remote_url": request.getfixturevalue("redis_url")}


def _tier_bytes(kind: str, cfg: dict[str, Any], tmp_path: Path) -> TierBytes:
    if kind == "disk":
        return TierBytes(kind, str(tmp_path / "disk"))
    if kind == "fs":
        return TierBytes(kind, str(tmp_path / "fs"))
    return TierBytes(kind, cfg["remote_url"])


TIER_NAME = {"disk": "LocalDiskBackend", "fs": "RemoteBackend", "redis": "RemoteBackend"}

# How each fault changes the stored bytes of chunk 1; "other:*" take another engine's bytes.
CORRUPTIONS = {
    "payload_bit_flip": lambda b, _k: b[:-100] + bytes([b[-100] ^ 0x01]) + b[-99:],
    "header_bit_flip": lambda b, _k: b[:20] + bytes([b[20] ^ 0x80]) + b[21:],
    "key_byte_flip": lambda b, k: b.replace(k.encode()[-12:], k.encode()[-12:][::-1], 1),
    "truncated_half": lambda b, _k: b[: len(b) // 2],
    "truncated_one_byte": lambda b, _k: b[:-1],
    "extended_one_byte": lambda b, _k: b + b"\0",
    "header_only": lambda b, _k: b[:64],
    "empty": lambda _b, _k: b"",
    "garbage": lambda b, _k: random.Random(5).randbytes(len(b)),
    "other:model": None,
    "other:dtype": None,
}


@pytest.mark.parametrize("fault", sorted(CORRUPTIONS))
@pytest.mark.parametrize("kind", ["disk", "fs", "redis"])
def test_corrupt_chunk_is_a_counted_miss_and_removed(make_engine, tmp_path, request, kind, fault):
    caches = random_cache(23)
    cfg = _tier_setup(kind, tmp_path, request)
    e = make_engine(caches, **cfg)
    store = _tier_bytes(kind, cfg, tmp_path)
    tier = TIER_NAME[kind]
    assert e.store(TOKENS, torch.arange(64)).num_stored_tokens == 64
    assert e.flush(timeout=30)
    keys = e.chunk_keys(TOKENS)
    good = store.read(keys[1])
    if fault.startswith("other:"):
        other_caches = random_cache(24, torch.float16 if fault == "other:dtype" else torch.bfloat16)
        model = "another/model" if fault == "other:model" else "reliability/model"
        other_cfg = dict(cfg)
        if kind == "disk":
            other_cfg["local_disk"] = str(tmp_path / "other-disk")
        other = make_engine(other_caches, model=model, **other_cfg)
        other.store(TOKENS, torch.arange(64))
        assert other.flush(timeout=30)
        other_key = other.chunk_keys(TOKENS)[1]
        assert other_key != keys[1]
        if kind == "disk":
            bad = (tmp_path / "other-disk" / chunk_filename(other_key)).read_bytes()
        else:
            bad = store.read(other_key)
    else:
        bad = CORRUPTIONS[fault](good, keys[1])
    assert bad != good
    store.write(keys[1], bad)

    dst = torch.arange(256, 320)
    fill_sentinel(caches, dst)
    result = e.retrieve(TOKENS, dst)
    assert result.num_retrieved == CHUNK  # chunk 0 only: chunk 1 is a miss, the prefix ends
    assert torch.equal(rows(caches, dst[:CHUNK]), rows(caches, torch.arange(CHUNK)))
    assert is_sentinel(caches, dst[CHUNK:])  # nothing of the bad chunk reached the cache
    assert _metric(e, "lmcache_checksum_failures_total", tier=tier) == 1
    assert e.storage.backend(tier).stats()["checksum_failures"] == 1
    assert not store.exists(keys[1])  # removed
    assert e.lookup(TOKENS) == CHUNK
    # Stored again, it round-trips.
    # Stored again: chunk 1, and chunks 2-3, which the failed read marked suspect (rewritten).
    assert e.store(TOKENS, torch.arange(64)).num_stored_tokens == 3 * CHUNK
    assert e.flush(timeout=30)
    fill_sentinel(caches, dst)
    assert e.retrieve(TOKENS, dst).num_retrieved == 64
    assert torch.equal(rows(caches, dst), rows(caches, torch.arange(64)))


@pytest.mark.parametrize("what", ["dtype", "shape"])
@pytest.mark.parametrize("kind", ["disk", "fs", "redis"])
def test_well_formed_chunk_of_wrong_dtype_or_shape_is_rejected(
    make_engine, tmp_path, request, kind, what
):
    """A chunk whose header and checksum are fine and whose key is right.

    But whose payload has another dtype (same bytes) or another shape: rejected, counted, removed.
    """
    caches = random_cache(25)
    cfg = _tier_setup(kind, tmp_path, request)
    e = make_engine(caches, **cfg)
    store = _tier_bytes(kind, cfg, tmp_path)
    e.store(TOKENS, torch.arange(64))
    assert e.flush(timeout=30)
    key1 = e.chunk_keys(TOKENS)[1]
    good_shape = (2, 2, CHUNK, 32)
    raw = torch.randint(0, 256, (2 * 2 * CHUNK * 32 * 2,), dtype=torch.uint8)
    payload = (
        raw.view(torch.float16).view(good_shape)
        if what == "dtype"
        else raw.view(torch.bfloat16).view(2, 2, CHUNK // 2, 64)
    )
    store.write(key1, encode(key1, payload))
    dst = torch.arange(256, 320)
    fill_sentinel(caches, dst)
    assert e.retrieve(TOKENS, dst).num_retrieved == CHUNK
    assert is_sentinel(caches, dst[CHUNK:])
    assert _metric(e, "lmcache_rejected_chunks_total") == 1
    assert not store.exists(key1)


def test_corrupt_files_found_at_restart_are_removed_and_counted(make_engine, tmp_path):
    """The disk tier's index rebuild checks every file's header and length.

    A flipped header, a truncated file, a file whose header names another key, and leftover
    temporary files are deleted at start-up; intact files stay and verify.
    """
    caches = random_cache(26)
    disk = tmp_path / "disk"
    e = make_engine(caches, local_cpu=False, local_disk=str(disk))
    tokens = list(range(20_000, 20_000 + 8 * CHUNK))
    e.store(tokens, torch.arange(8 * CHUNK))
    assert e.flush(timeout=30)
    keys = e.chunk_keys(tokens)
    e.close()
    p = [disk / chunk_filename(k) for k in keys]
    data = p[5].read_bytes()
    p[5].write_bytes(data[:20] + bytes([data[20] ^ 1]) + data[21:])  # header checksum
    p[6].write_bytes(p[6].read_bytes()[:-7])  # truncated
    p[7].write_bytes(p[0].read_bytes())  # another key's header under this name
    (disk / f".{p[4].name}.tmp.123.deadbeef").write_bytes(data[:1000])  # torn write
    again = make_engine(caches, local_cpu=False, local_disk=str(disk))
    stats = again.storage.backend("LocalDiskBackend").stats()
    assert stats["checksum_failures"] == 3
    assert stats["num_chunks"] == 5
    assert sorted(x.name for x in disk.iterdir()) == sorted(x.name for x in p[:5])
    assert [_verify_file(x) for x in p[:5]] == keys[:5]
    assert again.lookup(tokens) == 5 * CHUNK
    dst = torch.arange(256, 256 + 8 * CHUNK)
    fill_sentinel(caches, dst)
    assert again.retrieve(tokens, dst).num_retrieved == 5 * CHUNK
    assert torch.equal(rows(caches, dst[: 5 * CHUNK]), rows(caches, torch.arange(5 * CHUNK)))
    assert is_sentinel(caches, dst[5 * CHUNK :])


# -- serve killed mid-write ------------------------------------------------------------------------

SERVE_SHAPE = [
    "--num-layers",
    "2",
    "--num-kv-heads",
    "8",
    "--head-size",
    "128",
    "--num-blocks",
    "128",
    "--block-size",
    "16",
]
SERVE_SLOTS = 128 * 16  # 2048 tokens = 8 chunks of 256 (2 MiB each)
SERVE_CHUNK = 256


@pytest.mark.slow
def test_serve_sigkilled_during_heavy_disk_writes(tmp_path):
    disk = tmp_path / "disk"
    cfg = tmp_path / "lmcache.yaml"
    cfg.write_text(f"local_disk: {json.dumps(str(disk))}\nmax_local_disk_size: 2\n")
    first = Served("--config", str(cfg), "--seed", "1", shape=SERVE_SHAPE)
    # NOTE: every request sent counts, answered or not: the disk writer writes a request's
    # chunks while its answer may still be on the way (or never come, after the kill).
    sent: list[int] = []
    stored: list[int] = []
    stop = threading.Event()
    failures: list[str] = []

    def writer(offset: int) -> None:
        start = offset
        with first.client(timeout=120) as c:
            while not stop.is_set():
                sent.append(start)
                try:
                    r = c.post(
                        "/cache/store", params={"tokens_mock": f"{start},{start + SERVE_SLOTS}"}
                    )
                except httpx.HTTPError:
                    return  # the server was killed
                if r.status_code != 200:
                    failures.append(r.text)
                    return
                stored.append(start)
                start += 7919  # next request: other tokens, same slots

    threads = [threading.Thread(target=writer, args=(o,)) for o in (0, 10_000_000)]
    for t in threads:
        t.start()
    tmp_seen = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        names = os.listdir(disk) if disk.exists() else []
        tmp_seen = sum(1 for n in names if is_temp_file(n))
        if len(names) >= 24 and tmp_seen:
            break
        time.sleep(0.001)
    first.proc.send_signal(signal.SIGKILL)
    first.kill()
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert failures == []
    before = sorted(os.listdir(disk))
    temp_before = [n for n in before if is_temp_file(n)]
    print(
        f"\nkilled with {len(before)} files on disk ({len(temp_before)} unfinished writes), "
        f"{len(sent)} store requests sent, {len(stored)} answered"
    )
    assert len(before) >= 8

    # Restart on the same directory, with a KV cache of other contents (seed 2).
    second = Served("--config", str(cfg), "--seed", "2", shape=SERVE_SHAPE)
    try:
        after = sorted(os.listdir(disk))
        assert not [n for n in after if is_temp_file(n)], after  # torn writes removed
        on_disk = {_verify_file(disk / n) for n in after}  # every remaining file verifies
        assert len(on_disk) == len(after) >= 8
        # Expected chunk bytes: slots of the seed-1 cache (independent reference MD5).
        seed1 = make_kv_caches(2, "flash_attn", 128, 16, 8, 128, torch.bfloat16, seed=1)
        _, expected = reference.kv_chunk_md5(
            list(seed1.values()), list(range(SERVE_SLOTS)), SERVE_CHUNK, "flash_attn"
        )
        starts = sorted(set(sent))
        keys_of = _serve_keys(cfg, starts)
        c = second.client(timeout=120)
        region = f"[0,{SERVE_SLOTS - 1}]"
        check = {"slot_mapping": region, "chunk_size": SERVE_CHUNK}
        before_any = c.get("/cache/kvcache/check", params=check).json()["chunk_checksums"]
        assert all(a != b for a, b in zip(before_any, expected, strict=True))  # seed 2 differs
        loaded_max = 0
        for start in starts:
            keys = keys_of[start]
            want = 0
            while want < len(keys) and keys[want] in on_disk:
                want += 1
            r = c.post("/cache/retrieve", params={"tokens_mock": f"{start},{start + SERVE_SLOTS}"})
            assert r.status_code == 200, r.text
            assert r.json()["num_retrieved"] == want * SERVE_CHUNK, (start, want)
            loaded_max = max(loaded_max, want)
        assert loaded_max >= 1, (starts, sorted(on_disk)[:4])
        now = c.get("/cache/kvcache/check", params=check).json()["chunk_checksums"]
        # Every chunk position a retrieve loaded holds exactly the bytes stored before the
        # kill (the seed-1 contents); the others still hold the seed-2 contents.
        assert now[:loaded_max] == expected[:loaded_max]
        assert now[loaded_max:] == before_any[loaded_max:]
        c.close()
    finally:
        code = second.stop()
    assert code == 0, second.logs()
    assert "Traceback" not in second.logs()


def _serve_keys(cfg_path: Path, starts: list[int]) -> dict[int, list[str]]:
    """Chunk keys of ``tokens_mock=start,start+SERVE_SLOTS`` as `serve` computes them."""
    config = LMCacheEngineConfig.load(str(cfg_path))
    metadata = EngineMetadata(
        model_name="lmcache-native/serve", world_size=1, worker_id=0, kv_dtype=torch.bfloat16
    )
    with CacheEngine(config, metadata, backends=[]) as engine:
        return {
            s: engine.chunk_keys(torch.arange(s, s + SERVE_SLOTS, dtype=torch.int64))
            for s in starts
        }


# -- disk full ------------------------------------------------------------------------------------


def test_disk_size_limit_evicts_cleanly_and_reads_keep_working(make_engine, tmp_path):
    caches = random_cache(27)
    disk = tmp_path / "disk"
    chunk_file_bytes = 2 * 2 * CHUNK * 32 * 2 + 200  # payload + header (bounded above)
    capacity_gb = 4.5 * chunk_file_bytes / 2**30
    e = make_engine(caches, local_cpu=False, local_disk=str(disk), max_local_disk_size=capacity_gb)
    disk_tier = e.storage.backend("LocalDiskBackend")
    tokens = list(range(30_000, 30_000 + 32 * CHUNK))  # 32 chunks, far beyond the capacity
    for n in range(CHUNK, 32 * CHUNK + 1, CHUNK):  # one new chunk per store
        e.store(tokens[:n], torch.arange(n))
        assert e.flush(timeout=30)
        s = disk_tier.stats()
        assert s["used_bytes"] <= s["capacity_bytes"]
        assert sum(f.stat().st_size for f in disk.iterdir()) == s["used_bytes"]
    s = disk_tier.stats()
    assert s["evictions"] >= 32 - 4
    assert s["num_chunks"] <= 4
    assert not [n for n in os.listdir(disk) if is_temp_file(n)]
    for f in disk.iterdir():
        _verify_file(f)
    # Reads keep working: every chunk still on disk is served byte-exact. (Keys are chained
    # to their prefix, whose first chunks were evicted, so read the tier itself.)
    keys = e.chunk_keys(tokens)
    present = [i for i, k in enumerate(keys) if disk_tier.contains(k)]
    assert present
    for i in present:
        buf = disk_tier.get(keys[i])
        assert buf is not None
        got = buf.tensor.contiguous().view(torch.uint8)
        want = rows(caches, torch.arange(i * CHUNK, (i + 1) * CHUNK))
        assert torch.equal(got, want)
        buf.unref()
    # A shrink at runtime evicts down to the new size; a chunk larger than the tier is refused.
    assert e.config.update({"max_local_disk_size": 1.5 * chunk_file_bytes / 2**30})[1] == {}
    assert disk_tier.stats()["num_chunks"] <= 1
    assert e.config.update({"max_local_disk_size": 100 / 2**30})[1] == {}
    rejected = disk_tier.stats()["rejected_puts"]
    e.store(list(range(40_000, 40_000 + CHUNK)), torch.arange(CHUNK))
    assert e.flush(timeout=30)
    assert disk_tier.stats()["rejected_puts"] == rejected + 1
    assert list(disk.iterdir()) == []


WRITE_LIMITED = r"""
import json, resource, signal, sys, torch
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails with EFBIG instead
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.path.insert(0, sys.argv[3])
from reliability_lib import CHUNK, LAYOUT, random_cache, rows, fill_sentinel, is_sentinel
from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.engine import CacheEngine, EngineMetadata
caches = random_cache(28)
cfg = LMCacheEngineConfig.from_defaults(chunk_size=CHUNK, local_disk=sys.argv[1],
                                        max_local_cpu_size=0.01)
e = CacheEngine(cfg, EngineMetadata(model_name="m", kv_dtype=torch.bfloat16))
e.register_kv_caches(caches, LAYOUT)
tokens = list(range(64))
out = {"stored": e.store(tokens, torch.arange(64)).num_stored_tokens}
out["flushed"] = e.flush(timeout=30)
out["disk"] = e.storage.backend("LocalDiskBackend").stats()
e.clear(["LocalCPUBackend"])
dst = torch.arange(256, 320)
fill_sentinel(caches, dst)
got = e.retrieve(tokens, dst).num_retrieved
out["retrieved"] = got
out["exact"] = bool(torch.equal(rows(caches, dst[:got]), rows(caches, torch.arange(got))))
out["rest_untouched"] = is_sentinel(caches, dst[got:])
e.close()
print(json.dumps(out))
"""


def test_disk_write_failures_are_refused_cleanly(tmp_path):
    """Writes that fail in the OS (RLIMIT_FSIZE: EFBIG.

    As a full disk's ENOSPC would) are counted errors, leave no partial or temporary files, and
    never break the caller.
    """
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            WRITE_LIMITED,
            str(disk),
            "1000",  # bytes: smaller than one chunk file
            str(Path(__file__).parent),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["stored"] == 64
    assert out["flushed"]  # the caller never saw the failures
    assert out["disk"]["errors"] == 4
    assert out["disk"]["rejected_puts"] == 4
    assert out["disk"]["num_chunks"] == 0
    assert out["disk"]["used_bytes"] == 0
    assert out["retrieved"] == 0
    assert out["rest_untouched"]
    assert os.listdir(disk) == []  # no torn or temporary files


def test_rlimit_fsize_is_enforced_here():
    """The fault above is real on this machine: a write past RLIMIT_FSIZE fails."""
    code = (
        "import resource, signal, tempfile\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (10, 10))\n"
        "f = tempfile.TemporaryFile()\n"
        "try:\n    f.write(b'x' * 100); f.flush(); print('wrote')\n"
        "except OSError as e:\n    print('errno', e.errno)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "errno 27", out  # EFBIG


# -- liveness under load ---------------------------------------------------------------------------


def test_clear_and_flush_return_while_stores_continue(make_engine, tmp_path):
    """``clear`` waits for the disk writes queued before it.

    Not for a moment when the write queue is empty: with producers that outpace the disk writer that
    moment never comes.
    """
    caches = random_cache(29)
    e = make_engine(
        caches,
        local_disk=str(tmp_path / "disk"),
        max_local_cpu_size=0.002,
        extra_config={"writer_queue_size": 8},
    )
    stop = threading.Event()
    errors: list[str] = []

    def producer(w: int) -> None:
        n = 0
        while not stop.is_set():
            base = 1_000_000 * (w + 1) + n * 64
            n += 1
            try:
                e.store(list(range(base, base + 64)), torch.arange(w * 64, w * 64 + 64))
            except Exception as exc:
                errors.append(repr(exc))
                return

    producers = [threading.Thread(target=producer, args=(w,)) for w in range(3)]
    for t in producers:
        t.start()
    try:
        time.sleep(0.5)  # the write queue is full by now
        done: dict[str, Any] = {}

        def clear_then_flush() -> None:
            done["cleared"] = e.clear()
            done["flushed"] = e.flush(timeout=60)

        t = threading.Thread(target=clear_then_flush)
        t.start()
        t.join(timeout=20)
        returned = not t.is_alive()
    finally:
        stop.set()
        for p in producers:
            p.join(timeout=60)
        t.join(timeout=60)
    assert errors == []
    assert returned, "clear()/flush() did not return within 20 s while stores continued"
    assert done["flushed"] is True
    assert set(done["cleared"]) == {"LocalCPUBackend", "LocalDiskBackend"}


class SlowDisk(LocalDiskBackend):
    """A real disk tier whose writes take 20 ms (a slow or busy disk)."""

    def put(self, key: str, buf: Any) -> bool:
        time.sleep(0.02)
        return super().put(key, buf)


def test_flush_returns_while_producers_outpace_the_writer(tmp_path):
    """With stores arriving faster than the disk tier writes, the write queue never empties.

    ``flush`` (and so ``clear``) must still return once the writes queued before it are done.
    """
    pool = ChunkBufferPool(64 << 20, pin_memory=False)
    disk = SlowDisk(tmp_path / "disk", 1 << 30, pool.allocate)
    manager = StorageManager([LocalCPUBackend(32 << 20), disk], pool, writer_queue_size=4)
    stop = threading.Event()

    def producer(w: int) -> None:
        n = 0
        while not stop.is_set():
            buf = pool.allocate((2, 2, CHUNK, 32), torch.bfloat16)
            assert buf is not None
            manager.put(f"m@1@0@{w:02d}{n:08x}@bfloat16", buf)
            buf.unref()
            n += 1
            time.sleep(0.002)

    producers = [threading.Thread(target=producer, args=(w,)) for w in range(3)]
    for t in producers:
        t.start()
    try:
        time.sleep(0.3)
        assert manager.pending_writes() >= 1
        t0 = time.monotonic()
        flushed = manager.flush(timeout=15)
        cleared = manager.clear(["LocalDiskBackend"])
        waited = time.monotonic() - t0
    finally:
        stop.set()
        for t in producers:
            t.join(timeout=30)
        manager.close()
    assert flushed, "flush() timed out while stores continued"
    assert "LocalDiskBackend" in cleared
    print(f"\nflush + clear under a steady store stream: {waited:.2f}s")
