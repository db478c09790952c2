"""``slot_ranges``: the admin API's slot strings <-> int64 slot tensors.

``"1,2,3,[9,12],17,19"``: whitespace is ignored, ``[a,b]`` is inclusive, order is kept, nothing
is deduplicated and empty items are skipped. Parsing validates and counts in C++ before it
allocates anything, so an over-long request fails in microseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from lmcache_native import _native
from lmcache_native.ops._layout import int64_slots, stream_of

__all__ = [
    "compress_slot_mapping",
    "compress_slot_ranges",
    "expand_slot_ranges",
    "parse_slot_mapping",
    "parse_slot_ranges",
]

# Totals beyond this cannot be a real slot count (and would overflow int64 offsets).
_MAX_TOTAL = 1 << 62


def _check_text(text: str, max_slots: int) -> str:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if isinstance(max_slots, bool) or not isinstance(max_slots, int):
        raise TypeError(f"max_slots must be an int, got {type(max_slots).__name__}")
    if max_slots < 0:
        raise ValueError(f"max_slots must be >= 0, got {max_slots}")
    if not text.isascii():
        # NOTE: the native parser knows ASCII whitespace only; Unicode whitespace is removed
        # here (as str.split() does in the reference), anything else non-ASCII is rejected
        # there with its position in this stripped text.
        text = "".join(text.split())
    return text


def parse_slot_mapping(text: str, max_slots: int) -> torch.Tensor:
    """Parses a slot string into slots.

    Args:
        text: e.g. ``"1,2,3,[9,12],17,19"``.
        max_slots: the most slots the result may hold (``>= 0``); more raises before any
            large allocation.

    Returns:
        A 1-D int64 CPU tensor of the slots, in order.

    Raises:
        TypeError: ``text`` is not a str or ``max_slots`` not an int.
        ValueError: malformed text (unmatched or nested brackets, ``a > b``, a non-number, a
            negative number, an integer beyond int64) or more than ``max_slots`` slots; the
            message says what and where (position).
    """
    text = _check_text(text, max_slots)
    return torch.from_numpy(_native.C.parse_slot_mapping(text, max_slots))


def parse_slot_ranges(text: str, max_slots: int) -> torch.Tensor:
    """Parses a slot string into inclusive ranges, one per item (``n`` becomes ``[n, n]``).

    Same rules and errors as :func:`parse_slot_mapping`; the ranges expand to at most
    ``max_slots`` slots. Use with :func:`expand_slot_ranges` to expand on the GPU.

    Returns:
        An int64 CPU tensor ``[num_items, 2]`` of ``(start, end)``.
    """
    text = _check_text(text, max_slots)
    return torch.from_numpy(_native.C.parse_slot_ranges(text, max_slots))


def compress_slot_mapping(
    slots: torch.Tensor | npt.NDArray[np.integer[Any]] | Sequence[int],
) -> list[int | list[int]]:
    """Compresses slots: each run of >= 3 consecutive values becomes ``[start, end]``.

    Shorter runs stay plain ints; order is kept (``[1, 2, 3, 7, 5, 6] -> [[1, 3], 7, 5, 6]``).
    This is the JSON form of the admin API; :func:`compress_slot_ranges` gives the same items
    as a tensor without creating a Python object per item.

    Args:
        slots: a 1-D integer tensor (any device), a 1-D integer numpy array, or a sequence of
            ints.

    Returns:
        The mixed list of ints and ``[start, end]`` lists.

    Raises:
        TypeError: not an integer tensor or a sequence of ints.
        ValueError: not 1-D, or a value beyond int64.
    """
    t = int64_slots(slots)
    return _native.C.compress_slot_mapping(int(t.data_ptr()), int(t.numel()))


def compress_slot_ranges(
    slots: torch.Tensor | npt.NDArray[np.integer[Any]] | Sequence[int],
) -> torch.Tensor:
    """The items of :func:`compress_slot_mapping` as an int64 run table.

    Row ``(start, end)`` is a run of ``>= 3`` consecutive values; a plain value ``v`` of the
    list form is the row ``(v, v)``. For slots ``>= 0``,
    ``expand_slot_ranges(compress_slot_ranges(s))`` gives ``s`` back, so the table is a
    compact form to keep, log or send a slot mapping in (16 bytes per item, no Python ints).

    Args:
        slots: as for :func:`compress_slot_mapping`.

    Returns:
        An int64 CPU tensor ``[num_items, 2]``.

    Raises:
        TypeError: not an integer tensor or a sequence of ints.
        ValueError: not 1-D, or a value beyond int64.
    """
    t = int64_slots(slots)
    return torch.from_numpy(_native.C.compress_slot_ranges(int(t.data_ptr()), int(t.numel())))


def expand_slot_ranges(
    ranges: torch.Tensor | Sequence[Sequence[int]],
    device: torch.device | str = "cpu",
    max_slots: int | None = None,
) -> torch.Tensor:
    """Expands inclusive ``[start, end]`` ranges into a slot tensor on ``device``.

    On a CUDA device the expansion runs on the GPU (only the ranges cross the bus), on the
    caller's current stream.

    Args:
        ranges: ``[num_ranges, 2]`` int64 ``(start, end)`` rows (tensor on any device, or a
            sequence of pairs), each with ``0 <= start <= end``.
        device: where the slots go (``cpu`` or ``cuda[:i]``).
        max_slots: if given, the most slots the result may hold.

    Returns:
        A 1-D int64 tensor on ``device``: ``start..end`` of each range, in order.

    Raises:
        ValueError: bad shape, a range with ``start < 0`` or ``start > end``, or more than
            ``max_slots`` slots.
        RuntimeError: a CUDA device on a build without CUDA kernels.
    """
    dev = torch.device(device)
    if not isinstance(ranges, torch.Tensor):
        try:
            ranges = torch.tensor(ranges, dtype=torch.int64).reshape(-1, 2)
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise ValueError(f"ranges must be [start, end] pairs of ints: {exc}") from None
    if ranges.dim() != 2 or ranges.shape[1] != 2:
        raise ValueError(f"ranges must be [num_ranges, 2], got shape {tuple(ranges.shape)}")
    if ranges.dtype.is_floating_point or ranges.dtype.is_complex or ranges.dtype == torch.bool:
        raise TypeError(f"ranges must hold integers, got dtype {ranges.dtype}")
    work = dev if dev.type == "cuda" else torch.device("cpu")
    r = ranges.to(device=work, dtype=torch.int64).contiguous()
    starts, ends = r[:, 0], r[:, 1]
    lengths = ends - starts + 1
    # One host read covers validity and the total.
    ok, total_f, total = torch.stack(
        [
            ((starts >= 0) & (ends >= starts)).all().to(torch.int64),
            (ends.double() - starts.double() + 1)
            .sum()
            .clamp(max=float(_MAX_TOTAL))
            .to(torch.int64),
            lengths.sum(),
        ]
    ).tolist()
    if not ok:
        bad = int(torch.nonzero((starts < 0) | (ends < starts))[0, 0])
        raise ValueError(f"ranges[{bad}] = {r[bad].tolist()} must have 0 <= start <= end")
    if total_f >= _MAX_TOTAL or total < 0:
        raise ValueError(f"ranges expand to about {total_f} slots, far too many")
    if max_slots is not None and total > max_slots:
        raise ValueError(f"ranges expand to {total} slots, more than max_slots={max_slots}")
    if dev.type == "cpu":
        out = torch.empty(total, dtype=torch.int64)
        _native.C.slot_ranges_expand_cpu(
            int(r.data_ptr()), int(r.shape[0]), int(out.data_ptr()), total
        )
        return out
    if dev.type != "cuda":
        raise ValueError(f"device must be cpu or cuda, got {dev}")
    _native.require_cuda("expand_slot_ranges")
    with torch.cuda.device(dev):
        out = torch.empty(total, dtype=torch.int64, device=dev)
        if total == 0:
            return out
        offsets = (torch.cumsum(lengths, 0) - lengths).contiguous()
        _native.C.slot_ranges_expand_cuda(
            int(r.data_ptr()),
            int(offsets.data_ptr()),
            int(r.shape[0]),
            int(out.data_ptr()),
            total,
            stream_of(out.device),
        )
    return out
