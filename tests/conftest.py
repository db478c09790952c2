"""Shared pytest configuration: the `cuda` marker skips only when no GPU build or device."""

from __future__ import annotations

from pathlib import Path

import lmcache_native
import pytest
import torch
from redis_servers import RedisProcess, free_port, persistence_off


def _cuda_usable() -> bool:
    return bool(lmcache_native.HAS_CUDA) and torch.cuda.is_available()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if _cuda_usable():
        return
    reason = (
        "needs an NVIDIA GPU and a CUDA build "
        f"(HAS_CUDA={lmcache_native.HAS_CUDA}, "
        f"torch.cuda.is_available()={torch.cuda.is_available()})"
    )
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


# -- a real redis-server (engine/storage helper; additive) -------------------------------------

REDIS_SERVER_BIN = "/usr/bin/redis-server"


class RedisServer(RedisProcess):
    """A real ``redis-server`` on a free loopback port, with no persistence.

    ``stop()``/``kill()`` take it down (for down-tier tests) and ``start()`` brings it back on
    the same port.
    """

    def __init__(self, workdir: str) -> None:
        """Picks the port; ``start()`` runs the server.

        Args:
            workdir: the server's directory.
        """
        port = free_port()
        args = ["--port", str(port), *persistence_off(Path(workdir))]
        super().__init__(Path(workdir), port, [*args, "--enable-debug-command", "local"])
        self.url = f"redis://127.0.0.1:{port}/0"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """A session-wide real redis-server; tests that stop it must ``start()`` it again."""
    import shutil

    if not shutil.which(REDIS_SERVER_BIN):
        pytest.fail(f"{REDIS_SERVER_BIN} is required (apt-get install redis-server)")
    server = RedisServer(str(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of a running, empty redis-server."""
    import redis

    redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url
