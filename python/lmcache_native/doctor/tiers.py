"""Checks of the storage tiers the configuration names and of the admin API port.

The disk check never touches chunk files (a running engine may own the directory): it writes
and deletes one temporary file. The remote check goes through :class:`RemoteBackend` itself,
the class the engine builds from ``remote_url``, so every URL form the storage layer accepts is
checked the way the engine will use it: a probe chunk is stored, read back, compared and deleted.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import torch

from lmcache_native.config import LMCacheEngineConfig
from lmcache_native.doctor import FAIL, OK, WARN, Check

GB = 1024**3
#: Key of the probe chunk written to the remote store (removed right after).
PROBE_KEY_PREFIX = "lmcache-native-doctor@probe@"


def _gb(n: float) -> str:
    return f"{n / GB:.1f} GB"


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_cpu_tier(config: LMCacheEngineConfig) -> Check:
    """``max_local_cpu_size`` against the memory available now."""
    if not config.get("local_cpu"):
        return Check("tier.local_cpu", OK, "off (local_cpu: false)")
    size = int(float(config.get("max_local_cpu_size")) * GB)
    avail = _mem_available()
    detail = f"max_local_cpu_size {_gb(size)}"
    if avail is None:
        return Check("tier.local_cpu", OK, detail + " (available memory unknown)")
    detail += f", {_gb(avail)} available"
    if size > avail:
        return Check(
            "tier.local_cpu",
            WARN,
            detail,
            f"lower max_local_cpu_size below {_gb(avail)} (vLLM needs memory too)",
        )
    return Check("tier.local_cpu", OK, detail)


def _existing_ancestor(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _chunk_bytes(path: Path) -> int:
    total = 0
    try:
        with os.scandir(path) as it:
            for de in it:
                if de.is_file(follow_symlinks=False):
                    total += de.stat(follow_symlinks=False).st_size
    except OSError:
        pass
    return total


TierCheck = Callable[[LMCacheEngineConfig], "Check | None"]


def _when_set(key: str) -> Callable[[Callable[[LMCacheEngineConfig, str], Check]], TierCheck]:
    """Runs the decorated check with ``config[key]``; the check answers ``None`` when unset.

    Args:
        key: the config key naming the tier (``local_disk``, ``remote_url``).

    Returns:
        A decorator turning ``check(config, value)`` into ``check(config)``.
    """

    def decorate(check: Callable[[LMCacheEngineConfig, str], Check]) -> TierCheck:
        @functools.wraps(check)
        def run(config: LMCacheEngineConfig) -> Check | None:
            value = config.get(key)
            return check(config, str(value)) if value else None

        return run

    return decorate


@_when_set("local_disk")
def check_disk_tier(config: LMCacheEngineConfig, raw: str) -> Check:
    """The ``local_disk`` directory: a directory (or creatable), writable, room for its size."""
    name = "tier.local_disk"
    path = Path(raw)
    size = int(float(config.get("max_local_disk_size")) * GB)
    if path.exists() and not path.is_dir():
        return Check(
            name, FAIL, f"{path} exists and is not a directory", "point local_disk at a directory"
        )
    base = path if path.exists() else _existing_ancestor(path)
    if not base.is_dir():
        return Check(
            name,
            FAIL,
            f"{path} cannot be created: {base} is not a directory",
            "point local_disk at a directory, or a path whose parents are directories",
        )
    try:
        if path.exists():
            with tempfile.NamedTemporaryFile(dir=path, prefix=".lmcache-doctor-") as f:
                f.write(b"lmcache-native doctor")
                f.flush()
            where = f"{path} writable"
        else:
            tempfile.TemporaryDirectory(dir=base, prefix=".lmcache-doctor-").cleanup()
            where = f"{path} does not exist yet; {base} is writable, the engine will create it"
    except OSError as exc:
        return Check(
            name,
            FAIL,
            f"{path} is not writable: {exc.strerror or exc}",
            "give the user vLLM runs as write access to it, or pick another local_disk",
        )
    free = shutil.disk_usage(base).free
    have = free + (_chunk_bytes(path) if path.is_dir() else 0)
    detail = f"{where}; max_local_disk_size {_gb(size)}, {_gb(free)} free"
    if size > have:
        return Check(
            name,
            FAIL,
            detail,
            f"lower max_local_disk_size to at most {have / GB:.1f} (GB) or free space on that disk",
        )
    return Check(name, OK, detail)


class _Captured(logging.Handler):
    """Collects the storage layer's log messages during a probe (they carry masked URLs)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        exc = next((a for a in args if isinstance(a, BaseException)), None)
        self.messages.append(f"{type(exc).__name__}: {exc}" if exc else record.getMessage())


def _safe(text: str, url: str, shown: str) -> str:
    return text.replace(url, shown) if url else text


@_when_set("remote_url")
def check_remote_tier(config: LMCacheEngineConfig, url: str) -> Check:
    """``remote_url`` through :class:`RemoteBackend`: store, read back, compare, delete."""
    from lmcache_native.config import mask_url_credentials
    from lmcache_native.engine.memory import ChunkBufferPool
    from lmcache_native.storage import RemoteBackend

    name = "tier.remote"
    shown = mask_url_credentials(url)
    pool = ChunkBufferPool(1 << 20, pin_memory=False)
    storage_logger = logging.getLogger("lmcache_native.storage")
    captured = _Captured()
    storage_logger.addHandler(captured)
    backend = None
    try:
        try:
            backend = RemoteBackend(
                url,
                pool.allocate,
                timeout_secs=float(config.get("blocking_timeout_secs")),
                extra_config=config.get("extra_config"),
            )
        except Exception as exc:
            return Check(
                name,
                FAIL,
                f"{shown}: cannot open: {type(exc).__name__}: {_safe(str(exc), url, shown)}",
                "correct remote_url (README: remote URL forms) or make the store reachable",
            )
        buf = pool.allocate((2, 1, 4, 16), torch.float16)
        assert buf is not None  # a 1 MiB pool has room for 256 bytes
        gen = torch.Generator().manual_seed(0)
        buf.tensor.copy_(torch.randn(buf.tensor.shape, generator=gen).to(torch.float16))
        key = PROBE_KEY_PREFIX + uuid.uuid4().hex
        stored = backend.put(key, buf)
        back = backend.get(key) if stored else None
        same = back is not None and bytes(back.byte_view()) == bytes(buf.byte_view())
        if back is not None:
            back.unref()
        removed = backend.remove(key) if stored else False
        buf.unref()
    finally:
        storage_logger.removeHandler(captured)
        if backend is not None:
            backend.close()
    why = "; ".join(_safe(m, url, shown) for m in captured.messages[:2])
    if not stored:
        return Check(
            name,
            FAIL,
            f"{shown}: cannot write a probe chunk" + (f": {why}" if why else ""),
            "start the store or correct remote_url's host, port and credentials; check that "
            "this machine can reach it (blocking_timeout_secs bounds each call)",
        )
    if not same:
        return Check(
            name,
            FAIL,
            f"{shown}: a probe chunk was written but not read back intact"
            + (f": {why}" if why else ""),
            "check the store's memory limit and eviction policy (maxmemory) and its health",
        )
    if not removed:
        return Check(
            name,
            WARN,
            f"{shown}: probe chunk written and read back, but not deleted",
            "give the credentials permission to DEL keys (clear and eviction need it)",
        )
    return Check(name, OK, f"{shown}: probe chunk written, read back intact, deleted")


def check_remote_nodes(config: LMCacheEngineConfig) -> list[Check]:
    """For a cluster or Sentinel ``remote_url``: PING every node the URL names.

    Cluster seed nodes are asked with the URL's credentials, and the first that answers is asked
    for ``cluster_state``; Sentinels are asked without credentials, as the remote tier asks
    them. One URL form with one server has no node lines (the probe chunk covers it).
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from lmcache_native.storage.remote_url import parse_remote_url

    url = config.get("remote_url")
    if not url:
        return []
    try:
        spec = parse_remote_url(str(url), config.get("extra_config"))
    except ValueError:
        return []  # reported by the tier line
    if spec.kind not in ("cluster", "sentinel"):
        return []
    timeout = float(config.get("blocking_timeout_secs"))
    what = "cluster node" if spec.kind == "cluster" else "Sentinel"
    creds = spec.kind == "cluster"
    checks = []
    state: str | None = None
    for host, port in spec.nodes:
        name = f"tier.remote.node[{host}:{port}]"
        client = redis.Redis(
            host=host,
            port=port,
            username=spec.username if creds else None,
            password=spec.password if creds else None,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            client.ping()
            if spec.kind == "cluster" and state is None:
                info = client.cluster("INFO")  # CLUSTER INFO, parsed by redis-py: a dict
                state = str(info.get("cluster_state"))
        except redis.RedisError as exc:
            checks.append(
                Check(
                    name,
                    FAIL,
                    f"{what} {host}:{port} does not answer PING: {type(exc).__name__}: {exc}",
                    f"start that {what} or remove it from remote_url",
                )
            )
            continue
        finally:
            client.close()
        checks.append(Check(name, OK, f"{what} {host}:{port} answers PING"))
    if state is not None and state != "ok":
        checks.append(
            Check(
                "tier.remote.cluster_state",
                FAIL,
                f"the cluster reports cluster_state:{state}",
                "bring the failed masters back or reassign their slots (redis-cli --cluster fix)",
            )
        )
    return checks


def check_tiers(config: LMCacheEngineConfig) -> list[Check]:
    """Every configured tier, in the engine's order (CPU, disk, remote and its nodes)."""
    checks = [check_cpu_tier(config)]
    for c in (check_disk_tier(config), check_remote_tier(config)):
        if c is not None:
            checks.append(c)
    checks.extend(check_remote_nodes(config))
    return checks


def check_admin_port(config: LMCacheEngineConfig, port: int | None = None) -> Check:
    """Whether the admin API's address can be bound (worker 0's port unless ``port`` is given).

    A busy port fails when the admin API is enabled or the port was asked for explicitly; else
    it is a warning (only ``lmcache-native serve`` would use it).
    """
    host = str(config.get("internal_api_server_host"))
    explicit = port is not None
    if port is None:
        port = int(config.get("internal_api_server_port_start")) + 1
    enabled = bool(config.get("internal_api_server_enabled"))
    role = (
        "vLLM worker 0's admin API (worker N: port_start + 1 + N)"
        if enabled
        else "lmcache-native serve's port (internal_api_server_enabled is false in vLLM)"
    )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            # NOTE: as uvicorn binds; a port held only by TIME_WAIT connections is free.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        busy = exc.errno == errno.EADDRINUSE
        what = "in use" if busy else f"cannot be bound: {exc.strerror or exc}"
        fix = (
            f"stop what listens there (ss -ltnp 'sport = :{port}') or choose another port "
            "(internal_api_server_port_start, or serve --port)"
            if busy
            else "set internal_api_server_host to an address of this machine (127.0.0.1)"
        )
        status = FAIL if enabled or explicit or not busy else WARN
        return Check("admin_port", status, f"{host}:{port} {what}; {role}", fix)
    return Check("admin_port", OK, f"{host}:{port} free; {role}")
