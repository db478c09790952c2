"""The ``fs://`` import: chunk files of an ``fs://`` store loaded into the CPU tier.

``POST /cache/load-fs-chunks`` names a configuration file; its ``remote_url`` names the store.
The file is read with the configuration loader's own reader
(:func:`lmcache_native.config.read_config_file`), so it is refused for the same reasons, and
its contents never appear in errors. The store is listed and read through
:class:`~lmcache_native.storage.remote.FSStore`; each file is fully verified (header, key,
checksum) before its chunk enters the CPU tier.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import torch

from lmcache_native.config import LMCacheEngineConfig, read_config_file
from lmcache_native.errors import ConfigError, CorruptChunkError, FSChunkLoadError
from lmcache_native.storage.base import Allocator, ChunkBufferLike
from lmcache_native.storage.manager import StorageManager
from lmcache_native.storage.remote import FSStore
from lmcache_native.storage.remote_url import fs_url_path
from lmcache_native.storage.serde import CHUNK_SUFFIX, ChunkHeader, chunk_filename, read_chunk_file

logger = logging.getLogger(__name__)

#: ``fits(shape, dtype)``: whether a chunk of that shape and dtype fits the registered cache.
ChunkCheck = Callable[[tuple[int, ...], torch.dtype], bool]


@dataclass
class _Outcome:
    """What an import did, as ``POST /cache/load-fs-chunks`` reports it."""

    max_failed_keys: int
    total_files: int = 0
    loaded: int = 0
    skipped: int = 0
    failed_count: int = 0
    failed_keys: list[str] = field(default_factory=list)

    def fail(self, name: str) -> None:
        self.failed_count += 1
        if len(self.failed_keys) < self.max_failed_keys:
            self.failed_keys.append(unquote(name[: -len(CHUNK_SUFFIX)]))

    def as_dict(self) -> dict[str, Any]:
        return {
            "loaded_chunks": self.loaded,
            "total_files": self.total_files,
            "failed_keys": self.failed_keys,
            "failed_count": self.failed_count,
            "skipped_files": self.skipped,
        }


def _store_of(config_path: str) -> FSStore:
    """The ``fs://`` store named by the configuration file at ``config_path``."""
    if not isinstance(config_path, str) or not config_path:
        raise FSChunkLoadError("config_path is required")
    if "\x00" in config_path:
        raise FSChunkLoadError("config_path is not a valid path")
    try:
        data = read_config_file(config_path, show_path=False)
    except ConfigError as exc:
        raise FSChunkLoadError(str(exc)) from None
    try:
        cfg = LMCacheEngineConfig.from_mapping(data, "load-fs-chunks configuration")
    except ConfigError as exc:
        where = f" for key '{exc.key}'" if exc.key else ""
        raise FSChunkLoadError(f"Invalid configuration value{where}") from None
    url = cfg.get("remote_url")
    if not url or not str(url).startswith("fs://"):
        raise FSChunkLoadError("Configuration has no fs:// remote_url")
    try:
        directory = fs_url_path(str(url))
        st = os.stat(directory)
    except (ValueError, OSError):
        raise FSChunkLoadError("The fs:// directory named by remote_url does not exist") from None
    if not stat.S_ISDIR(st.st_mode):
        raise FSChunkLoadError("The fs:// remote_url does not name a directory")
    return FSStore(directory, create=False)


def _read(
    store: FSStore, name: str, allocator: Allocator
) -> tuple[ChunkBufferLike | None, ChunkHeader]:
    """The chunk file ``name``, verified, and its header (``None`` buffer: no memory).

    Raises:
        CorruptChunkError: a damaged file, or one whose name does not match its key.
        OSError: the file cannot be read.
    """
    buf, header = read_chunk_file(store.path / name, None, allocator)
    if chunk_filename(header.key) != name:
        if buf is not None:
            buf.unref()
        raise CorruptChunkError("file name does not match its key")
    return buf, header


def load_fs_chunks(
    manager: StorageManager,
    config_path: str,
    *,
    allocator: Allocator,
    namespace: str,
    fits: ChunkCheck | None = None,
    max_chunks: int | None = None,
    max_failed_keys: int = 10,
) -> dict[str, Any]:
    """Loads chunk files of the ``fs://`` store named in ``config_path`` into the CPU tier.

    Files are taken in name order, at most ``max_chunks`` of them; files of another
    model/worker (keys outside ``namespace``) are skipped.

    Args:
        manager: the tiers; its CPU tier receives the chunks.
        config_path: a configuration file whose ``remote_url`` is an ``fs://`` URL.
        allocator: where chunks are read to.
        namespace: this engine's key prefix.
        fits: whether a chunk's shape and dtype fit the registered cache (``None``: any).
        max_chunks: the most files read (``None``: all).
        max_failed_keys: the most failed keys listed.

    Returns:
        ``{"loaded_chunks", "total_files", "failed_keys", "failed_count", "skipped_files"}``.

    Raises:
        FSChunkLoadError: bad arguments, an unusable configuration file, no ``fs://``
            ``remote_url``, a missing store directory, or no CPU tier to load into.
    """
    if max_chunks is not None and max_chunks < 0:
        raise FSChunkLoadError("max_chunks must be >= 0")
    if max_failed_keys < 0:
        raise FSChunkLoadError("max_failed_keys must be >= 0")
    store = _store_of(config_path)
    cpu = manager.cpu
    if cpu is None or manager.is_bypassed(cpu.name):
        raise FSChunkLoadError("LocalCPUBackend is not available to load chunks into")
    if not cpu.hot_cache_enabled:
        raise FSChunkLoadError("Hot cache is disabled; enable it to load chunks")
    try:
        files = sorted(store.chunk_files())
    except OSError:
        raise FSChunkLoadError("The fs:// directory cannot be listed") from None
    out = _Outcome(max_failed_keys, total_files=len(files))
    prefix_q = chunk_filename(namespace)[: -len(CHUNK_SUFFIX)]
    for name in files if max_chunks is None else files[:max_chunks]:
        if not name.startswith("h-") and not name.startswith(prefix_q):
            out.skipped += 1
            continue
        try:
            buf, header = _read(store, name, allocator)
        except (CorruptChunkError, OSError):
            out.fail(name)
            continue
        if not header.key.startswith(namespace):
            if buf is not None:
                buf.unref()
            out.skipped += 1
            continue
        if buf is None:
            out.fail(name)
            continue
        try:
            ok = fits is None or fits(tuple(header.shape), header.dtype)
            ok = ok and cpu.put(header.key, buf)
        finally:
            buf.unref()
        if ok:
            out.loaded += 1
        else:
            out.fail(name)
    logger.info(
        "Loaded %d of %d fs chunk files (%d failed, %d skipped)",
        out.loaded,
        out.total_files,
        out.failed_count,
        out.skipped,
    )
    return out.as_dict()
