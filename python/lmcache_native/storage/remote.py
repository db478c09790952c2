"""RemoteBackend: a store shared by instances — Redis (``redis://``, ``rediss://``) or an
``fs://`` directory — holding chunks in the checksummed format of :mod:`.serde`.

Redis is reached through redis-py with socket timeouts of ``blocking_timeout_secs`` and no
client-side retries, so each call is bounded. A failing call (connection refused, timeout, I/O
error) is counted and logged (rate-limited) and answered as a miss; the tier is then skipped for
``retry_interval_secs`` (misses without network calls) and tried again after that, so it is used
again as soon as it recovers. A value whose header or checksum does not match is a miss, is
deleted, and is counted.

The ``fs://`` store is one file per chunk (named by :func:`.serde.chunk_filename`), written
atomically; it is the format ``/cache/load-fs-chunks`` reads. It has no capacity of its own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from lmcache_native.errors import CorruptChunkError
from lmcache_native.storage.base import (
    Allocator,
    ChunkBufferLike,
    RateLimitedLogger,
    StorageBackend,
)
from lmcache_native.storage.serde import (
    CHUNK_SUFFIX,
    chunk_filename,
    decode,
    encode,
    is_temp_file,
    read_chunk_file,
    read_chunk_header_file,
    write_chunk_file,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


def fs_url_path(url: str) -> Path:
    """``fs:///abs/dir`` -> ``/abs/dir`` (``fs://rel/dir`` -> ``rel/dir``).

    Raises:
        ValueError: not an ``fs://`` URL or no directory.
    """
    if not url.startswith("fs://"):
        raise ValueError(f"not an fs:// URL: {url!r}")
    rest = url[len("fs://") :]
    if not rest:
        raise ValueError(f"fs:// URL without a directory: {url!r}")
    return Path(rest)


def _redis_glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class _RedisStore:
    """Byte-level Redis access (no error handling; RemoteBackend guards every call)."""

    def __init__(self, url: str, timeout_secs: float) -> None:
        self.url = url
        self._client = self._connect(timeout_secs)

    def _connect(self, timeout_secs: float) -> redis.Redis:
        return redis.Redis.from_url(
            self.url,
            socket_timeout=timeout_secs,
            socket_connect_timeout=timeout_secs,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )

    def set_timeout(self, timeout_secs: float) -> None:
        old, self._client = self._client, self._connect(timeout_secs)
        old.close()

    def exists(self, key: str) -> bool:
        return bool(self._client.exists(key))

    def exists_many(self, keys: Sequence[str]) -> list[bool]:
        pipe = self._client.pipeline(transaction=False)
        for k in keys:
            pipe.exists(k)
        return [bool(x) for x in pipe.execute()]

    def load(self, key: str, allocator: Allocator) -> ChunkBufferLike | None:
        data = self._client.get(key)
        if data is None:
            return None
        if not isinstance(data, bytes):  # decode_responses is off: always bytes
            raise CorruptChunkError("unexpected value type")
        return decode(data, key, allocator)

    def save(self, key: str, buf: ChunkBufferLike) -> None:
        self._client.set(key, encode(key, buf.tensor))

    def delete(self, key: str) -> bool:
        return bool(self._client.delete(key))

    def keys(self, prefix: str) -> list[str]:
        pattern = _redis_glob_escape(prefix) + "*"
        return [
            k.decode("utf-8", "replace") for k in self._client.scan_iter(match=pattern, count=1000)
        ]

    def clear(self, prefix: str) -> int:
        keys = self.keys(prefix)
        n = 0
        for i in range(0, len(keys), 512):
            n += int(self._client.delete(*keys[i : i + 512]))
        return n

    def close(self) -> None:
        self._client.close()


class _FSStore:
    """A directory of chunk files."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.mkdir(parents=True, exist_ok=True)

    def set_timeout(self, timeout_secs: float) -> None:
        return

    def exists(self, key: str) -> bool:
        return (self.path / chunk_filename(key)).is_file()

    def exists_many(self, keys: Sequence[str]) -> list[bool]:
        return [self.exists(k) for k in keys]

    def load(self, key: str, allocator: Allocator) -> ChunkBufferLike | None:
        try:
            buf, _ = read_chunk_file(self.path / chunk_filename(key), key, allocator)
        except FileNotFoundError:
            return None
        return buf

    def save(self, key: str, buf: ChunkBufferLike) -> None:
        write_chunk_file(self.path / chunk_filename(key), key, buf.tensor)

    def delete(self, key: str) -> bool:
        try:
            os.unlink(self.path / chunk_filename(key))
        except FileNotFoundError:
            return False
        return True

    def _files(self) -> list[str]:
        with os.scandir(self.path) as it:
            return [
                de.name
                for de in it
                if de.name.endswith(CHUNK_SUFFIX)
                and not is_temp_file(de.name)
                and de.is_file(follow_symlinks=False)
            ]

    def keys(self, prefix: str) -> list[str]:
        out = []
        for name in self._files():
            try:
                key = read_chunk_header_file(self.path / name).key
            except (CorruptChunkError, OSError):
                continue
            if key.startswith(prefix):
                out.append(key)
        return out

    def clear(self, prefix: str) -> int:
        n = 0
        for key in self.keys(prefix):
            n += self.delete(key)
        return n

    def close(self) -> None:
        return


class RemoteBackend(StorageBackend):
    """The remote tier.

    Args:
        url: ``redis://host:port[/db]``, ``rediss://...`` or ``fs:///directory``.
        allocator: where read chunks are copied to.
        timeout_secs: socket timeout of each Redis call (``blocking_timeout_secs``).
        namespace: key prefix this engine owns; ``clear``/``keys`` touch only these keys
            (e.g. ``"model@1@0@"``), so clearing never empties a shared store.
        retry_interval_secs: after a failure, how long the tier answers misses without
            contacting the store.
    """

    name = "RemoteBackend"

    def __init__(
        self,
        url: str,
        allocator: Allocator,
        timeout_secs: float = 10.0,
        namespace: str = "",
        retry_interval_secs: float = 1.0,
    ) -> None:
        super().__init__()
        self.url = url
        self._allocator = allocator
        self._namespace = namespace
        self._retry_interval = float(retry_interval_secs)
        self._down_until = 0.0
        self._state_lock = threading.Lock()
        self._rlog = RateLimitedLogger(logger)
        if url.startswith(("redis://", "rediss://", "unix://")):
            self._store: Any = _RedisStore(url, timeout_secs)
        elif url.startswith("fs://"):
            self._store = _FSStore(fs_url_path(url))
        else:
            raise ValueError(f"remote_url must be redis://, rediss:// or fs://, got {url!r}")

    @property
    def is_down(self) -> bool:
        """Whether the tier is skipped after a recent failure."""
        return time.monotonic() < self._down_until

    def set_timeout(self, timeout_secs: float) -> None:
        """Applies a new ``blocking_timeout_secs`` to subsequent calls."""
        self._store.set_timeout(float(timeout_secs))

    def _guard(self, op: str, fn: Callable[[], T], default: T) -> T:
        if time.monotonic() < self._down_until:
            return default
        try:
            return fn()
        except (redis.RedisError, OSError) as exc:
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
        if "@" in self.url and "://" in self.url:
            scheme, rest = self.url.split("://", 1)
            return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
        return self.url

    # -- interface -----------------------------------------------------------------------------

    def contains(self, key: str) -> bool:
        return self._guard("contains", lambda: self._store.exists(key), False)

    def batched_contains(self, keys: Sequence[str]) -> list[bool]:
        if not keys:
            return []
        return self._guard("contains", lambda: self._store.exists_many(keys), [False] * len(keys))

    def get(self, key: str) -> ChunkBufferLike | None:
        corrupt: list[CorruptChunkError] = []

        def load() -> ChunkBufferLike | None:
            try:
                return self._store.load(key, self._allocator)
            except CorruptChunkError as exc:
                corrupt.append(exc)
                self._store.delete(key)
                return None

        buf = self._guard("get", load, None)
        if corrupt:
            self._rlog.warning(
                "corrupt", "RemoteBackend: corrupt chunk %s deleted: %s", key, corrupt[0]
            )
            self._count(checksum_failures=1)
        if buf is None:
            self._count(misses=1)
            return None
        self._count_hit(buf)
        return buf

    def put(self, key: str, buf: ChunkBufferLike) -> bool:
        def save() -> bool:
            self._store.save(key, buf)
            return True

        ok = self._guard("put", save, False)
        if ok:
            self._count_put(buf)
        else:
            self._count(rejected_puts=1)
        return ok

    def remove(self, key: str) -> bool:
        return self._guard("remove", lambda: self._store.delete(key), False)

    def clear(self) -> int:
        return self._guard("clear", lambda: self._store.clear(self._namespace), 0)

    def keys(self) -> list[str]:
        return self._guard("keys", lambda: self._store.keys(self._namespace), [])

    def close(self) -> None:
        self._store.close()

    def _size_stats(self) -> dict[str, int]:
        return {"down": int(self.is_down)}
