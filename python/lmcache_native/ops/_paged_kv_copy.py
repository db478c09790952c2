"""Argument checks and dispatch shared by ``paged_kv_gather`` and ``paged_kv_scatter``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


def check_chunk(name: str, chunk: object, kv: PagedKV, num_tokens: int | None) -> torch.Tensor:
    """Validates a chunk buffer (``out`` of gather, ``chunk`` of scatter) against the cache.

    Args:
        name: the argument's name, for errors (``"out"``, ``"outs[3]"``, ...).
        chunk: the buffer.
        kv: the described caches.
        num_tokens: the tokens it must hold, or ``None`` for any count (batched ops, where the
            counts are checked against ``slot_mapping`` together).

    Raises:
        TypeError: not a tensor, or a dtype other than the cache's.
        ValueError: wrong shape, not contiguous, or on a device the cache cannot use.
    """
    if not isinstance(chunk, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(chunk).__name__}")
    if chunk.dtype != kv.dtype:
        raise TypeError(f"{name} dtype {chunk.dtype} must match the kv_caches dtype {kv.dtype}")
    shape = tuple(chunk.shape)
    if num_tokens is None:
        if len(shape) != 4 or shape != kv.chunk_shape(shape[2]):
            raise ValueError(
                f"{name} must have shape ({kv.num_kv}, {kv.num_layers}, num_tokens, "
                f"{kv.row_elems}) (num_kv, num_layers, num_tokens, num_heads * head_size), "
                f"got {shape}"
            )
    elif shape != kv.chunk_shape(num_tokens):
        raise ValueError(
            f"{name} must have shape {kv.chunk_shape(num_tokens)} (num_kv, num_layers, "
            f"num_tokens, num_heads * head_size), got {shape}"
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


@dataclass(frozen=True)
class Launch:
    """Where a paged copy runs.

    Attributes:
        device: -1 for the CPU twin, else the CUDA device index.
        stream: the CUDA stream handle (0 for the CPU).
        scratch: an int64 device word for the CUDA slot check (``None`` for the CPU); held here
            so it stays allocated until the binding, which waits for the stream, returns.
    """

    device: int
    stream: int
    scratch: torch.Tensor | None

    @property
    def scratch_ptr(self) -> int:
        """Address of ``scratch`` (0 for the CPU)."""
        return 0 if self.scratch is None else int(self.scratch.data_ptr())


_CPU_LAUNCH = Launch(-1, 0, None)


def _launch(op: str, kv: PagedKV) -> Launch:
    if kv.device.type == "cpu":
        return _CPU_LAUNCH
    if kv.device.type != "cuda":
        raise ValueError(f"kv_caches must be on the CPU or a CUDA device, got {kv.device}")
    _native.require_cuda(op)
    return Launch(
        int(kv.device.index if kv.device.index is not None else 0),
        stream_of(kv.device),
        torch.empty(1, dtype=torch.int64, device=kv.device),
    )


def prepare(
    op: str,
    name: str,
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: object,
    chunk: object,
    layout: str,
) -> tuple[PagedKV, torch.Tensor, torch.Tensor, Launch]:
    """Checks every argument of a paged copy and returns what the binding needs.

    Returns:
        ``(kv, slots, chunk, launch)``.
    """
    kv = describe(kv_caches, layout)
    slots = check_slot_mapping(slot_mapping, kv)
    chunk_t = check_chunk(name, chunk, kv, slots.numel())
    return kv, slots, chunk_t, _launch(op, kv)


def prepare_chunks(
    op: str,
    name: str,
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: object,
    chunks: object,
    layout: str,
) -> tuple[PagedKV, torch.Tensor, list[int], list[int], Launch]:
    """Checks every argument of a batched paged copy and returns what the binding needs.

    Returns:
        ``(kv, slots, chunk_ptrs, chunk_tokens, launch)``.

    Raises:
        TypeError: ``chunks`` is not a sequence of tensors, or a bad dtype.
        ValueError: a bad shape or device, or token counts that do not add up to
            ``slot_mapping``'s length.
    """
    kv = describe(kv_caches, layout)
    slots = check_slot_mapping(slot_mapping, kv)
    if isinstance(chunks, torch.Tensor) or not isinstance(chunks, Sequence):
        raise TypeError(f"{name} must be a list of chunk tensors, got {type(chunks).__name__}")
    ptrs: list[int] = []
    tokens: list[int] = []
    for i, c in enumerate(chunks):
        t = check_chunk(f"{name}[{i}]", c, kv, None)
        ptrs.append(int(t.data_ptr()))
        tokens.append(int(t.shape[2]))
    total = sum(tokens)
    if total != slots.numel():
        raise ValueError(
            f"{name} hold {total} tokens in all (dimension 2 summed over {len(tokens)} chunks), "
            f"but slot_mapping has {slots.numel()}"
        )
    return kv, slots, ptrs, tokens, _launch(op, kv)
