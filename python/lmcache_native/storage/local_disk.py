"""LocalDiskBackend: one file per chunk under ``local_disk``, a byte capacity, an eviction policy.

Writes are atomic (temporary file in the same directory, then ``os.replace``), so a crash
leaves either the complete file or a temporary file that the next start deletes.

The index (key -> file, size) lives in memory and is rebuilt from the directory on start:
every ``*.chunk`` file's header is read and checked then (magic, version, header checksum, key
against the file name, length against the file size); files that fail are deleted and counted
as checksum failures. Payload checksums are verified lazily, on every read. Files are entered
into the eviction order oldest first (by modification time). One directory belongs to one
engine at a time.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from lmcache_native.errors import CorruptChunkError
from lmcache_native.storage.base import (
    Allocator,
    BoundedBackend,
    ChunkBufferLike,
    RateLimitedLogger,
)
from lmcache_native.storage.serde import (
    CHUNK_SUFFIX,
    chunk_filename,
    encode_header,
    is_temp_file,
    read_chunk_file,
    read_chunk_header_file,
    write_chunk_file,
)

logger = logging.getLogger(__name__)


@dataclass
class _Entry:
    filename: str
    size: int


class LocalDiskBackend(BoundedBackend[_Entry]):
    """The disk tier.

    Args:
        path: the directory (created if missing).
        capacity_bytes: the most file bytes (headers included) kept at once.
        allocator: where read chunks are copied to.
        policy: ``cache_policy`` name.
        fsync: fsync each file before its rename (survives power loss, slower).
    """

    name = "LocalDiskBackend"
    capacity_key = "max_local_disk_size"

    def __init__(
        self,
        path: str | os.PathLike[str],
        capacity_bytes: int,
        allocator: Allocator,
        policy: str = "LRU",
        fsync: bool = False,
    ) -> None:
        """Opens ``path`` (created if missing) and rebuilds the index from its files."""
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._allocator = allocator
        self._fsync = fsync
        super().__init__(capacity_bytes, policy)
        self._rlog = RateLimitedLogger(logger)
        self._rebuild_index()

    # -- start-up ------------------------------------------------------------------------------

    def _rebuild_index(self) -> None:
        found: list[tuple[float, str, _Entry]] = []
        with os.scandir(self.path) as it:
            for de in it:
                if not de.is_file(follow_symlinks=False):
                    continue
                if is_temp_file(de.name):
                    self._unlink(de.name)
                    continue
                if not de.name.endswith(CHUNK_SUFFIX):
                    continue
                try:
                    header = read_chunk_header_file(Path(de.path))
                    if chunk_filename(header.key) != de.name:
                        raise CorruptChunkError("file name does not match the key in its header")
                    st = de.stat(follow_symlinks=False)
                except CorruptChunkError as exc:
                    logger.warning("LocalDiskBackend: deleting bad chunk file %s: %s", de.name, exc)
                    self._count(checksum_failures=1)
                    self._unlink(de.name)
                    continue
                except OSError as exc:
                    self._count(errors=1)
                    logger.warning("LocalDiskBackend: cannot read %s: %s", de.name, exc)
                    continue
                found.append((st.st_mtime, header.key, _Entry(de.name, st.st_size)))
        found.sort(key=lambda t: t[0])
        with self._lock:
            for _mtime, key, entry in found:
                self._index[key] = entry
                self._used += entry.size
                self._policy.on_insert(key)
            victims = self._pick_victims_locked(self._used - self._capacity)
        self._dispose(victims)
        if found:
            logger.info(
                "LocalDiskBackend: rebuilt index from %s: %d chunks, %d bytes",
                self.path,
                len(self._index),
                self._used,
            )

    # -- interface -----------------------------------------------------------------------------

    def get(self, key: str) -> ChunkBufferLike | None:
        """The chunk under ``key`` with one reference for the caller, or ``None`` on a miss."""
        with self._lock:
            entry = self._index.get(key)
        if entry is None:
            self._count(misses=1)
            return None
        try:
            buf, _ = read_chunk_file(self.path / entry.filename, key, self._allocator)
        except CorruptChunkError as exc:
            self._rlog.warning(
                "corrupt", "LocalDiskBackend: corrupt chunk %s deleted: %s", key, exc
            )
            self._forget(key, entry, unlink=True)
            self._count(checksum_failures=1, misses=1)
            return None
        except FileNotFoundError:
            self._forget(key, entry, unlink=False)
            self._count(misses=1)
            return None
        except OSError as exc:
            self._rlog.warning("io", "LocalDiskBackend: read of %s failed: %s", key, exc)
            self._count(errors=1, misses=1)
            return None
        if buf is None:  # no host memory for it right now
            self._count(misses=1)
            return None
        with self._lock:
            self._policy.on_access(key)
        self._count_hit(buf)
        return buf

    def put(self, key: str, buf: ChunkBufferLike) -> bool:
        """Stores ``buf`` under ``key``; ``True`` when the tier holds it afterwards."""
        with self._lock:
            if key in self._index:
                self._policy.on_access(key)
                return True
        header = encode_header(key, buf.tensor)
        size = len(header) + buf.nbytes
        with self._lock:
            victims = self._pick_victims_locked(self._used + size - self._capacity, True)
            ok = self._used + size <= self._capacity
            if ok:
                self._used += size  # reserved while the file is written
        self._dispose(victims)
        if not ok:
            self._count(rejected_puts=1)
            return False
        filename = chunk_filename(key)
        try:
            write_chunk_file(
                self.path / filename, key, buf.tensor, fsync=self._fsync, header=header
            )
        except OSError as exc:
            with self._lock:
                self._used -= size
            self._rlog.warning("io", "LocalDiskBackend: write of %s failed: %s", key, exc)
            self._count(errors=1, rejected_puts=1)
            return False
        with self._lock:
            if key in self._index:  # another writer won the race with the same bytes
                self._used -= size
            else:
                self._index[key] = _Entry(filename, size)
                self._policy.on_insert(key)
        self._count_put(buf)
        return True

    def remove(self, key: str) -> bool:
        """Deletes ``key``; ``True`` when something was deleted."""
        with self._lock:
            entry = self._index.get(key)
        if entry is None:
            return False
        return self._forget(key, entry, unlink=True)

    # -- internals -----------------------------------------------------------------------------

    def _forget(self, key: str, entry: _Entry, unlink: bool) -> bool:
        with self._lock:
            if self._index.get(key) is not entry:
                return False
            del self._index[key]
            self._used -= entry.size
            self._policy.on_remove(key)
        if unlink:
            self._unlink(entry.filename)
        return True

    def _entry_size(self, entry: _Entry) -> int:
        return entry.size

    def _dispose_one(self, entry: _Entry) -> None:
        self._unlink(entry.filename)

    def _unlink(self, filename: str) -> None:
        try:
            os.unlink(self.path / filename)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._rlog.warning("io", "LocalDiskBackend: cannot delete %s: %s", filename, exc)
            self._count(errors=1)
