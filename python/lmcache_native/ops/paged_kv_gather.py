"""``paged_kv_gather``: paged KV caches -> contiguous chunk buffer (the store direction)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmcache_native.ops._paged_kv_copy import CopyHandle, paged_copy


def paged_kv_gather(
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: torch.Tensor,
    out: torch.Tensor,
    layout: str,
    *,
    blocking: bool = True,
) -> CopyHandle:
    """Copies the KV rows of ``slot_mapping``'s slots out of every layer into ``out``.

    ``out[kv, layer, i] = row(layer, kv, slot_mapping[i])`` for every token ``i`` whose slot is
    not ``-1``; rows of padding tokens (slot ``-1``) are left untouched. All layers are copied
    in one call by the CPU twin (CPU cache) or the CUDA kernel (CUDA cache, on the current
    stream; by default the call returns after the copy finished).

    Args:
        kv_caches: one paged cache per layer, shaped as ``layout`` requires (see
            ``lmcache_native.ops.LAYOUTS``), all with the same shape, strides, dtype and device;
            any 1/2/4/8-byte dtype; may be non-contiguous views.
        slot_mapping: ``[num_tokens]`` int32 or int64 slots (``block * block_size + offset``),
            on the cache's device or the CPU.
        out: ``[num_kv, num_layers, num_tokens, num_heads * head_size]`` contiguous, the cache's
            dtype (``num_kv`` is 1 for ``mla``, else 2); on the CPU for a CPU cache, on the
            cache's CUDA device or in pinned CPU memory for a CUDA cache.
        layout: ``"flash_attn"``, ``"flashinfer"``, ``"hnd"``, ``"mla"``, ``"vllm_cpu"`` or
            ``"vllm_cpu_amx"`` (CPU caches only; a ``ValueError`` on a CUDA cache).
        blocking: ``False`` only enqueues a CUDA copy (see :class:`~lmcache_native.ops.CopyHandle`).

    Returns:
        The copy's handle, already done unless ``blocking=False`` on CUDA.

    Raises:
        TypeError: an argument of the wrong type or dtype.
        ValueError: a wrong shape, device, layout, or a non-contiguous ``out``.
        IndexError: a slot outside ``[-1, num_blocks * block_size)``; nothing is written
            (from :meth:`CopyHandle.wait` for a non-blocking CUDA copy).
        RuntimeError: a CUDA cache on a build without CUDA kernels, or a CUDA failure.
    """
    return paged_copy("paged_kv_gather", "out", kv_caches, slot_mapping, out, layout, blocking)


def paged_kv_gather_chunks(
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: torch.Tensor,
    outs: Sequence[torch.Tensor],
    layout: str,
    *,
    blocking: bool = True,
) -> CopyHandle:
    """Gathers consecutive runs of ``slot_mapping`` into many chunk buffers in one native call.

    ``outs[c]`` receives the next ``n_c = outs[c].shape[2]`` tokens: with
    ``b_c = n_0 + ... + n_{c-1}``, ``outs[c][kv, layer, j] = row(layer, kv, slot_mapping[b_c +
    j])``. The result is bit for bit that of calling :func:`paged_kv_gather` once per chunk on
    ``slot_mapping[b_c : b_c + n_c]``, but the slots are validated once, the copy runs as one
    parallel loop over (chunk, kv, layer, token tile) work items (one GIL release, no thread
    idling between chunks), and an out-of-range slot anywhere writes nothing to any chunk.

    Args:
        kv_caches: one paged cache per layer, as for :func:`paged_kv_gather`.
        slot_mapping: ``[num_tokens]`` int32 or int64 slots, on the cache's device or the CPU;
            ``-1`` is padding (that token's rows are left untouched).
        outs: chunk buffers, ``outs[c]`` ``[num_kv, num_layers, n_c, num_heads * head_size]``
            contiguous, the cache's dtype, with ``sum(n_c) == num_tokens`` (``n_c`` may be 0);
            on the CPU for a CPU cache, on the cache's CUDA device or in pinned CPU memory for a
            CUDA cache.
        layout: as for :func:`paged_kv_gather`.
        blocking: as for :func:`paged_kv_gather`.

    Returns:
        As for :func:`paged_kv_gather`.

    Raises:
        TypeError: an argument of the wrong type or dtype (``outs`` not a list of tensors).
        ValueError: a wrong shape, device or layout, a non-contiguous buffer, or token counts
            that do not add up to ``num_tokens``.
        IndexError: as for :func:`paged_kv_gather`.
        RuntimeError: as for :func:`paged_kv_gather`.
    """
    return paged_copy(
        "paged_kv_gather_chunks", "outs", kv_caches, slot_mapping, outs, layout, blocking
    )
