"""Shared pytest configuration: the `cuda` marker skips only when no GPU build or device."""

from __future__ import annotations

import subprocess

import lmcache_native
import pytest
import torch


def _cuda_usable() -> bool:
    return bool(lmcache_native.HAS_CUDA) and torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
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


class RedisServer:
    """A real ``redis-server`` on a free loopback port, with no persistence.

    ``stop()``/``kill()`` take it down (for down-tier tests) and ``start()`` brings it back on
    the same port.
    """

    def __init__(self, workdir: str) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        import time

        import redis

        if self.running:
            return
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER_BIN,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.workdir,
                "--enable-debug-command",
                "local",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.ping():
                    client.close()
                    return
            except redis.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


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
