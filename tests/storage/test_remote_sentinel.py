"""RemoteBackend through real Redis Sentinels.

The master is SIGKILLed mid-run, Sentinel promotes the replica, and stores and loads resume with
nothing corrupt served.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from lmcache_native.engine.memory import ChunkBufferPool
from lmcache_native.storage import RemoteBackend

from tests.redis_servers import SentinelServers, require_binaries
from tests.storage.conftest import NAMESPACE, MakeChunk, key_of, same_bytes

pytestmark = pytest.mark.redis

FAILOVER_BUDGET_SECS = 30.0
PRE_KILL = 8


def _put(backend: RemoteBackend, make_chunk: MakeChunk, i: int) -> torch.Tensor | None:
    buf = make_chunk(i)
    data = buf.tensor.clone()
    ok = backend.put(key_of(i), buf)
    buf.unref()
    return data if ok else None


def _load_and_check(
    backend: RemoteBackend, expected: dict[int, torch.Tensor], ids: list[int]
) -> int:
    """Loads ``ids``; every chunk served must be byte-identical to what was stored."""
    served = 0
    for i in ids:
        got = backend.get(key_of(i))
        if got is None:
            continue
        try:
            assert same_bytes(got.tensor, expected[i]), f"chunk {i} served corrupt"
        finally:
            got.unref()
        served += 1
    return served


@pytest.mark.slow
def test_master_killed_mid_run_failover_resumes_with_nothing_corrupt(
    tmp_path: Path, pool: ChunkBufferPool, make_chunk: MakeChunk
) -> None:
    require_binaries()
    servers = SentinelServers(tmp_path, name="lmcache-ha")
    try:
        servers.start()
        backend = RemoteBackend(
            servers.url(),
            pool.allocate,
            timeout_secs=1,
            namespace=NAMESPACE,
            retry_interval_secs=0.2,
            extra_config={"redis_service_name": "lmcache-ha"},  # not LMCache's default name
        )
        try:
            assert backend.spec.service_name == "lmcache-ha"
            expected: dict[int, torch.Tensor] = {}
            for i in range(PRE_KILL):
                data = _put(backend, make_chunk, i)
                assert data is not None
                expected[i] = data
            assert _load_and_check(backend, expected, list(range(PRE_KILL))) == PRE_KILL
            servers.wait_replicated()  # the replica holds every pre-kill chunk

            old_port = servers.master.port
            servers.master.kill()
            deadline = time.monotonic() + FAILOVER_BUDGET_SECS
            i = 1000
            failed_over = stored_after_failover = False
            misses = 0
            while time.monotonic() < deadline:
                data = _put(backend, make_chunk, i)
                if data is not None:
                    expected[i] = data
                recent = [k for k in expected if k >= 1000][-4:]
                ids = list(range(PRE_KILL)) + recent
                misses += len(ids) - _load_and_check(backend, expected, ids)
                failed_over = failed_over or servers.master_port() != old_port
                if failed_over and data is not None:
                    stored_after_failover = True
                    break
                i += 1
                time.sleep(0.1)
            assert failed_over, "Sentinel did not fail over within the budget"
            assert stored_after_failover, "stores did not resume after the failover"
            assert misses > 0  # the tier answered misses while no master was reachable
            assert backend.stats()["errors"] > 0

            # Stores and loads work again: every pre-kill chunk (replicated) and new ones.
            assert _load_and_check(backend, expected, list(range(PRE_KILL))) == PRE_KILL
            data = _put(backend, make_chunk, 5000)
            assert data is not None
            expected[5000] = data
            assert _load_and_check(backend, expected, [5000]) == 1
            assert backend.batched_contains([key_of(0), key_of(5000), key_of(6000)]) == [
                True,
                True,
                False,
            ]
            assert backend.is_down is False
        finally:
            backend.close()
    finally:
        servers.stop()
