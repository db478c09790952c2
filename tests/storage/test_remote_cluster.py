"""RemoteBackend on a real 3-master Redis Cluster.

Slots, per-node batches, MOVED, node loss, ``valkey://`` in cluster mode, and two ``serve``
processes sharing chunks through the cluster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from lmcache_native.engine.memory import ChunkBufferPool
from lmcache_native.storage import RemoteBackend

from tests.redis_servers import RedisClusterServers
from tests.serve_testlib import wait_for_match
from tests.storage.conftest import NAMESPACE, MakeChunk, key_of, same_bytes

pytestmark = pytest.mark.redis

N_KEYS = 24


@pytest.fixture
def cluster_backend(redis_cluster_url: str, pool: ChunkBufferPool) -> Iterator[RemoteBackend]:
    backend = RemoteBackend(
        redis_cluster_url,
        pool.allocate,
        timeout_secs=2,
        namespace=NAMESPACE,
        retry_interval_secs=0.5,
    )
    yield backend
    backend.close()


def _fill(
    backend: RemoteBackend, make_chunk: MakeChunk, n: int = N_KEYS
) -> dict[int, torch.Tensor]:
    expected = {}
    for i in range(n):
        buf = make_chunk(i)
        expected[i] = buf.tensor.clone()
        assert backend.put(key_of(i), buf) is True
        buf.unref()
    return expected


def _node_of(redis_cluster: RedisClusterServers) -> dict[str, int]:
    """Key -> index of the node holding it, read from the servers themselves."""
    out = {}
    for idx, port in enumerate(redis_cluster.ports):
        for k in redis_cluster.keys_per_node()[port]:
            out[k.decode()] = idx
    return out


def test_keys_spread_over_every_master(
    cluster_backend: RemoteBackend, redis_cluster: RedisClusterServers, make_chunk: MakeChunk
) -> None:
    _fill(cluster_backend, make_chunk)
    per_node = redis_cluster.keys_per_node()
    assert sum(len(v) for v in per_node.values()) == N_KEYS
    assert sum(1 for v in per_node.values() if v) >= 2
    assert sorted(cluster_backend.keys()) == sorted(key_of(i) for i in range(N_KEYS))


def test_batched_contains_and_get_across_nodes(
    cluster_backend: RemoteBackend, redis_cluster: RedisClusterServers, make_chunk: MakeChunk
) -> None:
    expected = _fill(cluster_backend, make_chunk)
    keys = [key_of(i) for i in range(N_KEYS)] + [key_of(1000 + i) for i in range(6)]
    assert len(set(_node_of(redis_cluster).values())) >= 2
    assert cluster_backend.batched_contains(keys) == [True] * N_KEYS + [False] * 6
    got = cluster_backend.batched_get(keys)
    assert all(g is None for g in got[N_KEYS:])
    for i in range(N_KEYS):
        g = got[i]
        assert g is not None
        assert same_bytes(g.tensor, expected[i])
        g.unref()
    st = cluster_backend.stats()
    assert st["hits"] == N_KEYS
    assert st["misses"] == 6
    assert st["errors"] == 0


@pytest.mark.usefixtures("redis_cluster")
def test_moved_reply_is_followed(cluster_backend: RemoteBackend, make_chunk: MakeChunk) -> None:
    """A stale slot map (as after resharding) sends the batch to the wrong node.

    The MOVED answer of the real server is followed and the chunk is still found.
    """
    expected = _fill(cluster_backend, make_chunk, 4)
    cluster = cluster_backend._store._cluster()
    key = key_of(2)
    slot = cluster.keyslot(key)
    owner = cluster.nodes_manager.slots_cache[slot][0]
    wrong = next(n for n in cluster.get_primaries() if n.name != owner.name)
    cluster.nodes_manager.slots_cache[slot] = [wrong]
    assert cluster_backend.batched_contains([key]) == [True]
    # redis-py took the MOVED answer and put the real owner back in its slot map.
    assert cluster.nodes_manager.slots_cache[slot][0].name == owner.name
    cluster.nodes_manager.slots_cache[slot] = [wrong]
    got = cluster_backend.get(key)
    assert got is not None
    assert same_bytes(got.tensor, expected[2])
    got.unref()
    assert cluster_backend.stats()["errors"] == 0


@pytest.mark.slow
def test_a_killed_node_is_a_miss_for_its_keys_only(
    cluster_backend: RemoteBackend, redis_cluster: RedisClusterServers, make_chunk: MakeChunk
) -> None:
    expected = _fill(cluster_backend, make_chunk)
    where = _node_of(redis_cluster)
    victim = where[key_of(0)]
    lost = {i for i in range(N_KEYS) if where[key_of(i)] == victim}
    kept = set(range(N_KEYS)) - lost
    assert lost
    assert kept
    redis_cluster.nodes[victim].kill()
    try:
        keys = [key_of(i) for i in range(N_KEYS)]
        for _ in range(2):  # the failing call, then the call that skips the down node
            assert cluster_backend.batched_contains(keys) == [i in kept for i in range(N_KEYS)]
            got = cluster_backend.batched_get(keys)
            for i, g in enumerate(got):
                if i in lost:
                    assert g is None
                else:
                    assert g is not None
                    assert same_bytes(g.tensor, expected[i])
                    g.unref()
            for i in sorted(lost)[:2]:
                assert cluster_backend.get(key_of(i)) is None
            for i in sorted(kept)[:2]:
                g = cluster_backend.get(key_of(i))
                assert g is not None
                assert same_bytes(g.tensor, expected[i])
                g.unref()
        # A put to the lost node is refused (a miss), a put elsewhere is stored.
        b = make_chunk(99)
        assert cluster_backend.put(key_of(min(lost)), b) is False
        assert cluster_backend.put(key_of(min(kept)), b) is True
        b.unref()
        st = cluster_backend.stats()
        assert st["errors"] >= 1
        assert st["nodes_down"] == 1
        assert cluster_backend.is_down is False
        assert sorted(cluster_backend.keys()) == sorted(key_of(i) for i in kept)
    finally:
        redis_cluster.restart(victim)
    # The node is back (empty: no persistence); after the retry interval it is used again.
    time.sleep(0.6)
    b = make_chunk(5)
    assert cluster_backend.put(key_of(min(lost)), b) is True
    b.unref()
    assert cluster_backend.contains(key_of(min(lost)))
    assert cluster_backend.stats()["nodes_down"] == 0


def test_valkey_url_in_cluster_mode(
    redis_cluster: RedisClusterServers, pool: ChunkBufferPool, make_chunk: MakeChunk
) -> None:
    redis_cluster.flushall()
    url = redis_cluster.url(scheme="valkey://")
    backend = RemoteBackend(
        url,
        pool.allocate,
        timeout_secs=2,
        namespace=NAMESPACE,
        extra_config={"valkey_mode": "cluster"},
    )
    try:
        assert backend.spec.kind == "cluster"
        expected = _fill(backend, make_chunk, 8)
        assert sum(1 for v in redis_cluster.keys_per_node().values() if v) >= 2
        assert backend.batched_contains([key_of(i) for i in range(9)]) == [True] * 8 + [False]
        got = backend.get(key_of(7))
        assert got is not None
        assert same_bytes(got.tensor, expected[7])
        got.unref()
        assert backend.clear() == 8
        assert redis_cluster.keys_per_node() == {p: [] for p in redis_cluster.ports}
    finally:
        backend.close()
    with pytest.raises(ValueError, match="valkey_mode"):
        RemoteBackend(url, pool.allocate)  # several hosts without cluster mode


def test_wrong_password_is_an_error_without_the_password(
    redis_cluster: RedisClusterServers, pool: ChunkBufferPool, caplog: pytest.LogCaptureFixture
) -> None:
    """The servers have no password: AUTH fails, the tier answers misses.

    The password appears in no log line.
    """
    url = redis_cluster.url(userinfo="alice:s3cr3t-pw@")
    backend = RemoteBackend(url, pool.allocate, timeout_secs=2, namespace=NAMESPACE)
    try:
        with caplog.at_level("WARNING"):
            assert backend.contains(key_of(1)) is False
        assert backend.stats()["errors"] >= 1
        assert "s3cr3t-pw" not in caplog.text
        assert "alice:***@" in caplog.text
    finally:
        backend.close()


# -- two serve processes sharing the cluster ------------------------------------------------

SCRIPT = Path(sys.executable).with_name("lmcache-native")
SHAPE = ["--num-layers", "2", "--num-kv-heads", "2", "--head-size", "16", "--num-blocks", "32"]
CHECK = "/cache/kvcache/check?slot_mapping=[0,511]&chunk_size=256"


class _Serve:
    """``lmcache-native serve`` as a subprocess on a free port (stopped with SIGINT)."""

    def __init__(self, config: Path, seed: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
        self.proc = subprocess.Popen(
            [
                str(SCRIPT),
                "serve",
                "--port",
                "0",
                "--config",
                str(config),
                "--seed",
                str(seed),
                *SHAPE,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        url = wait_for_match(self.proc, r"listening on (http://\S+)", 120)
        if url is None:
            self.stop()
            pytest.fail("serve did not start")
        self.url = url

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.mark.slow
def test_two_serve_processes_share_chunks_through_the_cluster(
    redis_cluster: RedisClusterServers, tmp_path: Path
) -> None:
    assert SCRIPT.exists(), f"{SCRIPT} missing: reinstall the package (pip install -e .)"
    redis_cluster.flushall()
    config = tmp_path / "lmcache.yaml"
    config.write_text(f"chunk_size: 256\nremote_url: {redis_cluster.url()}\n")
    a = _Serve(config, seed=0)
    try:
        b = _Serve(config, seed=1)
        try:
            with (
                httpx.Client(base_url=a.url, timeout=60) as ca,
                httpx.Client(base_url=b.url, timeout=60) as cb,
            ):
                before = ca.get(CHECK).json()
                assert cb.get(CHECK).json() != before  # different KV contents to start with
                store = ca.post("/cache/store?tokens_mock=0,512").json()
                assert store["num_stored_tokens"] == 512
                retrieved = 0
                deadline = time.monotonic() + 30  # A writes to the cluster in the background
                while retrieved < 512 and time.monotonic() < deadline:
                    retrieved = cb.post("/cache/retrieve?tokens_mock=0,512").json()["num_retrieved"]
                    if retrieved < 512:
                        time.sleep(0.2)
                assert retrieved == 512
                assert cb.get(CHECK).json() == before
        finally:
            b.stop()
    finally:
        a.stop()
    assert sum(1 for v in redis_cluster.keys_per_node().values() if v) >= 1
