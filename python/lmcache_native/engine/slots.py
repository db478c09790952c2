"""Slot mappings: the one check of a slot mapping, and the slot arithmetic of batched copies.

A slot mapping names, per token, the row of vLLM's paged cache that holds (or receives) the
token's KV: ``block * block_size + offset``, in ``[0, num_slots)``; ``-1`` marks padding, a
token whose KV is not in the cache. :func:`check_slot_mapping` is the one validation of a slot
mapping for the engine, the admin API and the vLLM connector.
"""

from __future__ import annotations

import array
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lmcache_native.engine.keys import ChunkSpan
from lmcache_native.errors import InvalidSlotsError

#: Out-of-range slots named in an error message; the rest are counted.
MAX_INVALID_SHOWN = 10


def check_slot_mapping(
    slot_mapping: torch.Tensor | Sequence[int],
    num_tokens: int | None,
    num_slots: int,
    *,
    allow_padding: bool = True,
) -> torch.Tensor:
    """Validates a slot mapping and returns it as a CPU int64 tensor.

    Args:
        slot_mapping: ``[num_tokens]`` integer slots (a tensor on any device, or a sequence).
        num_tokens: the number of slots expected; ``None`` accepts any length.
        num_slots: slots per layer of the paged cache.
        allow_padding: whether ``-1`` (padding) is allowed. When not, the error names the
            out-of-range slots (at most :data:`MAX_INVALID_SHOWN`) and the valid range.

    Returns:
        The slots as a CPU int64 tensor (a copy when ``slot_mapping`` was not one already).

    Raises:
        ValueError: not one-dimensional, or not ``num_tokens`` slots.
        TypeError: not integers.
        InvalidSlotsError: a slot outside ``[-1, num_slots)`` (``[0, num_slots)`` without
            padding).
    """
    if not isinstance(slot_mapping, torch.Tensor):
        slot_mapping = torch.as_tensor(slot_mapping, dtype=torch.int64)
    if slot_mapping.dim() != 1:
        raise ValueError(f"slot_mapping must be 1-D, got shape {tuple(slot_mapping.shape)}")
    if slot_mapping.dtype.is_floating_point or slot_mapping.dtype == torch.bool:
        raise TypeError(f"slot_mapping must be integers, got {slot_mapping.dtype}")
    if num_tokens is not None and slot_mapping.numel() != num_tokens:
        raise ValueError(f"slot_mapping has {slot_mapping.numel()} slots for {num_tokens} tokens")
    slots = slot_mapping.to(device="cpu", dtype=torch.int64)
    if not slots.numel():
        return slots
    lowest = -1 if allow_padding else 0
    lo, hi = int(slots.min()), int(slots.max())
    if lo >= lowest and hi < num_slots:
        return slots
    if allow_padding:
        raise InvalidSlotsError(
            f"slot_mapping holds slots outside [-1, {num_slots}): min {lo}, max {hi}"
        )
    bad = slots[(slots < 0) | (slots >= num_slots)]
    shown = bad[:MAX_INVALID_SHOWN].tolist()
    more = f" (and {bad.numel() - len(shown)} more)" if bad.numel() > len(shown) else ""
    raise InvalidSlotsError(
        f"Slot indices out of bounds: {shown}{more}. Valid range: 0 to {num_slots - 1}"
    )


def padding_counts(slots: torch.Tensor) -> list[int]:
    """``out[i]`` = padding slots (-1) among the first ``i`` slots (prefix sums, length n+1)."""
    pad = (slots < 0).numpy()
    return [0, *np.cumsum(pad, dtype=np.int64).tolist()]


def batch_slots(slot_mapping: torch.Tensor, spans: Sequence[ChunkSpan]) -> torch.Tensor:
    """The slots of ``spans``' tokens, in order.

    A view when the spans follow each other (the usual case), else a concatenation.
    """
    if all(a.end == b.start for a, b in itertools.pairwise(spans)):
        return slot_mapping[spans[0].start : spans[-1].end]
    return torch.cat([slot_mapping[s.start : s.end] for s in spans])


def list_to_array(tokens: Any) -> Any:
    """A list of ints as an int64 array, anything else unchanged.

    Goes through ``array.array`` (half the time numpy takes to infer a dtype for a 32K-token
    prompt); a list that is not all ints within int64 is returned unchanged.
    """
    if isinstance(tokens, list):
        try:
            return np.frombuffer(array.array("q", tokens), dtype=np.int64)
        except (TypeError, OverflowError):
            return tokens
    return tokens
