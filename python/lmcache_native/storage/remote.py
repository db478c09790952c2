"""RemoteBackend: a store shared by instances.

It holds chunks in the checksummed format of :mod:`.serde`: one Redis/Valkey server
(``redis://``, ``rediss://``, ``unix://``, ``valkey://``), a Sentinel-managed master
(``redis-sentinel://``), a Redis/Valkey Cluster (``redis-cluster://``, ``valkey://`` with
``valkey_mode: cluster``) or an ``fs://`` directory.
:mod:`.remote_url` reads the URL forms; :mod:`.remote_redis` holds the Redis stores.

Redis is reached through redis-py with socket timeouts of ``blocking_timeout_secs`` and no
client-side retries, so each call is bounded. A failing call (connection refused, timeout, I/O
error) is counted and logged (rate-limited) and answered as a miss; the tier is then skipped for
``retry_interval_secs`` (misses without network calls) and tried again after that, so it is used
again as soon as it recovers. On a cluster the same holds per node: a failed node's keys are
misses for ``retry_interval_secs`` while the other nodes keep serving theirs. A value whose
header or checksum does not match is a miss, is deleted, and is counted. URLs in logs and errors
have their password masked.

The ``fs://`` store is one file per chunk (named by :func:`.serde.chunk_filename`), written
atomically; it is the format ``/cache/load-fs-chunks`` reads. It has no capacity of its own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from lmcache_native.config import mask_url_credentials
from lmcache_native.errors import CorruptChunkError
from lmcache_native.storage.base import (
    Allocator,
    ChunkBufferLike,
    RateLimitedLogger,
    StorageBackend,
)
from lmcache_native.storage.remote_redis import (
    STORE_ERRORS,
    ClusterStore,
    RedisStore,
    decode_value,
)
from lmcache_native.storage.remote_url import RemoteSpec, fs_url_path, parse_remote_url
from lmcache_native.storage.serde import (
    CHUNK_SUFFIX,
    chunk_filename,
    is_temp_file,
    read_chunk_file,
    read_chunk_header_file,
    write_chunk_file,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


class FSStore:
    """A directory of chunk files (the ``fs://`` store).

    Args:
        path: the directory.
        create: create it when missing (the tier does; the ``fs://`` import only reads).
    """

    def __init__(self, path: Path, create: bool = True) -> None:
        """Opens the directory ``path``."""
        self.path = path
        if create:
            self.path.mkdir(parents=True, exist_ok=True)

    def set_timeout(self, timeout_secs: float) -> None:  # noqa: ARG002 - the stores' interface
        """No timeout: file calls are local."""
        return

    def exists(self, key: str) -> bool:
        """Whether ``key`` is stored."""
        return (self.path / chunk_filename(key)).is_file()

    def exists_many(self, keys: Sequence[str]) -> list[bool]:
        """Whether each of ``keys`` is stored (one round trip per server)."""
        return [self.exists(k) for k in keys]

    def load(self, key: str, allocator: Allocator) -> ChunkBufferLike | None:
        """The verified chunk under ``key`` in a buffer from ``allocator``, or ``None``."""
        try:
            buf, _ = read_chunk_file(self.path / chunk_filename(key), key, allocator)
        except FileNotFoundError:
            return None
        return buf

    def save(self, key: str, buf: ChunkBufferLike) -> bool:
        """Writes ``buf`` under ``key``; ``True`` on success."""
        write_chunk_file(self.path / chunk_filename(key), key, buf.tensor)
        return True

    def delete(self, key: str) -> bool:
        """Deletes ``key``; ``True`` when it existed."""
        try:
            os.unlink(self.path / chunk_filename(key))
        except FileNotFoundError:
            return False
        return True

    def chunk_files(self) -> list[str]:
        """Names of the complete chunk files (no temporaries, no symlinks), unordered.

        Raises:
            OSError: the directory cannot be listed.
        """
        with os.scandir(self.path) as it:
            return [
                de.name
                for de in it
                if de.name.endswith(CHUNK_SUFFIX)
                and not is_temp_file(de.name)
                and de.is_file(follow_symlinks=False)
            ]

    def keys(self, prefix: str) -> list[str]:
        """The stored keys under ``prefix``."""
        out = []
        for name in self.chunk_files():
            try:
                key = read_chunk_header_file(self.path / name).key
            except (CorruptChunkError, OSError):
                continue
            if key.startswith(prefix):
                out.append(key)
        return out

    def clear(self, prefix: str) -> int:
        """Deletes the keys under ``prefix``; returns how many."""
        n = 0
        for key in self.keys(prefix):
            n += self.delete(key)
        return n

    def nodes_down(self) -> int:
        """Nodes currently skipped after a failure (0 for a single server)."""
        return 0

    def close(self) -> None:
        """Closes the connections."""
        return


class RemoteBackend(StorageBackend):
    """The remote tier.

    Args:
        url: a ``remote_url`` (see :mod:`.remote_url` for the forms).
        allocator: where read chunks are copied to.
        timeout_secs: socket timeout of each Redis call (``blocking_timeout_secs``).
        namespace: key prefix this engine owns; ``clear``/``keys`` touch only these keys
            (e.g. ``"model@1@0@"``), so clearing never empties a shared store.
        retry_interval_secs: after a failure, how long the tier (or, on a cluster, the failed
            node) answers misses without contacting the store.
        extra_config: the configuration's ``extra_config`` (``redis_service_name``,
            ``valkey_mode``, ``valkey_username``, ``valkey_password``, ``valkey_database``,
            ``redis_mode``).

    Raises:
        ValueError: an unsupported or malformed URL (the message never holds the password).
    """

    name = "RemoteBackend"

    def __init__(
        self,
        url: str,
        allocator: Allocator,
        timeout_secs: float = 10.0,
        namespace: str = "",
        retry_interval_secs: float = 1.0,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        """Connects lazily to the store ``url`` names."""
        super().__init__()
        self.url = url
        self._allocator = allocator
        self._namespace = namespace
        self._retry_interval = float(retry_interval_secs)
        self._down_until = 0.0
        self._state_lock = threading.Lock()
        self._rlog = RateLimitedLogger(logger)
        self.spec: RemoteSpec = parse_remote_url(url, extra_config)
        if self.spec.kind == "fs":
            assert self.spec.path is not None
            self._store: Any = FSStore(self.spec.path)
        elif self.spec.kind == "cluster":
            self._store = ClusterStore(
                self.spec, timeout_secs, self._retry_interval, self._on_node_error
            )
        else:
            self._store = RedisStore(self.spec, timeout_secs)

    @property
    def is_down(self) -> bool:
        """Whether the tier is skipped after a recent failure."""
        return time.monotonic() < self._down_until

    def set_timeout(self, timeout_secs: float) -> None:
        """Applies a new ``blocking_timeout_secs`` to subsequent calls."""
        self._store.set_timeout(float(timeout_secs))

    def apply_config(self, name: str, value: Any) -> None:
        """A change of ``blocking_timeout_secs`` reaches the next calls."""
        if name == "blocking_timeout_secs":
            self.set_timeout(float(value))

    def _on_node_error(self, op: str, node: str, exc: BaseException) -> None:
        self._count(errors=1)
        self._rlog.warning(
            f"node-{node}",
            "RemoteBackend %s on %s: node %s failed (%s: %s); its keys are misses, "
            "retrying it in %.1fs",
            op,
            self._safe_url(),
            node,
            type(exc).__name__,
            exc,
            self._retry_interval,
        )

    def _guard(self, op: str, fn: Callable[[], T], default: T) -> T:
        if time.monotonic() < self._down_until:
            return default
        try:
            return fn()
        except STORE_ERRORS as exc:
            with self._state_lock:
                self._down_until = time.monotonic() + self._retry_interval
            self._count(errors=1)
            self._rlog.warning(
                "down",
                "RemoteBackend %s on %s failed (%s: %s); answering misses, retrying in %.1fs",
                op,
                self._safe_url(),
                type(exc).__name__,
                exc,
                self._retry_interval,
            )
            return default

    def _safe_url(self) -> str:
        # NOTE: never log credentials embedded in the URL.
        return mask_url_credentials(self.url)

    # -- interface -----------------------------------------------------------------------------

    def contains(self, key: str) -> bool:
        """Whether ``key`` is stored (from the index; the payload is not read)."""
        return self._guard("contains", lambda: self._store.exists(key), False)

    def batched_contains(self, keys: Sequence[str]) -> list[bool]:
        """``contains`` for each key, in one pass."""
        if not keys:
            return []
        return self._guard("contains", lambda: self._store.exists_many(keys), [False] * len(keys))

    def _decode_or_drop(self, key: str, load: Callable[[], ChunkBufferLike | None]) -> Any:
        """``load()``; a corrupt value is deleted, counted and answered as ``None``."""
        try:
            return load()
        except CorruptChunkError as exc:
            self._store.delete(key)
            self._rlog.warning("corrupt", "RemoteBackend: corrupt chunk %s deleted: %s", key, exc)
            self._count(checksum_failures=1)
            return None

    def _finish_get(self, buf: ChunkBufferLike | None) -> ChunkBufferLike | None:
        if buf is None:
            self._count(misses=1)
            return None
        self._count_hit(buf)
        return buf

    def get(self, key: str) -> ChunkBufferLike | None:
        """The chunk under ``key`` with one reference for the caller, or ``None`` on a miss."""
        buf = self._guard(
            "get",
            lambda: self._decode_or_drop(key, lambda: self._store.load(key, self._allocator)),
            None,
        )
        return self._finish_get(buf)

    def batched_get(self, keys: Sequence[str]) -> list[ChunkBufferLike | None]:
        """Reads ``keys`` in one round trip per server (per node on a cluster)."""
        load_many = getattr(self._store, "load_raw_many", None)
        if load_many is None or not keys:
            return super().batched_get(keys)
        none: list[Any] = [None] * len(keys)
        raw: list[Any] = self._guard("get", lambda: load_many(keys), none)

        def decode_all() -> list[ChunkBufferLike | None]:
            return [
                self._decode_or_drop(k, partial(decode_value, data, k, self._allocator))
                for k, data in zip(keys, raw, strict=True)
            ]

        bufs: list[ChunkBufferLike | None] = self._guard("get", decode_all, list(none))
        return [self._finish_get(b) for b in bufs]

    def put(self, key: str, buf: ChunkBufferLike) -> bool:
        """Stores ``buf`` under ``key``; ``True`` when the tier holds it afterwards."""
        ok = bool(self._guard("put", lambda: self._store.save(key, buf), False))
        if ok:
            self._count_put(buf)
        else:
            self._count(rejected_puts=1)
        return ok

    def remove(self, key: str) -> bool:
        """Deletes ``key``; ``True`` when something was deleted."""
        return self._guard("remove", lambda: self._store.delete(key), False)

    def clear(self) -> int:
        """Deletes every entry this tier owns; returns how many were deleted."""
        return self._guard("clear", lambda: self._store.clear(self._namespace), 0)

    def keys(self) -> list[str]:
        """The stored keys."""
        return self._guard("keys", lambda: self._store.keys(self._namespace), [])

    def close(self) -> None:
        """Releases the tier's resources."""
        self._store.close()

    def _size_stats(self) -> dict[str, int]:
        return {"down": int(self.is_down), "nodes_down": int(self._store.nodes_down())}


__all__ = ["FSStore", "RemoteBackend", "fs_url_path"]
