"""The scheduler's lookup answers from the tiers' indexes, and repeats come from a short cache.

The worker side runs on a real engine (CPU tier over a disk tier, or over a real redis-server).
A lookup of chunks that only a lower tier holds reads no payload: no tier hit is counted, the
CPU tier is not filled, Redis serves no GET; the load fetches them afterwards, and a chunk that
then fails (a corrupted file) is reported to vLLM as blocks to recompute. The scheduler side
reuses a waiting request's answer (same request id and prompt length) until its TTL, its
release or its end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
import vllm_testlib as vt

pytest.importorskip("vllm")

from lmcache_native.engine import CacheEngine
from lmcache_native.integration.vllm import metadata as md
from lmcache_native.integration.vllm.worker import WorkerSide
from lmcache_native.storage.serde import chunk_filename

pytestmark = pytest.mark.vllm

NUM_BLOCKS, HEADS, BLOCK, HEAD, CHUNK = 40, 2, 32, 16, 64
PROMPT = list(range(7000, 7128))  # 2 chunks
BLOCKS = [1, 2, 3, 4]
CPU = "LocalCPUBackend"


def _worker(**cfg: Any) -> WorkerSide:
    worker, _ = vt.unit_worker("lookup-path", NUM_BLOCKS, 5, **cfg)
    return worker


def _store_then_drop_cpu(worker: WorkerSide) -> CacheEngine:
    engine = worker.engine
    assert engine is not None
    save = md.SaveSpec("s", PROMPT, BLOCKS, num_prompt_tokens=len(PROMPT))
    worker.wait_for_save(md.LMCacheNativeConnectorMetadata(saves=[save]))
    assert engine.flush(timeout=30)
    engine.clear([CPU])
    assert engine.storage.stats()[CPU]["num_chunks"] == 0
    return engine


def _load(worker: WorkerSide, req_id: str) -> tuple[int, set[int]]:
    before = worker.stats.loaded_tokens
    spec = md.LoadSpec(req_id, PROMPT, [10, 11, 12, 13], start=0, end=127)
    worker.start_load_kv(md.LMCacheNativeConnectorMetadata(loads=[spec]))
    return worker.stats.loaded_tokens - before, worker.take_load_errors()


def _tier_hits(engine: CacheEngine, tier: str) -> int:
    return int(engine.storage.stats()[tier]["hits"])


def test_disk_only_chunks_are_reported_without_reading_them(tmp_path: Path) -> None:
    worker = _worker(local_disk=str(tmp_path / "disk"))
    engine = _store_then_drop_cpu(worker)
    disk_hits = _tier_hits(engine, "LocalDiskBackend")
    assert worker.lookup("r1", PROMPT) == (128, 0)
    assert _tier_hits(engine, "LocalDiskBackend") == disk_hits  # no payload read
    assert engine.storage.stats()[CPU]["num_chunks"] == 0  # nothing promoted
    assert _load(worker, "r1") == (127, set())  # the load fetched them
    assert _tier_hits(engine, "LocalDiskBackend") == disk_hits + 2
    assert engine.storage.stats()[CPU]["num_chunks"] == 2
    worker.close()


def test_a_listed_chunk_that_fails_to_load_is_reported_to_vllm(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    worker = _worker(local_disk=str(disk))
    engine = _store_then_drop_cpu(worker)
    second = engine.chunk_keys(PROMPT)[1]
    path = next(disk.rglob(chunk_filename(second)))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # a payload byte flipped: the checksum fails on read
    path.write_bytes(bytes(data))
    assert worker.lookup("r1", PROMPT) == (128, 0)  # the index lists it
    loaded, errors = _load(worker, "r1")
    assert loaded == 64  # the first chunk
    assert errors == {12, 13}  # the second chunk's blocks: vLLM recomputes them
    worker.close()


def test_cpu_tier_chunks_are_held_by_the_lookup(tmp_path: Path) -> None:
    worker = _worker(local_disk=str(tmp_path / "disk"))
    engine = worker.engine
    assert engine is not None
    save = md.SaveSpec("s", PROMPT, BLOCKS, num_prompt_tokens=len(PROMPT))
    worker.wait_for_save(md.LMCacheNativeConnectorMetadata(saves=[save]))
    assert engine.flush(timeout=30)  # the disk writer let its references go
    cpu = engine.storage.cpu
    assert cpu is not None
    assert worker.lookup("r1", PROMPT) == (128, 0)
    for key in engine.chunk_keys(PROMPT):
        buf = cpu.get(key)
        assert buf is not None
        assert buf.refcount == 3  # the tier, the lease, this read
        buf.unref()
    worker.finished({"r1"})
    assert worker.leased_requests == []
    worker.close()


def test_redis_only_chunks_answered_by_existence_queries(redis_url: str) -> None:
    worker = _worker(remote_url=redis_url)
    _store_then_drop_cpu(worker)
    client = redis.Redis.from_url(redis_url)

    def calls(cmd: str) -> int:
        stats = client.info("commandstats").get(f"cmdstat_{cmd}")
        return int(stats["calls"]) if stats else 0

    gets, exists = calls("get"), calls("exists")
    assert worker.lookup("r1", PROMPT) == (128, 0)
    assert calls("get") == gets  # no payload read
    assert calls("exists") > exists
    assert _load(worker, "r1") == (127, set())
    assert calls("get") > gets
    client.close()
    worker.close()


class _Store:
    def __init__(self) -> None:
        self.hit = 0
        self.asked = 0

    def __call__(self, req_id: str, tokens: list[int], extras: Any) -> tuple[int, int]:  # noqa: ARG002
        # (the lookup server's callback signature)
        self.asked += 1
        return min(self.hit, len(tokens)), 0


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("LMCACHE_NATIVE_LOOKUP_DIR", str(tmp_path))
    store = _Store()
    with vt.lookup_scheduler("lookup-cache", store, lookup_cache_secs=2) as s:
        clock = _Clock()
        s.clock = clock
        yield s, store, clock


def test_a_waiting_request_is_answered_from_the_cache(side: Any) -> None:
    s, store, clock = side
    store.hit = 192
    req = vt.request("a", list(range(200)))
    for _ in range(3):  # vLLM asks every step while the request waits for blocks
        assert s.get_num_new_matched_tokens(req, 0) == 192
    assert store.asked == 1
    assert s.stats.cached_lookups == 2
    store.hit = 64  # what the workers hold changed: the cache still answers until its TTL
    assert s.get_num_new_matched_tokens(req, 0) == 192
    clock.now += 2.5
    assert s.get_num_new_matched_tokens(req, 0) == 64
    assert store.asked == 2


def test_the_cache_is_keyed_by_request_and_length_and_dropped_at_the_end(side: Any) -> None:
    s, store, _ = side
    store.hit = 192
    assert s.get_num_new_matched_tokens(vt.request("a", list(range(200))), 0) == 192
    assert s.get_num_new_matched_tokens(vt.request("b", list(range(200))), 0) == 192
    assert store.asked == 2  # another request asks again
    assert s.get_num_new_matched_tokens(vt.request("a", list(range(150))), 0) == 149
    assert store.asked == 3  # another length asks again
    s.request_finished(vt.request("a", list(range(150))))
    assert s.get_num_new_matched_tokens(vt.request("a", list(range(150))), 0) == 149
    assert store.asked == 4  # finished: forgotten


def test_a_lookup_whose_lease_is_released_is_not_reused(side: Any) -> None:
    s, store, _ = side
    store.hit = 64
    req = vt.request("a", list(range(200)))
    assert s.get_num_new_matched_tokens(req, 64) == 0  # vLLM holds it all: the lease goes
    assert s.get_num_new_matched_tokens(req, 64) == 0
    assert store.asked == 2
