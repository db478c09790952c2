"""Tensor-level entry points to the native kernels.

Each op validates its tensors, extracts pointers/strides/stream and picks the CPU twin or the
CUDA kernel by device (the ``_C`` entry points ``<kernel>_cpu`` / ``<kernel>_cuda``). Names
match the kernels in ``csrc/kernels/``. CUDA copies run on the caller's current stream; with
``blocking=False`` they are only enqueued and return a :class:`CopyHandle` to wait on.
"""

from __future__ import annotations

from lmcache_native.ops._layout import (
    CPU_ONLY_LAYOUTS,
    LAYOUTS,
    PagedKV,
    check_packing,
    describe,
    kv_cache_shape,
)
from lmcache_native.ops._paged_kv_copy import CopyHandle
from lmcache_native.ops.kv_chunk_md5 import kv_chunk_md5
from lmcache_native.ops.paged_kv_gather import paged_kv_gather, paged_kv_gather_chunks
from lmcache_native.ops.paged_kv_scatter import (
    copy_isa,
    copy_set_isa,
    copy_supported_isas,
    paged_kv_scatter,
    paged_kv_scatter_chunks,
)
from lmcache_native.ops.slot_ranges import (
    compress_slot_mapping,
    compress_slot_ranges,
    expand_slot_ranges,
    parse_slot_mapping,
)

__all__ = [
    "CPU_ONLY_LAYOUTS",
    "LAYOUTS",
    "CopyHandle",
    "PagedKV",
    "check_packing",
    "compress_slot_mapping",
    "compress_slot_ranges",
    "copy_isa",
    "copy_set_isa",
    "copy_supported_isas",
    "describe",
    "expand_slot_ranges",
    "kv_cache_shape",
    "kv_chunk_md5",
    "paged_kv_gather",
    "paged_kv_gather_chunks",
    "paged_kv_scatter",
    "paged_kv_scatter_chunks",
    "parse_slot_mapping",
]
