"""The engine's admin views and the ``fs://`` import, for the admin API.

Read-only views for ``/cache/kvcache/check``, ``/cache/kvcache/info`` and ``/meta`` (functions
of the registered caches), and :class:`EngineViews`, the base of
:class:`~lmcache_native.engine.CacheEngine` that offers them, with ``/cache/load-fs-chunks``,
as engine methods.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from lmcache_native import ops
from lmcache_native.engine.keys import ChunkNamer
from lmcache_native.engine.metadata import EngineMetadata
from lmcache_native.engine.slots import check_slot_mapping
from lmcache_native.engine.transfer import KVState
from lmcache_native.stats.metrics import EngineMetrics
from lmcache_native.stats.redact import redact_value
from lmcache_native.storage import StorageManager
from lmcache_native.storage.base import ChunkBufferLike
from lmcache_native.storage.fs_import import load_fs_chunks


def kv_checksums(
    kv: KVState,
    slot_mapping: torch.Tensor,
    chunk_size: int,
    layerwise: bool,
    metrics: EngineMetrics | None = None,
) -> list[str] | dict[str, list[str]]:
    """MD5 of the KV at ``slot_mapping``, per chunk of ``chunk_size`` slots.

    For one layer and chunk: the chunk's K rows in slot order, then its V rows, raw bytes.
    Non-layerwise: per chunk, the MD5 of the concatenated per-layer hex digests.

    Args:
        kv: the registered caches.
        slot_mapping: ``[num_slots_checked]`` int slots, each inside the cache (no -1).
        chunk_size: slots per checksummed chunk (>= 1).
        layerwise: per-layer lists keyed by layer name instead of one list.
        metrics: where the checksum time is observed.

    Raises:
        InvalidSlotsError: a slot outside ``[0, num_slots)``.
        ValueError: ``chunk_size`` < 1.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    slots = check_slot_mapping(slot_mapping, None, kv.paged.num_slots, allow_padding=False)
    t0 = time.perf_counter()
    per_layer, combined = ops.kv_chunk_md5(kv.caches, slots, int(chunk_size), kv.layout)
    if metrics is not None:
        metrics.checksum_seconds.observe(time.perf_counter() - t0)
    if layerwise:
        return {name: list(per_layer[i]) for i, name in enumerate(kv.names)}
    return list(combined)


def kv_info(kv: KVState) -> dict[str, Any]:
    """The registered caches: ``{"num_layers", "layers": {name: {shape, dtype, device}}}``."""
    return {
        "num_layers": len(kv.caches),
        "layers": {
            name: {
                "shape": [int(s) for s in t.shape],
                "dtype": str(t.dtype),
                "device": str(t.device),
            }
            for name, t in zip(kv.names, kv.caches, strict=True)
        },
    }


def metadata_dict(
    md: EngineMetadata,
    kv: KVState | None,
    *,
    chunk_size: int,
    key_prefix: str,
    backends: list[str],
    hash_algorithm: str,
) -> dict[str, Any]:
    """Engine metadata for ``/meta`` (JSON-able).

    Args:
        md: the engine's metadata.
        kv: the registered caches, if any.
        chunk_size: tokens per chunk.
        key_prefix: the engine's key prefix.
        backends: tier names in order.
        hash_algorithm: ``pre_caching_hash_algorithm`` as the hasher resolved it.
    """
    out = md.to_dict()
    out["chunk_size"] = chunk_size
    out["key_prefix"] = key_prefix
    out["backends"] = backends
    out["pre_caching_hash_algorithm"] = hash_algorithm
    # LMCache's /meta fields: one node unless the host says otherwise; secrets in the
    # connector's extra config are masked.
    out.setdefault("engine_id", md.extra.get("vllm_engine_id") or "lmcache_default_instance")
    out.setdefault("local_worker_id", md.worker_id)
    out.setdefault("local_world_size", md.world_size)
    out.setdefault("first_rank", 0)
    out["kv_connector_extra_config"] = redact_value(
        "kv_connector_extra_config", dict(md.extra.get("kv_connector_extra_config") or {})
    )
    if kv is None:
        out.update({"layout": None, "layer_names": [], "num_layers": 0, "num_slots": 0})
        return out
    p = kv.paged
    if out.get("kv_shape") is None:
        out["kv_shape"] = [p.num_layers, p.num_kv, chunk_size, p.num_heads, p.head_size]
    if out.get("kv_dtype") is None:
        out["kv_dtype"] = str(p.dtype)
    out.update(
        {
            "layout": kv.layout,
            "layer_names": list(kv.names),
            "num_layers": p.num_layers,
            "num_kv": p.num_kv,
            "num_blocks": p.num_blocks,
            "block_size": p.block_size,
            "num_heads": p.num_heads,
            "head_size": p.head_size,
            "num_slots": p.num_slots,
            "kv_cache_shape": [int(s) for s in kv.caches[0].shape],
            "chunk_shape": list(p.chunk_shape(chunk_size)),
            "chunk_bytes": p.num_kv * p.num_layers * chunk_size * p.row_elems * p.elem_size,
            "device": str(p.device),
            "use_mla": kv.layout == "mla",
        }
    )
    return out


class EngineViews:
    """Checksums, cache info, ``/meta`` and the ``fs://`` import as engine methods."""

    _kv: KVState | None
    _metadata: EngineMetadata
    _manager: StorageManager
    _names: ChunkNamer
    _namespace: str
    metrics: EngineMetrics

    def _require_kv(self) -> KVState:
        raise NotImplementedError  # pragma: no cover - CacheEngine's

    def _allocate(self, shape: Sequence[int], dtype: torch.dtype) -> ChunkBufferLike | None:
        raise NotImplementedError  # pragma: no cover - CacheEngine's

    def kv_checksums(
        self, slot_mapping: torch.Tensor, chunk_size: int, layerwise: bool
    ) -> list[str] | dict[str, list[str]]:
        """MD5 of the KV at ``slot_mapping``, per chunk (see :func:`kv_checksums`).

        Raises:
            NoKVCacheError: no caches registered.
            InvalidSlotsError: a slot outside ``[0, num_slots)``.
            ValueError: ``chunk_size`` < 1.
        """
        return kv_checksums(self._require_kv(), slot_mapping, chunk_size, layerwise, self.metrics)

    def kv_info(self) -> dict[str, Any]:
        """The registered caches (see :func:`kv_info`); raises NoKVCacheError."""
        return kv_info(self._require_kv())

    def metadata_dict(self) -> dict[str, Any]:
        """Engine metadata for ``/meta`` (JSON-able)."""
        return metadata_dict(
            self._metadata,
            self._kv,
            chunk_size=self._names.chunk_size,
            key_prefix=self._namespace,
            backends=self._manager.backend_names(),
            hash_algorithm=self._names.hasher.algorithm,
        )

    def load_fs_chunks(
        self, config_path: str, max_chunks: int | None = None, max_failed_keys: int = 10
    ) -> dict[str, Any]:
        """Loads chunk files of an ``fs://`` store into the CPU tier.

        See :func:`lmcache_native.storage.fs_import.load_fs_chunks`; chunks that do not fit
        the registered caches fail.

        Raises:
            FSChunkLoadError: bad arguments, an unusable configuration file, no ``fs://``
                ``remote_url``, a missing store directory, or no CPU tier to load into.
        """
        kv = self._kv
        return load_fs_chunks(
            self._manager,
            config_path,
            allocator=self._allocate,
            namespace=self._namespace,
            fits=kv.fits if kv is not None else None,
            max_chunks=max_chunks,
            max_failed_keys=max_failed_keys,
        )
