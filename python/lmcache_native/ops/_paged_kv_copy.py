"""Argument checks and dispatch shared by ``paged_kv_gather`` and ``paged_kv_scatter``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmcache_native import _native
from lmcache_native.ops._layout import PagedKV, describe, stream_of

_SLOT_DTYPES = (torch.int32, torch.int64)


def check_slot_mapping(slot_mapping: object, kv: PagedKV) -> torch.Tensor:
    """Validates ``slot_mapping`` and returns it contiguous on the cache's device.

    Only the argument is checked here; slot values are checked by the kernels before they
    write anything (``IndexError``).

    Raises:
        TypeError: not a tensor, or not int32/int64.
        ValueError: not 1-D, or on a device the cache cannot use.
    """
    if not isinstance(slot_mapping, torch.Tensor):
        raise TypeError(f"slot_mapping must be a torch.Tensor, got {type(slot_mapping).__name__}")
    if slot_mapping.dtype not in _SLOT_DTYPES:
        raise TypeError(f"slot_mapping must be int32 or int64, got {slot_mapping.dtype}")
    if slot_mapping.dim() != 1:
        raise ValueError(f"slot_mapping must be 1-D, got shape {tuple(slot_mapping.shape)}")
    dev = slot_mapping.device
    if dev.type == "cpu":
        if kv.device.type != "cpu":
            slot_mapping = slot_mapping.to(kv.device)
    elif dev != kv.device:
        raise ValueError(
            f"slot_mapping must be on the cache's device ({kv.device}) or the CPU, got {dev}"
        )
    return slot_mapping.contiguous()


def check_chunk(name: str, chunk: object, kv: PagedKV, num_tokens: int) -> torch.Tensor:
    """Validates a chunk buffer (``out`` of gather, ``chunk`` of scatter) against the cache.

    Raises:
        TypeError: not a tensor, or a dtype other than the cache's.
        ValueError: wrong shape, not contiguous, or on a device the cache cannot use.
    """
    if not isinstance(chunk, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(chunk).__name__}")
    if chunk.dtype != kv.dtype:
        raise TypeError(f"{name} dtype {chunk.dtype} must match the kv_caches dtype {kv.dtype}")
    expected = kv.chunk_shape(num_tokens)
    if tuple(chunk.shape) != expected:
        raise ValueError(
            f"{name} must have shape {expected} (num_kv, num_layers, num_tokens, "
            f"num_heads * head_size), got {tuple(chunk.shape)}"
        )
    if not chunk.is_contiguous():
        raise ValueError(f"{name} must be contiguous, got strides {chunk.stride()}")
    if kv.device.type == "cpu":
        if chunk.device.type != "cpu":
            raise ValueError(f"{name} must be on the CPU for a CPU cache, got {chunk.device}")
    elif chunk.device.type == "cpu":
        if chunk.numel() > 0 and not chunk.is_pinned():
            raise ValueError(
                f"{name} on the CPU must be pinned memory (tensor.pin_memory()) for a CUDA cache"
            )
    elif chunk.device != kv.device:
        raise ValueError(
            f"{name} must be on the cache's device ({kv.device}) or pinned CPU memory, "
            f"got {chunk.device}"
        )
    return chunk


def prepare(
    op: str,
    name: str,
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: object,
    chunk: object,
    layout: str,
) -> tuple[PagedKV, torch.Tensor, torch.Tensor, dict[str, int]]:
    """Checks every argument of a paged copy and returns what the binding needs.

    Returns:
        ``(kv, slots, chunk, launch)`` where ``launch`` holds ``device`` (-1 for the CPU),
        ``stream`` and ``scratch`` (address of an int64 device word for the CUDA slot check).
    """
    kv = describe(kv_caches, layout)
    slots = check_slot_mapping(slot_mapping, kv)
    chunk_t = check_chunk(name, chunk, kv, slots.numel())
    if kv.device.type == "cpu":
        return kv, slots, chunk_t, {"device": -1, "stream": 0, "scratch": 0}
    if kv.device.type != "cuda":
        raise ValueError(f"kv_caches must be on the CPU or a CUDA device, got {kv.device}")
    _native.require_cuda(op)
    scratch = torch.empty(1, dtype=torch.int64, device=kv.device)
    # NOTE: the binding waits for the stream before returning, so `scratch` outlives its use.
    launch = {
        "device": int(kv.device.index if kv.device.index is not None else 0),
        "stream": stream_of(kv.device),
        "scratch": int(scratch.data_ptr()),
    }
    return kv, slots, chunk_t, launch
