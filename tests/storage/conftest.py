"""Fixtures for the storage tests: a buffer pool, seeded chunks, and every tier."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TypeVar

import pytest
import torch
from lmcache_native.engine.memory import ChunkBuffer, ChunkBufferPool
from lmcache_native.storage import LocalCPUBackend, LocalDiskBackend, RemoteBackend, StorageBackend

from tests.redis_servers import RedisClusterServers, SentinelServers, require_binaries

# 2 kv x 2 layers x 16 tokens x (2 heads * 16) bf16 = 4 KiB per chunk.
CHUNK_SHAPE = (2, 2, 16, 32)
NAMESPACE = "test-model@1@0@"


def random_bits(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Seeded random bit patterns viewed as ``dtype`` (NaN/Inf patterns included)."""
    g = torch.Generator().manual_seed(seed)
    elem = torch.empty((), dtype=dtype).element_size()
    n = 1
    for s in shape:
        n *= s
    raw = torch.randint(0, 256, (n * elem,), dtype=torch.uint8, generator=g)
    return raw.view(dtype).view(shape)


def key_of(i: int) -> str:
    return f"{NAMESPACE}{i:016x}@bfloat16"


def put_chunks(tier: StorageBackend, make_chunk: MakeChunk, *ids: int) -> None:
    """Puts chunk ``i`` under ``key_of(i)`` for each id; the tier must accept each."""
    for i in ids:
        b = make_chunk(i)
        assert tier.put(key_of(i), b)
        b.unref()


@pytest.fixture
def pool() -> ChunkBufferPool:
    return ChunkBufferPool(64 << 20, pin_memory=False)


T = TypeVar("T")
MakeChunk = Callable[..., ChunkBuffer]


@pytest.fixture
def make_chunk(pool: ChunkBufferPool) -> MakeChunk:
    """``make_chunk(seed, shape=CHUNK_SHAPE, dtype=bfloat16)`` -> a filled pooled buffer."""

    def make(
        seed: int, shape: tuple[int, ...] = CHUNK_SHAPE, dtype: torch.dtype = torch.bfloat16
    ) -> ChunkBuffer:
        buf = pool.allocate(shape, dtype)
        assert buf is not None
        buf.tensor.copy_(random_bits(shape, dtype, seed))
        return buf

    return make


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))
    )


TIERS = [
    "cpu",
    "disk",
    "redis",
    "fs",
    pytest.param("redis-cluster", marks=pytest.mark.redis),
    pytest.param("redis-sentinel", marks=pytest.mark.redis),
    pytest.param("valkey", marks=pytest.mark.redis),
]


def build_tier(
    kind: str, tmp_path: Path, pool: ChunkBufferPool, request: pytest.FixtureRequest
) -> StorageBackend:
    if kind == "cpu":
        return LocalCPUBackend(16 << 20)
    if kind == "disk":
        return LocalDiskBackend(tmp_path / "disk", 16 << 20, pool.allocate)
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        return RemoteBackend(url, pool.allocate, timeout_secs=2, namespace=NAMESPACE)
    if kind == "fs":
        return RemoteBackend(f"fs://{tmp_path / 'fs'}", pool.allocate, namespace=NAMESPACE)
    if kind == "redis-cluster":
        url = request.getfixturevalue("redis_cluster_url")
        return RemoteBackend(url, pool.allocate, timeout_secs=2, namespace=NAMESPACE)
    if kind == "redis-sentinel":
        url = request.getfixturevalue("redis_sentinel_url")
        return RemoteBackend(url, pool.allocate, timeout_secs=2, namespace=NAMESPACE)
    if kind == "valkey":
        url = request.getfixturevalue("redis_url").replace("redis://", "valkey://", 1)
        return RemoteBackend(url, pool.allocate, timeout_secs=2, namespace=NAMESPACE)
    raise AssertionError(kind)


@pytest.fixture(params=TIERS)
def tier(
    request: pytest.FixtureRequest, tmp_path: Path, pool: ChunkBufferPool
) -> Iterator[StorageBackend]:
    backend = build_tier(request.param, tmp_path, pool, request)
    yield backend
    backend.clear()
    backend.close()


# -- real Redis Cluster and Sentinel topologies (tests/redis_servers.py) ------------------------


def _started(
    topology: Callable[[Path], AbstractContextManager[T]],
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
) -> Iterator[T]:
    """``topology`` started in a new directory ``name`` for the session, stopped after."""
    require_binaries()
    with topology(tmp_path_factory.mktemp(name)) as servers:
        yield servers


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A session-wide 3-master Redis Cluster; a test that kills a node must ``restart()`` it."""
    yield from _started(RedisClusterServers, tmp_path_factory, "redis-cluster")


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterServers) -> str:
    """``redis-cluster://`` URL of the running cluster, every node emptied."""
    redis_cluster.flushall()
    return redis_cluster.url()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelServers]:
    """A session-wide master + replica + 3 Sentinels (never failed over; see the failover test)."""
    yield from _started(SentinelServers, tmp_path_factory, "redis-sentinel")


@pytest.fixture
def redis_sentinel_url(redis_sentinel: SentinelServers) -> str:
    """``redis-sentinel://`` URL of the Sentinels (default master name), master emptied."""
    c = redis_sentinel.master.client()
    try:
        c.flushall()
    finally:
        c.close()
    return redis_sentinel.url()
