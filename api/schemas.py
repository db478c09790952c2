"""msgspec Structs for every JSON body the admin API sends or accepts.

Field names follow ``inference_apis.rst`` exactly; fields the spec does not name are additions
(never replacements) and are documented on each Struct.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec


class ErrorBody(msgspec.Struct):
    """Every error answer: ``{"error": <short title>, "message": <what went wrong>}``."""

    error: str
    message: str


class FsChunksErrorBody(msgspec.Struct):
    """Error answer of ``/cache/load-fs-chunks``; echoes the requested ``config_path``."""

    error: str
    message: str
    config_path: str | None = None


class InferenceVersion(msgspec.Struct):
    """``GET /inference_version``; ``vllm_version`` is null when vLLM is not installed."""

    vllm_version: str | None


class InferenceInfo(msgspec.Struct):
    """``GET /inference_info``: the inference framework and the engine behind this server.

    Attributes:
        vllm_version: installed vLLM version, or null.
        lmcache_native_version: this package's version.
        commit_id: the commit this package was built from ("NA" when unknown).
        engine: the engine's metadata (``/meta``), or null when no engine is attached.
        kv_cache: the registered KV cache (``/cache/kvcache/info`` without ``status``), or null.
        inference: details supplied by the host process (e.g. the vLLM worker's config), or null.
    """

    vllm_version: str | None
    lmcache_native_version: str
    commit_id: str
    engine: dict[str, Any] | None
    kv_cache: dict[str, Any] | None
    inference: dict[str, Any] | None


class ConfUpdateResult(msgspec.Struct):
    """``POST /conf`` (HTTP 200): the keys that were set, with their stored values."""

    updated: dict[str, Any]


class ConfUpdateError(msgspec.Struct):
    """``POST /conf`` (HTTP 400).

    The ``error``/``message`` of every error body, plus, when some keys were refused, the spec's
    ``updated`` and ``errors`` (key -> reason).

    ``updated``/``errors`` are absent when the body itself was refused (not a JSON object).
    """

    error: str
    message: str
    updated: dict[str, Any] = msgspec.field(default_factory=dict)
    errors: dict[str, str] = msgspec.field(default_factory=dict)


class StatusMessage(msgspec.Struct):
    """``{"status": "success", "message": ...}`` (chunk statistics start/stop/reset)."""

    status: str
    message: str


class ClearResult(msgspec.Struct):
    """``DELETE /cache/clear``.

    Attributes:
        status: "success".
        num_removed: chunks removed over all cleared tiers.
        removed_by_location: addition: chunks removed per tier name.
        unknown_locations: addition: named locations this engine has no tier for (skipped,
            as LMCache skips them).
    """

    status: str
    num_removed: int
    removed_by_location: dict[str, int]
    unknown_locations: list[str] = msgspec.field(default_factory=list)


class StoreResult(msgspec.Struct):
    """``POST /cache/store``.

    Attributes:
        status: "success".
        num_tokens: tokens in the request.
        num_stored_tokens: addition: tokens newly stored (0 when frozen, already stored, ...).
        num_skipped_chunks: addition: chunks not stored (already present, partial tail, ...).
        reason: addition: why fewer tokens than requested were stored, or null.
    """

    status: str
    num_tokens: int
    num_stored_tokens: int
    num_skipped_chunks: int
    reason: str | None


class RetrieveResult(msgspec.Struct):
    """``POST /cache/retrieve``: ``num_retrieved`` tokens were copied into the KV cache."""

    status: str
    num_tokens: int
    num_retrieved: int


class KVCacheCheckResult(msgspec.Struct):
    """``GET /cache/kvcache/check``.

    ``chunk_checksums`` is a list of per-chunk MD5 hex digests (all layers combined) when
    ``layerwise`` is false, else a dict from layer name to that layer's per-chunk digests.
    """

    status: str
    slot_mapping_ranges: list[int | list[int]]
    chunk_size: int
    num_chunks: int
    chunk_checksums: list[str] | dict[str, list[str]]
    layerwise: bool


class RecordSlotResult(msgspec.Struct):
    """``POST /cache/kvcache/record_slot``."""

    status: str
    kvcache_check_log_enabled: bool


class LayerInfo(msgspec.Struct):
    """One layer of ``/cache/kvcache/info``."""

    shape: list[int]
    dtype: str
    device: str


class KVCacheInfo(msgspec.Struct):
    """``GET /cache/kvcache/info``: layers in layer order."""

    status: str
    num_layers: int
    layers: dict[str, LayerInfo]


class LoadFsChunksRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /cache/load-fs-chunks``.

    Attributes:
        config_path: an LMCache YAML/JSON configuration file naming an ``fs://`` remote_url.
        max_chunks: load at most this many chunk files (all when omitted).
        max_failed_keys: report at most this many failed keys.
    """

    config_path: Annotated[str, msgspec.Meta(min_length=1)]
    max_chunks: Annotated[int, msgspec.Meta(ge=0)] | None = None
    max_failed_keys: Annotated[int, msgspec.Meta(ge=0)] = 10


class LoadFsChunksResult(msgspec.Struct):
    """``POST /cache/load-fs-chunks``.

    Attributes:
        status: "success".
        loaded_chunks: chunk files verified and put into the CPU tier.
        total_files: chunk files in the ``fs://`` directory.
        failed_keys: keys of files that failed verification (at most ``max_failed_keys``).
        config_path: the requested configuration file.
        failed_count: addition: how many files failed in all.
        skipped_files: addition: files of another model or worker, left alone.
    """

    status: str
    loaded_chunks: int
    total_files: int
    failed_keys: list[str]
    config_path: str
    failed_count: int
    skipped_files: int


class FreezeStatus(msgspec.Struct):
    """Freeze enable/disable/status."""

    status: str
    freeze: bool
    message: str


class HotCacheStatus(msgspec.Struct):
    """Hot cache enable/disable/status."""

    status: str
    hot_cache: bool
    message: str


class ChunkStatisticsStatus(msgspec.Struct):
    """``GET /chunk_statistics/status``.

    The spec's fields plus, as additions, ``duplicate_chunks``, ``reuse_rate`` (duplicate /
    total, 0 when nothing was seen) and ``requests`` (lookups counted). LMCache's code names
    ``is_collecting`` ``enabled`` and ``requests`` ``total_requests``: both names are sent.
    """

    enabled: bool
    total_requests: int
    is_collecting: bool
    total_chunks: int
    unique_chunks: int
    duplicate_chunks: int
    reuse_rate: float
    requests: int
    timestamp: float
    auto_exit_enabled: bool
    auto_exit_timeout_hours: float
    auto_exit_target_unique_chunks: int | None


class BypassList(msgspec.Struct):
    """``GET /bypass/list``."""

    status: str
    bypassed_backends: list[str]
    all_backends: list[str]


class BypassAddResult(msgspec.Struct):
    """``PUT /bypass/add``."""

    status: str
    backend_name: str
    bypassed: bool
    was_already_bypassed: bool
    bypassed_backends: list[str]


class BypassRemoveResult(msgspec.Struct):
    """``PUT /bypass/remove``."""

    status: str
    backend_name: str
    bypassed: bool
    was_bypassed: bool
    bypassed_backends: list[str]


class Health(msgspec.Struct):
    """``GET /health``: liveness, plus whether an engine and a KV cache are attached."""

    status: str
    engine: bool
    kv_cache_registered: bool


class BackendInfo(msgspec.Struct):
    """One tier of ``GET /backends`` (LMCache maps each name to its class name, ``type`` here).

    Attributes:
        name: the tier's name (the key, and what ``bypass`` and ``/cache/clear`` take).
        type: the tier's class name (LMCache's value for the name).
        capacity_bytes: capacity in bytes (0: unbounded or unknown, e.g. a remote server).
        used_bytes: bytes held now.
        usage: ``used_bytes / capacity_bytes`` (0 when the capacity is 0).
        entries: chunks held now (0 when the tier cannot count them cheaply).
        healthy: false while the tier is down (a remote server that stopped answering).
        health: "healthy" or "down".
        bypassed: whether the tier is bypassed (``/bypass``).
        stats: the tier's counters (hits, misses, puts, evictions, errors, ...).
    """

    name: str
    type: str
    capacity_bytes: int
    used_bytes: int
    usage: float
    entries: int
    healthy: bool
    health: str
    bypassed: bool
    stats: dict[str, int]
