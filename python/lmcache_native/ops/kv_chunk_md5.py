"""``kv_chunk_md5``: MD5 of every (chunk, layer) of a slot list, read from the paged cache.

The CPU twin hashes many (chunk, layer) messages at once with multi-buffer SIMD (AVX-512 or
AVX2, picked at run time; see :func:`md5_isa`) on the native thread pool; the CUDA kernel runs
one message per thread and copies the digests back once on the caller's stream.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmcache_native import _native
from lmcache_native.ops._layout import PagedKV, describe, int64_slots, stream_of

__all__ = ["kv_chunk_md5", "md5_bytes", "md5_isa", "md5_set_isa", "md5_supported_isas"]


def kv_chunk_md5(
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: torch.Tensor | Sequence[int],
    chunk_size: int,
    layout: str,
) -> tuple[list[list[str]], list[str]]:
    """MD5 checksums of each (chunk, layer) of ``slot_mapping``, read straight from the cache.

    Chunk ``c`` is tokens ``[c * chunk_size, (c + 1) * chunk_size)`` of ``slot_mapping`` (the
    last chunk may be shorter). For layer ``l`` its message is the K rows of the chunk's slots
    in slot order, then the V rows (MLA: its single rows), as raw bytes; slot ``-1`` adds
    nothing. The combined digest of a chunk is the MD5 of the concatenated per-layer hex
    digests in layer order (see ``testing/reference.py``).

    Args:
        kv_caches: one paged cache per layer, shaped as ``layout`` requires (see
            :func:`lmcache_native.ops.describe`); any 1/2/4/8-byte dtype; CPU or CUDA.
        slot_mapping: ``[num_tokens]`` integer slots (tensor on any device, or a sequence of
            ints); ``-1`` is padding.
        chunk_size: tokens per chunk, ``>= 1``.
        layout: ``flash_attn``, ``flashinfer``, ``hnd``, ``mla``, ``vllm_cpu`` or
            ``vllm_cpu_amx`` (CPU caches only; a ``ValueError`` on a CUDA cache).

    Returns:
        ``(per_layer, combined)``: ``per_layer[layer][chunk]`` and ``combined[chunk]``,
        lowercase hex strings.

    Raises:
        TypeError: ``chunk_size`` is not an int, or a bad ``kv_caches``/``slot_mapping`` type.
        ValueError: ``chunk_size < 1``, or a bad layout/shape.
        IndexError: a slot other than ``-1`` lies outside the cache (the message names it).
        RuntimeError: CUDA caches on a build without CUDA kernels.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be an int, got {type(chunk_size).__name__}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    paged = describe(kv_caches, layout)
    slots = int64_slots(slot_mapping, paged.device, "slot_mapping")
    num_tokens = int(slots.numel())
    if paged.device.type == "cpu":
        return _native.C.kv_chunk_md5_cpu(
            paged.layer_ptrs, paged.layout, int(slots.data_ptr()), num_tokens, chunk_size
        )
    if paged.device.type != "cuda":
        raise ValueError(f"kv_caches must be on the CPU or a CUDA device, got {paged.device}")
    _native.require_cuda("kv_chunk_md5")
    return _kv_chunk_md5_cuda(paged, slots, chunk_size)


def _kv_chunk_md5_cuda(
    paged: PagedKV, slots: torch.Tensor, chunk_size: int
) -> tuple[list[list[str]], list[str]]:
    """Launches the CUDA kernel and copies digests and the error flag back once."""
    device = paged.device
    num_tokens = int(slots.numel())
    num_chunks = (num_tokens + chunk_size - 1) // chunk_size
    num_layers = paged.num_layers
    if num_chunks == 0:
        return [[] for _ in range(num_layers)], []
    with torch.cuda.device(device):
        layer_ptrs = torch.tensor(paged.layer_ptrs, dtype=torch.int64, device=device)
        workspace = torch.empty(num_tokens + num_chunks, dtype=torch.int64, device=device)
        # Digests and the error slot share one buffer so a single copy brings both back.
        out = torch.empty(num_layers * num_chunks * 16 + 8, dtype=torch.uint8, device=device)
        error = out[num_layers * num_chunks * 16 :].view(torch.int64)
        error.fill_(-1)
        _native.C.kv_chunk_md5_cuda(
            paged.layer_ptrs,
            int(layer_ptrs.data_ptr()),
            paged.layout,
            int(slots.data_ptr()),
            num_tokens,
            chunk_size,
            int(workspace.data_ptr()),
            int(out.data_ptr()),
            int(error.data_ptr()),
            stream_of(device),
        )
        host = out.cpu()
    bad = int(host[num_layers * num_chunks * 16 :].view(torch.int64)[0])
    if bad >= 0:
        slot = int(slots[bad])
        raise IndexError(
            f"slot_mapping[{bad}] = {slot} is out of range for a cache of {paged.num_slots} "
            "slots (-1 marks padding)"
        )
    return _native.C.kv_chunk_md5_finish(int(host.data_ptr()), num_layers, num_chunks)


def md5_bytes(*buffers: bytes | bytearray | memoryview) -> list[str]:
    """MD5 of each contiguous buffer on the CPU MD5 engine (for tests and benchmarks).

    Buffers of equal length are hashed together on the selected instruction set.

    Returns:
        One lowercase hex digest per buffer.
    """
    return list(_native.C.md5_many(list(buffers)))


def md5_isa() -> str:
    """The instruction set of the CPU MD5: ``scalar``, ``avx2`` or ``avx512``.

    The default is the best one the CPU supports; ``LMC_MD5_ISA`` overrides it at start-up.
    """
    return str(_native.C.md5_isa())


def md5_set_isa(isa: str) -> None:
    """Forces the CPU MD5 instruction set.

    Raises:
        ValueError: unknown name, or not supported on this CPU.
    """
    _native.C.md5_set_isa(isa)


def md5_supported_isas() -> list[str]:
    """Instruction sets of the CPU MD5 this machine can run, best last."""
    return list(_native.C.md5_supported_isas())
