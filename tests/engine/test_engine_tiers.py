"""The engine over real tiers: each tier alone, promotion, corruption, Redis down, concurrency."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
import redis
import torch
from lmcache_native.storage.serde import chunk_filename

from tests.engine.conftest import MakeEngine, random_cache, read_rows, same_bytes

TOKENS = list(range(5000, 5064))  # 4 chunks


def tier_config(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict:
    if kind == "LocalCPUBackend":
        return {}
    if kind == "LocalDiskBackend":
        return {"local_cpu": False, "local_disk": str(tmp_path / "disk")}
    if kind == "RemoteBackend-redis":
        return {"local_cpu": False, "remote_url": request.getfixturevalue("redis_url")}
    if kind == "RemoteBackend-fs":
        return {"local_cpu": False, "remote_url": f"fs://{tmp_path / 'fs'}"}
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["LocalCPUBackend", "LocalDiskBackend", "RemoteBackend-redis", "RemoteBackend-fs"]
)
def test_prefix_retrieved_bit_identically_from_each_tier_alone(
    kind: str, make_engine: MakeEngine, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    caches = random_cache(11)
    e = make_engine(caches, **tier_config(kind, tmp_path, request))
    tier = kind.split("-")[0]
    assert e.all_backends() == [tier]
    src = torch.arange(0, 64)
    expected = read_rows(caches, src)
    assert e.store(TOKENS, src).num_stored_tokens == 64
    assert e.flush(timeout=30)
    dst = torch.arange(320, 384)
    before = read_rows(caches, dst)
    assert not same_bytes(before, expected)
    rr = e.retrieve(TOKENS, dst)
    assert rr.num_retrieved == 64
    assert same_bytes(read_rows(caches, dst), expected)
    assert e.metrics.value("lmcache_hit_chunks_total", {"tier": tier}) == 4


def test_disk_hit_is_promoted_into_cpu(make_engine: MakeEngine, tmp_path: Path) -> None:
    caches = random_cache(12)
    e = make_engine(caches, local_disk=str(tmp_path / "disk"))
    e.store(TOKENS, torch.arange(64))
    e.flush()
    e.clear(["LocalCPUBackend"])
    assert e.retrieve(TOKENS, torch.arange(64, 128)).num_retrieved == 64
    assert e.metrics.value("lmcache_hit_chunks_total", {"tier": "LocalDiskBackend"}) == 4
    assert e.storage.stats()["LocalCPUBackend"]["num_chunks"] == 4
    assert e.retrieve(TOKENS, torch.arange(64, 128)).num_retrieved == 64
    assert e.metrics.value("lmcache_hit_chunks_total", {"tier": "LocalCPUBackend"}) == 4


def test_disk_index_survives_engine_restart(make_engine: MakeEngine, tmp_path: Path) -> None:
    caches = random_cache(13)
    e = make_engine(caches, local_cpu=False, local_disk=str(tmp_path / "disk"))
    e.store(TOKENS, torch.arange(64))
    e.close()
    again = make_engine(caches, local_cpu=False, local_disk=str(tmp_path / "disk"))
    assert again.lookup(TOKENS) == 64
    dst = torch.arange(200, 264)
    assert again.retrieve(TOKENS, dst).num_retrieved == 64
    assert same_bytes(read_rows(caches, dst), read_rows(caches, torch.arange(64)))


def test_flipped_byte_on_disk_never_reaches_the_cache(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    caches = random_cache(14)
    e = make_engine(caches, local_cpu=False, local_disk=str(tmp_path / "disk"))
    e.store(TOKENS, torch.arange(64))
    e.flush()
    key1 = e.chunk_keys(TOKENS)[1]
    path = tmp_path / "disk" / chunk_filename(key1)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01
    path.write_bytes(bytes(data))
    dst = torch.arange(256, 320)
    before = read_rows(caches, dst)
    rr = e.retrieve(TOKENS, dst)
    assert rr.num_retrieved == 16  # chunk 0 only
    after = read_rows(caches, dst)
    assert same_bytes(after[:, :, :16], read_rows(caches, torch.arange(16)))
    assert same_bytes(after[:, :, 16:], before[:, :, 16:])
    assert e.metrics.value("lmcache_checksum_failures_total", {"tier": "LocalDiskBackend"}) == 1
    assert not path.exists()


def test_flipped_byte_in_redis_never_reaches_the_cache(
    make_engine: MakeEngine, redis_url: str
) -> None:
    caches = random_cache(15)
    e = make_engine(caches, local_cpu=False, remote_url=redis_url)
    e.store(TOKENS, torch.arange(64))
    e.flush()
    key0 = e.chunk_keys(TOKENS)[0]
    client = redis.Redis.from_url(redis_url)
    value = bytearray(client.get(key0))
    value[len(value) // 2] ^= 0x40
    client.set(key0, bytes(value))
    dst = torch.arange(256, 320)
    before = read_rows(caches, dst)
    assert e.retrieve(TOKENS, dst).num_retrieved == 0
    assert same_bytes(read_rows(caches, dst), before)
    assert e.metrics.value("lmcache_checksum_failures_total", {"tier": "RemoteBackend"}) == 1
    assert client.exists(key0) == 0
    client.close()


def test_redis_stopped_mid_test_then_restarted(make_engine: MakeEngine, redis_server) -> None:
    redis_server.start()
    caches = random_cache(16)
    e = make_engine(caches, local_cpu=False, remote_url=redis_server.url, blocking_timeout_secs=2)
    e.clear()
    assert e.store(TOKENS[:32], torch.arange(32)).num_stored_tokens == 32
    e.flush()
    redis_server.stop()
    try:
        assert e.lookup(TOKENS) == 0
        assert e.retrieve(TOKENS, torch.arange(100, 164)).num_retrieved == 0
        e.store(TOKENS, torch.arange(64))  # queued; the writer gets an error, not the caller
        assert e.flush(timeout=30)
        assert e.metrics.value("lmcache_tier_errors_total", {"tier": "RemoteBackend"}) >= 1
    finally:
        redis_server.start()
    deadline = 50
    while e.storage.backend("RemoteBackend").is_down and deadline:  # retry interval 0.2 s
        threading.Event().wait(0.05)
        deadline -= 1
    assert e.lookup(TOKENS) == 0  # the server restarted empty (no persistence)
    assert e.store(TOKENS, torch.arange(64)).num_stored_tokens == 64
    e.flush()
    dst = torch.arange(200, 264)
    assert e.retrieve(TOKENS, dst).num_retrieved == 64
    assert same_bytes(read_rows(caches, dst), read_rows(caches, torch.arange(64)))


def test_blocking_timeout_change_reaches_redis(make_engine: MakeEngine, redis_url: str) -> None:
    e = make_engine(remote_url=redis_url)
    assert e.config.update({"blocking_timeout_secs": 3})[1] == {}
    remote = e.storage.backend("RemoteBackend")
    assert remote._store._client.connection_pool.connection_kwargs["socket_timeout"] == 3.0


def test_concurrent_store_retrieve_clear_are_byte_identical(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    caches = random_cache(17)
    # Workers 0 and 1 share a token prefix, so their source rows must hold the same KV.
    src_of = {w: torch.arange(w * 64, w * 64 + 64) for w in range(3)}
    dst_of = {w: torch.arange(256 + w * 64, 256 + w * 64 + 64) for w in range(3)}
    shared = read_rows(caches, src_of[0])
    from lmcache_native import ops

    ops.paged_kv_scatter(shared, list(caches.values()), src_of[1], "flash_attn")
    tokens_of = {0: list(range(64)), 1: list(range(64)), 2: list(range(7000, 7064))}
    expected = {w: read_rows(caches, src_of[w]) for w in range(3)}
    e = make_engine(
        caches, local_disk=str(tmp_path / "disk"), max_local_cpu_size=0.00002
    )  # ~5 chunks
    errors: list[str] = []
    stop = threading.Event()
    sentinel = torch.full_like(expected[0].view(torch.uint8), 0xA5).view(expected[0].dtype)

    def worker(w: int) -> None:
        rng = random.Random(w)
        for _ in range(25):
            n = rng.choice([16, 32, 48, 64])
            e.store(tokens_of[w][:n], src_of[w][:n])
            ops.paged_kv_scatter(sentinel, list(caches.values()), dst_of[w], "flash_attn")
            rr = e.retrieve(tokens_of[w], dst_of[w])
            got = read_rows(caches, dst_of[w])
            k = rr.num_retrieved
            if k % 16 or not bool(rr.mask[:k].all()) or bool(rr.mask[k:].any()):
                errors.append(f"worker {w}: mask not a chunk prefix ({k})")
            if not same_bytes(got[:, :, :k], expected[w][:, :, :k]):
                errors.append(f"worker {w}: retrieved bytes differ")
            if not same_bytes(got[:, :, k:], sentinel[:, :, k:]):
                errors.append(f"worker {w}: rows beyond the loaded prefix were written")

    def clearer() -> None:
        rng = random.Random(99)
        while not stop.is_set():
            e.clear(rng.choice([None, ["LocalCPUBackend"], ["LocalDiskBackend"]]))
            stop.wait(0.005)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(3)]
    c = threading.Thread(target=clearer)
    c.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    c.join()
    assert errors == []
    assert e.metrics.value("lmcache_requests_total", {"op": "retrieve"}) == 75
    e.flush()
    assert e.pool.used_bytes == e.storage.stats()["LocalCPUBackend"]["used_bytes"]
