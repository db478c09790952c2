"""What ``paged_kv_gather`` and ``paged_kv_scatter`` share.

Argument checks, the choice of the ``_C`` entry point (``<op>_cpu`` / ``<op>_cuda``) by the
caches' device, and :class:`CopyHandle`, the completion of a copy that was only enqueued
(``blocking=False``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from lmcache_native import _native
from lmcache_native.ops._layout import PagedKV, describe

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
            # NOTE: from pinned memory the copy is enqueued on the current stream, so a
            # non-blocking copy never waits for the host here.
            slot_mapping = slot_mapping.contiguous().pin_memory().to(kv.device, non_blocking=True)
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


@dataclass
class _Pending:
    """A CUDA copy in flight.

    Its event, the slot-check flag on its way to pinned host memory, the slots (to name a bad
    one) and every tensor the copy reads or writes.
    """

    event: torch.cuda.Event
    flag: torch.Tensor
    slots: torch.Tensor
    num_slots: int
    keep: tuple[object, ...]


class CopyHandle:
    """The completion of a paged copy (returned by the ``paged_kv_*`` copies).

    A CPU copy, or a CUDA copy with ``blocking=True`` (the default), has finished when the call
    returns and its handle is already done. A CUDA copy with ``blocking=False`` is only enqueued
    on the caller's current stream: work enqueued later on that stream runs after it without
    any host wait, another stream can order itself after it with
    ``stream.wait_event(handle.event)``, and the host waits with :meth:`wait` only where it must
    (before reading a gathered CPU buffer, before reusing or freeing a buffer the copy reads,
    before reporting a load finished). The slot check's result stays in device memory until
    then, so an out-of-range slot raises its ``IndexError`` from :meth:`wait` (the copy wrote
    nothing). The handle keeps the tensors the copy uses alive until :meth:`wait`.
    """

    __slots__ = ("_error", "_pending")

    def __init__(self, pending: _Pending | None = None) -> None:
        """A finished handle, or (internal) one for a copy in flight."""
        self._pending = pending
        self._error: str | None = None

    @property
    def event(self) -> torch.cuda.Event | None:
        """The CUDA event recorded after the copy (``None`` once waited for, or never needed)."""
        return None if self._pending is None else self._pending.event

    def done(self) -> bool:
        """True when the copy has finished (never blocks; a bad slot is raised by :meth:`wait`)."""
        return self._pending is None or bool(self._pending.event.query())  # type: ignore[no-untyped-call]

    def wait(self) -> None:
        """Blocks the host until the copy finished.

        Raises:
            IndexError: a slot outside ``[-1, num_blocks * block_size)``; nothing was written.
                Every later call raises it again.
        """
        p = self._pending
        if p is not None:
            p.event.synchronize()
            bad = int(p.flag[0])  # the first bad position, or all ones (-1): none
            if bad >= 0:
                value = int(p.slots[bad])
                self._error = _native.C.paged_kv_bad_slot_message(bad, value, p.num_slots)
            self._pending = None
        if self._error is not None:
            raise IndexError(self._error)


_DONE = CopyHandle()

_Entry = Callable[..., None]
#: Op -> (CPU entry point, CUDA entry point) of ``_C``; both take the caches, the slots, then
#: the chunk buffers; the CUDA one then the device, stream, slot-check word and ``blocking``.
_ENTRIES: dict[str, tuple[_Entry, _Entry]] = {
    "paged_kv_gather": (_native.C.paged_kv_gather_cpu, _native.C.paged_kv_gather_cuda),
    "paged_kv_gather_chunks": (
        _native.C.paged_kv_gather_chunks_cpu,
        _native.C.paged_kv_gather_chunks_cuda,
    ),
    "paged_kv_scatter": (_native.C.paged_kv_scatter_cpu, _native.C.paged_kv_scatter_cuda),
    "paged_kv_scatter_chunks": (
        _native.C.paged_kv_scatter_chunks_cpu,
        _native.C.paged_kv_scatter_chunks_cuda,
    ),
}


def _buffer_args(
    name: str, buffers: object, kv: PagedKV, slots: torch.Tensor, batched: bool
) -> tuple[tuple[object, ...], tuple[torch.Tensor, ...]]:
    """The binding's buffer arguments and the checked tensors.

    The arguments are one address, or (``batched``) the addresses and their token counts.
    """
    if not batched:
        chunk = check_chunk(name, buffers, kv, slots.numel())
        return (int(chunk.data_ptr()),), (chunk,)
    if isinstance(buffers, torch.Tensor) or not isinstance(buffers, Sequence):
        raise TypeError(f"{name} must be a list of chunk tensors, got {type(buffers).__name__}")
    checked = tuple(check_chunk(f"{name}[{i}]", c, kv, None) for i, c in enumerate(buffers))
    tokens = [int(t.shape[2]) for t in checked]
    if sum(tokens) != slots.numel():
        raise ValueError(
            f"{name} hold {sum(tokens)} tokens in all (dimension 2 summed over {len(tokens)} "
            f"chunks), but slot_mapping has {slots.numel()}"
        )
    return ([int(t.data_ptr()) for t in checked], tokens), checked


def paged_copy(
    op: str,
    name: str,
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: object,
    buffers: object,
    layout: str,
    blocking: object,
) -> CopyHandle:
    """Checks every argument of the paged copy ``op`` and runs it on the caches' device.

    Args:
        op: ``paged_kv_gather``, ``paged_kv_scatter`` or their ``_chunks`` forms.
        name: the buffers' argument name, for errors (``out``, ``outs``, ``chunk``, ``chunks``).
        kv_caches: the per-layer caches.
        slot_mapping: the slots.
        buffers: one chunk tensor, or (``_chunks`` ops) a sequence of them.
        layout: the caches' layout name.
        blocking: wait for a CUDA copy (and raise a bad slot) before returning.

    Returns:
        The copy's handle (already done unless a CUDA copy with ``blocking=False``).

    Raises:
        TypeError: a bad type or dtype (``blocking`` not a bool).
        ValueError: a bad shape, device or layout, or token counts that do not add up to
            ``slot_mapping``'s length.
        IndexError: (CPU or blocking) a slot outside the cache; nothing is written.
        RuntimeError: a CUDA cache on a build without CUDA kernels, or a CUDA failure.
    """
    if not isinstance(blocking, bool):
        raise TypeError(f"blocking must be a bool, got {type(blocking).__name__}")
    kv = describe(kv_caches, layout)
    slots = check_slot_mapping(slot_mapping, kv)
    buffer_args, keep = _buffer_args(name, buffers, kv, slots, op.endswith("_chunks"))
    args = (
        kv.layer_ptrs,
        kv.layout,
        int(slots.data_ptr()),
        int(slots.numel()),
        int(slots.element_size()),
        *buffer_args,
    )
    cpu_entry, cuda_entry = _ENTRIES[op]
    if kv.device.type == "cpu":
        cpu_entry(*args)
        return _DONE
    if kv.device.type != "cuda":
        raise ValueError(f"kv_caches must be on the CPU or a CUDA device, got {kv.device}")
    _native.require_cuda(op)
    dev = kv.device
    with torch.cuda.device(dev):
        stream = torch.cuda.current_stream(dev)
        # The slot check's word: the first bad position, or all ones (-1) when none. A
        # non-blocking copy reads it back later, so it starts as "none" for a copy of nothing.
        bad_pos = torch.full((1,), -1, dtype=torch.int64, device=dev)
        cuda_entry(
            *args, dev.index or 0, int(stream.cuda_stream), int(bad_pos.data_ptr()), blocking
        )
        if blocking:
            return _DONE
        flag = torch.empty(1, dtype=torch.int64, pin_memory=True)
        flag.copy_(bad_pos, non_blocking=True)
        event = torch.cuda.Event()  # type: ignore[no-untyped-call]
        event.record(stream)
    return CopyHandle(_Pending(event, flag, slots, kv.num_slots, (bad_pos, *keep)))
