"""RemoteBackend: Redis corruption, Redis down then back, namespaces; fs:// corruption."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import torch
from lmcache_native.engine.memory import ChunkBufferPool
from lmcache_native.storage import RemoteBackend
from lmcache_native.storage.serde import chunk_filename

from tests.storage import conftest
from tests.storage.conftest import CHUNK_SHAPE, MakeChunk, key_of, random_bits, same_bytes


@pytest.fixture
def redis_with_one(
    redis_url: str, pool: ChunkBufferPool, make_chunk: MakeChunk
) -> Iterator[tuple[RemoteBackend, redis.Redis]]:
    """A Redis tier holding chunk 1, and a plain client of the same server."""
    tier = RemoteBackend(redis_url, pool.allocate, timeout_secs=2)
    conftest.put_chunks(tier, make_chunk, 1)
    client = redis.Redis.from_url(redis_url)
    yield tier, client
    client.close()


def test_flipped_byte_in_redis_is_a_miss_and_a_counter(
    redis_with_one: tuple[RemoteBackend, redis.Redis], pool: ChunkBufferPool
) -> None:
    tier, client = redis_with_one
    value = bytearray(client.get(key_of(1)))
    value[-5] ^= 0x04
    client.set(key_of(1), bytes(value))
    assert tier.get(key_of(1)) is None
    st = tier.stats()
    assert st["checksum_failures"] == 1
    assert st["misses"] == 1
    assert st["errors"] == 0
    assert client.exists(key_of(1)) == 0  # deleted
    assert pool.used_bytes == 0


def test_redis_value_of_another_key_is_rejected(
    redis_with_one: tuple[RemoteBackend, redis.Redis],
) -> None:
    tier, client = redis_with_one
    client.set(key_of(2), client.get(key_of(1)))
    assert tier.get(key_of(2)) is None
    assert tier.stats()["checksum_failures"] == 1


def test_redis_down_is_misses_and_errors_then_recovers(
    redis_server, pool: ChunkBufferPool, make_chunk: MakeChunk
) -> None:
    redis_server.start()
    tier = RemoteBackend(redis_server.url, pool.allocate, timeout_secs=1, retry_interval_secs=0.2)
    tier.clear()
    conftest.put_chunks(tier, make_chunk, 1)
    redis_server.stop()
    try:
        b = make_chunk(2)
        # no exception reaches the caller: a miss, a refused put, counted errors
        assert tier.get(key_of(1)) is None
        assert tier.put(key_of(2), b) is False
        assert tier.contains(key_of(1)) is False
        assert tier.batched_contains([key_of(1), key_of(2)]) == [False, False]
        assert tier.clear() == 0
        b.unref()
        st = tier.stats()
        assert st["errors"] >= 1
        assert st["misses"] >= 1
        assert st["hits"] == 0
        assert tier.is_down
    finally:
        redis_server.start()
    time.sleep(0.25)  # past retry_interval_secs
    conftest.put_chunks(tier, make_chunk, 3)  # used again after recovery
    got = tier.get(key_of(3))
    assert got is not None
    assert same_bytes(got.tensor, random_bits(CHUNK_SHAPE, torch.bfloat16, 3))
    got.unref()
    assert not tier.is_down
    tier.clear()
    tier.close()


def test_clear_touches_only_its_namespace(
    redis_url: str, tmp_path: Path, pool: ChunkBufferPool, make_chunk: MakeChunk
) -> None:
    for url in (redis_url, f"fs://{tmp_path}"):
        mine = RemoteBackend(url, pool.allocate, namespace="test-model@1@0@")
        other = RemoteBackend(url, pool.allocate, namespace="other@1@0@")
        conftest.put_chunks(mine, make_chunk, 1)
        b = make_chunk(2)
        assert other.put("other@1@0@00ff@bfloat16", b)
        b.unref()
        assert mine.keys() == [key_of(1)]
        assert mine.clear() == 1
        assert other.contains("other@1@0@00ff@bfloat16")
        assert other.clear() == 1
        mine.close()
        other.close()


def test_fs_flipped_byte_is_a_miss_and_a_counter(
    tmp_path: Path, pool: ChunkBufferPool, make_chunk: MakeChunk
) -> None:
    tier = RemoteBackend(f"fs://{tmp_path}", pool.allocate)
    conftest.put_chunks(tier, make_chunk, 5)
    path = tmp_path / chunk_filename(key_of(5))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert tier.get(key_of(5)) is None
    assert tier.stats()["checksum_failures"] == 1
    assert not path.exists()


def test_timeout_change_reaches_the_client(
    redis_url: str, pool: ChunkBufferPool, make_chunk: MakeChunk
) -> None:
    tier = RemoteBackend(redis_url, pool.allocate, timeout_secs=5)
    tier.set_timeout(2)
    kwargs = tier._store._client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 2
    assert kwargs["socket_connect_timeout"] == 2
    conftest.put_chunks(tier, make_chunk, 1)  # still works on the new client
    assert tier.contains(key_of(1))
    tier.close()
