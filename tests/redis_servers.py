"""Real Redis topologies for the tests: a 3-master Redis Cluster and a Sentinel-managed master.

Every process is a real ``redis-server`` on 127.0.0.1 in a temporary directory, without
persistence; ``stop()`` ends all of them. Nothing here mocks Redis.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis
from process_testlib import stop_process

if TYPE_CHECKING:
    from typing_extensions import Self

REDIS_SERVER_BIN = "/usr/bin/redis-server"
REDIS_CLI_BIN = "/usr/bin/redis-cli"
SENTINEL_MASTER_NAME = "redismaster"  # LMCache's default Sentinel master name


def require_binaries() -> None:
    """Fails (not skips) with the install hint when redis-server or redis-cli is missing."""
    for binary in (REDIS_SERVER_BIN, REDIS_CLI_BIN):
        if not shutil.which(binary):
            pytest.fail(f"{binary} is required (apt-get install redis-server redis-tools)")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(with_bus: bool = False) -> int:
    """A free loopback port; ``with_bus``: port + 10000 (the cluster bus) is free too."""
    if not with_bus:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    for _ in range(200):
        port = random.randint(20000, 40000)
        if _port_free(port) and _port_free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _wait(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval)


class RedisProcess:
    """One ``redis-server`` process (restartable on the same port and directory)."""

    def __init__(self, workdir: Path, port: int, args: list[str], config: Path | None = None):
        self.workdir = workdir
        self.port = port
        self.args = args
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, **kwargs)

    def start(self, timeout: float = 15.0) -> None:
        if self.running:
            return
        cmd = [REDIS_SERVER_BIN]
        if self.config is not None:
            cmd.append(str(self.config))
        cmd += self.args
        self.proc = subprocess.Popen(
            cmd, cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        c = self.client()
        try:
            _wait(lambda: self.running and c.ping(), timeout, f"redis on port {self.port}")
        finally:
            c.close()
        if not self.running:
            raise RuntimeError(f"redis-server on port {self.port} exited")

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 10 s)."""
        stop_process(self.proc)
        self.proc = None


def persistence_off(workdir: Path) -> list[str]:
    return ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)]


class _Topology:
    """``with topology:`` starts every process and stops them all on exit.

    Also when the start itself fails half way (what was started is stopped).
    """

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisClusterServers(_Topology):
    """A Redis Cluster of ``n`` masters and no replicas, created with ``redis-cli --cluster``.

    ``cluster-require-full-coverage no``: when a master is down, the others keep serving
    their slots (what an operator sets for a cache).
    """

    def __init__(self, workdir: Path, n: int = 3) -> None:
        self.workdir = workdir
        self.nodes: list[RedisProcess] = []
        for _ in range(n):
            port = free_port(with_bus=True)
            args = [
                "--port",
                str(port),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(workdir / f"nodes-{port}.conf"),
                "--cluster-node-timeout",
                "3000",
                "--cluster-require-full-coverage",
                "no",
                *persistence_off(workdir),
            ]
            self.nodes.append(RedisProcess(workdir, port, args))

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def url(self, scheme: str = "redis-cluster://", userinfo: str = "") -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        return f"{scheme}{userinfo}{hosts}"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                REDIS_CLI_BIN,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )
        self.wait_ok()

    def _info_ok(self, node: RedisProcess) -> bool:
        c = node.client()
        try:
            info = c.execute_command("CLUSTER INFO")  # parsed by redis-py into a dict
            slots = c.execute_command("CLUSTER SLOTS")
            return info.get("cluster_state") == "ok" and len(slots) == len(self.nodes)
        finally:
            c.close()

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every running node says ``cluster_state:ok`` and knows every master's slots."""
        _wait(
            lambda: all(self._info_ok(n) for n in self.nodes if n.running),
            timeout,
            "cluster_state:ok on all nodes",
        )

    def flushall(self) -> None:
        for node in self.nodes:
            if node.running:
                c = node.client()
                try:
                    c.flushall()
                finally:
                    c.close()

    def keys_per_node(self) -> dict[int, list[bytes]]:
        out: dict[int, list[bytes]] = {}
        for node in self.nodes:
            c = node.client()
            try:
                out[node.port] = list(c.scan_iter(count=1000))
            finally:
                c.close()
        return out

    def restart(self, index: int) -> None:
        """Starts a killed node again (same port and nodes.conf) and waits for the cluster."""
        self.nodes[index].start()
        self.wait_ok()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SentinelServers(_Topology):
    """A master, one replica (``--replicaof``) and three Sentinels monitoring the master.

    Sentinel settings: quorum 2, ``down-after-milliseconds 1000``, ``failover-timeout 3000``.
    Each Sentinel has its own writable config file (Sentinel rewrites it).
    """

    def __init__(self, workdir: Path, name: str = SENTINEL_MASTER_NAME) -> None:
        self.workdir = workdir
        self.name = name
        mport, rport = free_port(), free_port()
        self.master = RedisProcess(
            workdir, mport, ["--port", str(mport), *persistence_off(workdir)]
        )
        self.replica = RedisProcess(
            workdir,
            rport,
            [
                "--port",
                str(rport),
                "--replicaof",
                "127.0.0.1",
                str(mport),
                *persistence_off(workdir),
            ],
        )
        self.sentinels: list[RedisProcess] = []
        for _ in range(3):
            port = free_port()
            sdir = workdir / f"sentinel-{port}"
            sdir.mkdir()
            conf = sdir / "sentinel.conf"
            conf.write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                f"dir {sdir}\n"
                f"sentinel monitor {name} 127.0.0.1 {mport} 2\n"
                f"sentinel down-after-milliseconds {name} 1000\n"
                f"sentinel failover-timeout {name} 3000\n"
            )
            self.sentinels.append(RedisProcess(sdir, port, ["--sentinel"], config=conf))

    @property
    def sentinel_hosts(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def url(self, userinfo: str = "", path: str = "") -> str:
        return f"redis-sentinel://{userinfo}{self.sentinel_hosts}{path}"

    def _sentinels_ready(self) -> bool:
        for s in self.sentinels:
            c = s.client()
            try:
                if len(c.execute_command("SENTINEL", "REPLICAS", self.name)) < 1:
                    return False
                if len(c.execute_command("SENTINEL", "SENTINELS", self.name)) < 2:
                    return False
            finally:
                c.close()
        return True

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        c = self.replica.client()
        try:
            _wait(
                lambda: c.info("replication").get("master_link_status") == "up",
                20,
                "the replica to sync",
            )
        finally:
            c.close()
        for s in self.sentinels:
            s.start()
        # Failover needs every Sentinel to know the replica and the other Sentinels.
        _wait(self._sentinels_ready, 30, "sentinels to discover the replica and each other")

    def master_port(self) -> int:
        """The master's port as the first live Sentinel reports it."""
        for s in self.sentinels:
            c = s.client()
            try:
                _host, port = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
                return int(port)
            except (redis.RedisError, OSError):
                continue
            finally:
                c.close()
        raise RuntimeError("no sentinel answered")

    def wait_replicated(self, timeout_ms: int = 5000) -> None:
        """Blocks until the replica has every write the master acknowledged so far."""
        c = self.master.client()
        try:
            # WAIT covers this connection's writes; the stream is ordered, so one marker write
            # acknowledged means every earlier write (from any client) is on the replica.
            c.set("__replication_marker__", "1")
            acked = c.execute_command("WAIT", 1, timeout_ms)
        finally:
            c.close()
        if int(acked) < 1:
            raise RuntimeError("the replica did not acknowledge the writes")

    def stop(self) -> None:
        for proc in [*self.sentinels, self.replica, self.master]:
            proc.stop()
