"""``paged_kv_scatter``: contiguous chunk buffer -> paged KV caches (the load direction)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmcache_native import _native
from lmcache_native.ops._paged_kv_copy import CopyHandle, paged_copy


def paged_kv_scatter(
    chunk: torch.Tensor,
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: torch.Tensor,
    layout: str,
    *,
    blocking: bool = True,
) -> CopyHandle:
    """Copies ``chunk``'s rows into the slots of ``slot_mapping`` in every layer.

    ``row(layer, kv, slot_mapping[i]) = chunk[kv, layer, i]`` for every token ``i`` whose slot
    is not ``-1``; padding tokens (slot ``-1``) leave the cache untouched. All layers are copied
    in one call by the CPU twin (CPU cache) or the CUDA kernel (CUDA cache, on the current
    stream; by default the call returns after the copy finished). Two tokens naming the same
    slot write the same row; which one wins is unspecified.

    Args:
        chunk: ``[num_kv, num_layers, num_tokens, num_heads * head_size]`` contiguous, the
            cache's dtype (``num_kv`` is 1 for ``mla``, else 2); on the CPU for a CPU cache, on
            the cache's CUDA device or in pinned CPU memory for a CUDA cache.
        kv_caches: one paged cache per layer, shaped as ``layout`` requires (see
            ``lmcache_native.ops.LAYOUTS``), all with the same shape, strides, dtype and device;
            any 1/2/4/8-byte dtype; may be non-contiguous views.
        slot_mapping: ``[num_tokens]`` int32 or int64 slots (``block * block_size + offset``),
            on the cache's device or the CPU.
        layout: as for :func:`~lmcache_native.ops.paged_kv_gather`.
        blocking: as for :func:`~lmcache_native.ops.paged_kv_gather`.

    Returns:
        As for :func:`~lmcache_native.ops.paged_kv_gather`.

    Raises:
        TypeError: an argument of the wrong type or dtype.
        ValueError: a wrong shape, device, layout, or a non-contiguous ``chunk``.
        IndexError: as for :func:`~lmcache_native.ops.paged_kv_gather`.
        RuntimeError: as for :func:`~lmcache_native.ops.paged_kv_gather`.
    """
    return paged_copy("paged_kv_scatter", "chunk", kv_caches, slot_mapping, chunk, layout, blocking)


def paged_kv_scatter_chunks(
    chunks: Sequence[torch.Tensor],
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: torch.Tensor,
    layout: str,
    *,
    blocking: bool = True,
) -> CopyHandle:
    """Scatters many chunk buffers into consecutive runs of ``slot_mapping`` in one native call.

    ``chunks[c]`` supplies the next ``n_c = chunks[c].shape[2]`` tokens: with
    ``b_c = n_0 + ... + n_{c-1}``, ``row(layer, kv, slot_mapping[b_c + j]) = chunks[c][kv,
    layer, j]``. The result is bit for bit that of calling :func:`paged_kv_scatter` once per
    chunk on ``slot_mapping[b_c : b_c + n_c]`` (for distinct slots), but the slots are
    validated once, the copy runs as one parallel loop over (chunk, kv, layer, token tile) work
    items (one GIL release), and an out-of-range slot anywhere writes nothing at all.

    Args:
        chunks: chunk buffers, ``chunks[c]`` ``[num_kv, num_layers, n_c, num_heads *
            head_size]`` contiguous, the cache's dtype, with ``sum(n_c) == num_tokens`` (``n_c``
            may be 0); on the CPU for a CPU cache, on the cache's CUDA device or in pinned CPU
            memory for a CUDA cache.
        kv_caches: one paged cache per layer, as for :func:`paged_kv_scatter`.
        slot_mapping: ``[num_tokens]`` int32 or int64 slots, on the cache's device or the CPU;
            ``-1`` is padding (the cache is left untouched for that token).
        layout: as for :func:`~lmcache_native.ops.paged_kv_gather`.
        blocking: as for :func:`~lmcache_native.ops.paged_kv_gather`.

    Returns:
        As for :func:`~lmcache_native.ops.paged_kv_gather`.

    Raises:
        TypeError: an argument of the wrong type or dtype (``chunks`` not a list of tensors).
        ValueError: a wrong shape, device or layout, a non-contiguous buffer, or token counts
            that do not add up to ``num_tokens``.
        IndexError: as for :func:`~lmcache_native.ops.paged_kv_gather`.
        RuntimeError: as for :func:`~lmcache_native.ops.paged_kv_gather`.
    """
    return paged_copy(
        "paged_kv_scatter_chunks", "chunks", kv_caches, slot_mapping, chunks, layout, blocking
    )


def copy_isa() -> str:
    """Instruction set of the CPU scatter into ``vllm_cpu``'s transposed K: ``avx2`` or ``sse2``.

    ``avx2`` (16x16 register transposes, 2-byte dtypes, head size and run multiples of 16) is
    the default where the CPU has it; ``LMC_COPY_ISA=sse2`` at start-up keeps the SSE2 path.
    """
    return str(_native.C.copy_isa())


def copy_set_isa(isa: str) -> None:
    """Forces that instruction set (tests and benchmarks compare both).

    Raises:
        ValueError: unknown name, or not supported on this CPU.
    """
    _native.C.copy_set_isa(isa)


def copy_supported_isas() -> list[str]:
    """Instruction sets of that scatter this CPU can run, best last."""
    return list(_native.C.copy_supported_isas())
