"""Cache Operations: clear, mock store/retrieve, checksums, slot recording, KV info, fs chunks.

Every handler that touches the engine is synchronous and runs on a worker thread
(``sync_to_thread=True``), so copies and checksums never block the event loop.
"""

from __future__ import annotations

import re
from typing import Annotated

import torch
from litestar import Controller, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, Parameter
from lmcache_native import ops
from lmcache_native.api.deps import EngineDep
from lmcache_native.api.errors import ApiError, bad_request, error_responses
from lmcache_native.api.schemas import (
    ClearResult,
    FsChunksErrorBody,
    KVCacheCheckResult,
    KVCacheInfo,
    LayerInfo,
    LoadFsChunksRequest,
    LoadFsChunksResult,
    RecordSlotResult,
    RetrieveResult,
    StoreResult,
)
from lmcache_native.engine.slots import check_slot_mapping
from lmcache_native.errors import LMCacheError

from ..routes import optional, route

# NOTE: at most 40 digits (int64 needs 19): int() of a longer digit string is refused by
# Python's int_max_str_digits (ValueError) or costs quadratic time.
_INT = re.compile(r"[+-]?[0-9]{1,40}", re.ASCII)
_MAX_TOKEN_ID = (1 << 63) - 1

# Patterns document the grammar in the OpenAPI document only (``schema_extra``); the handlers
# parse the values themselves so that errors carry the spec's titles.
_DIGITS_PAIR = r"^\s*[0-9]+\s*,\s*[0-9]+\s*$"
_DIGITS_LIST = r"^\s*[0-9]+\s*(,\s*[0-9]+\s*)*$"
_SLOT_ITEM = r"([0-9]+|\[\s*[0-9]+\s*,\s*[0-9]+\s*\])"
SLOT_MAPPING_PATTERN = rf"^\s*({_SLOT_ITEM}\s*)?(,\s*({_SLOT_ITEM}\s*)?)*$"
_BOOL_TEXT = r"^\s*([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])\s*$"

_TOKENS_MOCK = optional(
    (
        'Two comma-separated numbers "start,end" (start < end): tokens start..end-1 at slots '
        "0..n-1. Give tokens_mock or tokens_input."
    ),
    pattern=_DIGITS_PAIR,
)
_LOCATIONS = optional(
    "Tiers to clear (repeat the parameter); all tiers when omitted.",
    items={"type": "string", "minLength": 1},
)
_TOKENS_INPUT = optional(
    "Comma-separated token ids, at slots 0..n-1. Give tokens_mock or tokens_input.",
    pattern=_DIGITS_LIST,
)


def _parse_int(text: str) -> int | None:
    text = text.strip()
    return int(text) if _INT.fullmatch(text) else None


def parse_tokens(tokens_mock: str | None, tokens_input: str | None, num_slots: int) -> torch.Tensor:
    """The token ids of a store/retrieve request, bounded by the KV cache size.

    Args:
        tokens_mock: ``"start,end"`` (tokens ``start..end-1``), or ``None``.
        tokens_input: comma-separated token ids, or ``None``.
        num_slots: slots in the KV cache; the tokens occupy slots ``0..n-1``.

    Returns:
        int64 CPU tensor ``[n]`` of token ids.

    Raises:
        ApiError: 400 with the spec's titles ("Missing parameters", "Invalid tokens_mock
            format", ...) before anything large is allocated.
    """
    if not tokens_mock and not tokens_input:
        raise bad_request("Missing parameters", "Must specify either tokens_input or tokens_mock")
    if tokens_mock and tokens_input:
        raise bad_request(
            "Invalid parameters", "Specify only one of tokens_input or tokens_mock, not both"
        )
    if tokens_mock:
        parts = tokens_mock.split(",")
        values = [_parse_int(p) for p in parts] if len(parts) == 2 else []
        if len(values) != 2 or values[0] is None or values[1] is None:
            raise bad_request(
                "Invalid tokens_mock format",
                "tokens_mock must be 'start,end' with two integers, e.g. '0,100'",
            )
        start, end = values[0], values[1]
        if start < 0 or start >= end or end - 1 > _MAX_TOKEN_ID:
            raise bad_request(
                "Invalid tokens_mock format",
                f"tokens_mock must be 'start,end' with 0 <= start < end <= 2**63, "
                f"got {start},{end}",
            )
        if end - start > num_slots:
            raise bad_request(
                "Invalid tokens_mock range",
                f"tokens_mock asks for {end - start} tokens, but the KV cache holds only "
                f"{num_slots} slots",
            )
        return torch.arange(start, end, dtype=torch.int64)
    assert tokens_input is not None
    count = tokens_input.count(",") + 1
    if count > num_slots:
        # Counted before splitting, so a huge string is refused without allocating per item.
        raise bad_request(
            "Invalid tokens_input range",
            f"tokens_input has {count} tokens, but the KV cache holds only {num_slots} slots",
        )
    ids = [_parse_int(p) for p in tokens_input.split(",")]
    if any(t is None or t < 0 or t > _MAX_TOKEN_ID for t in ids):
        raise bad_request(
            "Invalid tokens_input format",
            "tokens_input must be comma-separated non-negative integer token ids, e.g. '1,2,3'",
        )
    return torch.tensor(ids, dtype=torch.int64)


def parse_enabled(enabled: str) -> bool:
    """``"true"``/``"false"`` in any case -> bool; anything else is a 400."""
    value = enabled.strip().lower()
    if value == "true":
        return True
    if value == "false":
        return False
    raise bad_request("Invalid parameter", "enabled must be 'true' or 'false'")


def _provide_tokens(
    kv_engine: EngineDep,
    tokens_mock: str | None = _TOKENS_MOCK,
    tokens_input: str | None = _TOKENS_INPUT,
) -> torch.Tensor:
    """The ``tokens`` of ``/cache/store`` and ``/cache/retrieve``, from their query."""
    return parse_tokens(tokens_mock, tokens_input, kv_engine.num_slots)


def _first_slots(tokens: torch.Tensor) -> torch.Tensor:
    """Slots ``0..n-1`` for ``n`` tokens: where the mock store/retrieve put them."""
    return torch.arange(tokens.numel(), dtype=torch.int64)


MockTokensDep = NamedDependency[torch.Tensor]
_DEPENDENCIES = {"tokens": Provide(_provide_tokens, sync_to_thread=False)}


class CacheController(Controller):
    """Operations on the cached KV data and on the registered KV cache."""

    path = "/cache"
    tags = ("cache",)
    dependencies = _DEPENDENCIES

    @route(delete, "/clear", "Clear Cache", 400, 503, error_title="Failed to clear cache")
    def clear(
        self,
        engine: EngineDep,
        locations: list[str] | None = _LOCATIONS,
    ) -> ClearResult:
        """Removes cached chunks from the named tiers (all tiers when none is named).

        Names that are not tiers of this engine are skipped, as LMCache skips them, and listed
        in ``unknown_locations``.
        """
        unknown: list[str] = []
        targets: list[str] | None = None
        if locations:
            tiers = set(engine.all_backends())
            named = list(dict.fromkeys(locations))
            targets = [n for n in named if n in tiers]
            unknown = [n for n in named if n not in tiers]
        removed = engine.clear(targets) if targets is None or targets else {}
        by_location = {str(k): int(v) for k, v in removed.items()}
        return ClearResult(
            status="success",
            num_removed=sum(by_location.values()),
            removed_by_location=by_location,
            unknown_locations=unknown,
        )

    @route(post, "/store", "Store KV Cache", 400, 503, error_title="Failed to store cache")
    def store(self, kv_engine: EngineDep, tokens: MockTokensDep) -> StoreResult:
        """Stores the KV of slots 0..n-1 of the registered cache under the given tokens."""
        result = kv_engine.store(tokens, _first_slots(tokens))
        return StoreResult(
            status="success",
            num_tokens=int(tokens.numel()),
            num_stored_tokens=int(result.num_stored_tokens),
            num_skipped_chunks=int(result.num_skipped_chunks),
            reason=result.reason,
        )

    @route(post, "/retrieve", "Retrieve KV Cache", 400, 503, error_title="Failed to retrieve cache")
    def retrieve(self, kv_engine: EngineDep, tokens: MockTokensDep) -> RetrieveResult:
        """Loads the cached KV of the given tokens into slots 0..n-1 of the registered cache."""
        result = kv_engine.retrieve(tokens, _first_slots(tokens))
        return RetrieveResult("success", int(tokens.numel()), int(result.num_retrieved))

    @route(
        get,
        "/kvcache/check",
        "KVCache Checksum",
        400,
        414,
        503,
        error_title="Failed to compute checksums",
    )
    def kvcache_check(
        self,
        kv_engine: EngineDep,
        slot_mapping: Annotated[
            str,
            Parameter(
                description=(
                    'Slots, comma-separated, "[a,b]" inclusive ranges allowed: '
                    '"1,2,3,[9,12],17". Order is kept; repeats are allowed; at most as many '
                    "slots as the KV cache holds."
                ),
                schema_extra={"pattern": SLOT_MAPPING_PATTERN, "minLength": 1},
            ),
        ],
        chunk_size: Annotated[
            int, Parameter(description="Slots per checksummed chunk.", schema_extra={"minimum": 1})
        ],
        layerwise: bool = Parameter(
            default=False, required=False, description="Per-layer checksums per chunk."
        ),
    ) -> KVCacheCheckResult:
        """MD5 of the KV at the given slots, per chunk (all layers) or per layer and chunk."""
        if not slot_mapping:
            raise bad_request("Missing parameters", "slot_mapping parameter is required")
        if chunk_size <= 0:
            raise bad_request("Invalid chunk_size", "chunk_size must be a positive integer")
        num_slots = kv_engine.num_slots
        try:
            slots = ops.parse_slot_mapping(slot_mapping, num_slots)
        except (ValueError, OverflowError) as exc:
            raise bad_request("Invalid slot_mapping format", str(exc)) from exc
        if slots.numel() == 0:
            raise bad_request("Invalid slot_mapping format", "slot_mapping contains no slots")
        # InvalidSlotsError names the out-of-range slots; errors.py answers it 400.
        slots = check_slot_mapping(slots, None, num_slots, allow_padding=False)
        # chunk_size beyond the slot count is one chunk; clamp so no huge value reaches C++.
        effective = min(int(chunk_size), int(slots.numel()))
        checksums = kv_engine.kv_checksums(slots, effective, layerwise)
        if layerwise:
            assert isinstance(checksums, dict)
            per_layer = {str(k): list(v) for k, v in checksums.items()}
            num_chunks = len(next(iter(per_layer.values()), []))
            result: list[str] | dict[str, list[str]] = per_layer
        else:
            assert isinstance(checksums, list)
            result = list(checksums)
            num_chunks = len(result)
        return KVCacheCheckResult(
            status="success",
            slot_mapping_ranges=ops.compress_slot_mapping(slots),
            chunk_size=int(chunk_size),
            num_chunks=num_chunks,
            chunk_checksums=result,
            layerwise=bool(layerwise),
        )

    @route(
        post,
        "/kvcache/record_slot",
        "Toggle Slot Logging",
        400,
        503,
        error_title="Failed to set record slot status",
    )
    def kvcache_record_slot(
        self,
        engine: EngineDep,
        enabled: str | None = optional(
            '"true" or "false" (any case); omit to query the current status.', pattern=_BOOL_TEXT
        ),
    ) -> RecordSlotResult:
        """Turns logging of store/retrieve slot mappings on or off, or reports it."""
        if enabled is not None:
            engine.set_record_slot(parse_enabled(enabled))
        return RecordSlotResult(
            status="success", kvcache_check_log_enabled=bool(engine.record_slot_enabled)
        )

    @route(
        get, "/kvcache/info", "KVCache Information", 503, error_title="Failed to get kvcache info"
    )
    def kvcache_info(self, kv_engine: EngineDep) -> KVCacheInfo:
        """Layers of the registered KV cache: shape, dtype, device."""
        info = kv_engine.kv_info()
        layers = {
            str(name): LayerInfo(
                shape=[int(x) for x in layer["shape"]],
                dtype=str(layer["dtype"]),
                device=str(layer["device"]),
            )
            for name, layer in info["layers"].items()
        }
        return KVCacheInfo(status="success", num_layers=int(info["num_layers"]), layers=layers)

    @route(
        post,
        "/load-fs-chunks",
        "Load FS Chunks",
        error_title="Failed to load chunks from FSConnector",
        tags=["cache-management"],
        responses=error_responses(
            413,
            415,
            503,
            s400=ResponseSpec(
                data_container=FsChunksErrorBody,
                description="The config file or the request is invalid",
                generate_examples=False,
            ),
        ),
    )
    def load_fs_chunks(
        self, engine: EngineDep, data: JSONBody[LoadFsChunksRequest]
    ) -> LoadFsChunksResult:
        """Loads chunk files of the ``fs://`` remote named in a config file into the CPU tier."""
        try:
            out = engine.load_fs_chunks(data.config_path, data.max_chunks, data.max_failed_keys)
        except LMCacheError as exc:
            raise ApiError(
                400,
                "Failed to load chunks from FSConnector",
                str(exc),
                config_path=data.config_path,
            ) from exc
        return LoadFsChunksResult(
            status="success",
            loaded_chunks=int(out["loaded_chunks"]),
            total_files=int(out["total_files"]),
            failed_keys=[str(k) for k in out["failed_keys"]],
            config_path=data.config_path,
            failed_count=int(out.get("failed_count", len(out["failed_keys"]))),
            skipped_files=int(out.get("skipped_files", 0)),
        )
