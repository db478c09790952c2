"""Type stub of ``lmcache_native._C``, the compiled module (``csrc/bindings/``).

Only :mod:`lmcache_native._native` imports it; everything else goes through
:mod:`lmcache_native.ops`. Tensors cross as addresses (``int``: a data pointer), their element
counts and sizes; the paged-KV layout crosses as :class:`PagedKVLayout`. Every kernel has a
``<kernel>_cpu`` and a ``<kernel>_cuda`` entry point; the ops pick one by the tensors' device.
The ``_cuda`` entry points exist in every build: without CUDA kernels they check their
arguments, then raise ``RuntimeError``. Errors: ``ValueError`` for bad arguments,
``IndexError`` for a slot outside the cache, :class:`CudaError` for a CUDA failure.

Copy entry points (``paged_kv_gather``, ``paged_kv_scatter`` and their ``_chunks`` forms) all
take the caches, the slots, then the chunk buffers: ``layer_ptrs`` (one address per layer, all
laid out as ``layout``), ``slot_mapping`` (address of ``num_tokens`` int32 or int64 slots,
``slot_elem_size`` 4 or 8; ``-1`` is padding), then one buffer address (``out`` / ``chunk``:
``[num_kv, num_layers, num_tokens, num_heads * head_size]`` contiguous) or a list of them with
their token counts (``outs`` / ``chunks`` and ``chunk_tokens``, summing to ``num_tokens``). The
CUDA forms add ``device`` (index), ``stream`` (the ``cudaStream_t`` handle), ``bad_pos`` (an
8-byte device word where the slot check writes the first bad position, or all ones) and
``blocking`` (wait for the copy and raise ``IndexError`` for a bad slot; else only enqueue).
"""

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__version__: str
#: The git commit the module was built from ("NA" outside a checkout).
COMMIT_ID: str
#: True when the CUDA kernels are compiled in (LMC_CUDA=ON/AUTO with nvcc).
HAS_CUDA: bool
#: CMAKE_CUDA_ARCHITECTURES of the build, comma-separated ("" without CUDA kernels).
CUDA_ARCHS: str

class CudaError(RuntimeError):
    """A CUDA API call or kernel launch failed (the message names the call)."""

class PagedKVLayout:
    """Geometry and element strides of one layer's paged KV cache (``kernels/paged_kv_layout.h``).

    Built by keyword only; every field is checked (``ValueError`` naming it) and read-only.
    Pairs are ``(K, V)``; MLA (``num_kv == 1``) uses index 0. Element ``(block, offset, head,
    dim)`` of side ``kv`` lives at ``kv_offset[kv] + block * block_stride[kv] + token(offset) +
    head * head_stride[kv] + dim_(dim)`` elements from the layer base, where a coordinate with
    group ``G`` contributes ``(x // G) * stride + (x % G) * inner`` (``G == 1``: plain).
    """

    def __init__(
        self,
        *,
        num_kv: int,
        num_blocks: int,
        block_size: int,
        num_heads: int,
        head_size: int,
        elem_size: int,
        kv_offset: tuple[int, int],
        block_stride: tuple[int, int],
        token_stride: tuple[int, int],
        head_stride: tuple[int, int],
        dim_stride: tuple[int, int],
        token_group: tuple[int, int] = (1, 1),
        token_inner: tuple[int, int] = (0, 0),
        dim_group: tuple[int, int] = (1, 1),
        dim_inner: tuple[int, int] = (0, 0),
    ) -> None: ...
    @property
    def num_kv(self) -> int:
        """2 (K and V) or 1 (MLA)."""
    @property
    def num_blocks(self) -> int: ...
    @property
    def block_size(self) -> int: ...
    @property
    def num_heads(self) -> int: ...
    @property
    def head_size(self) -> int: ...
    @property
    def elem_size(self) -> int:
        """Bytes per element: 1, 2, 4 or 8."""
    @property
    def kv_offset(self) -> tuple[int, int]:
        """Elements from the layer base to (block 0, offset 0, head 0, dim 0) of each side."""
    @property
    def block_stride(self) -> tuple[int, int]: ...
    @property
    def token_stride(self) -> tuple[int, int]:
        """Elements between consecutive offsets (token groups, when packed)."""
    @property
    def head_stride(self) -> tuple[int, int]: ...
    @property
    def dim_stride(self) -> tuple[int, int]:
        """Elements between consecutive dims (dim groups, when packed)."""
    @property
    def token_group(self) -> tuple[int, int]:
        """Offsets per token group (1: plain)."""
    @property
    def token_inner(self) -> tuple[int, int]:
        """Elements between consecutive offsets inside a group (0 when plain)."""
    @property
    def dim_group(self) -> tuple[int, int]:
        """Dims per dim group (1: plain)."""
    @property
    def dim_inner(self) -> tuple[int, int]:
        """Elements between consecutive dims inside a group (0 when plain)."""
    @property
    def num_slots(self) -> int:
        """``num_blocks * block_size``."""
    @property
    def row_elems(self) -> int:
        """``num_heads * head_size``."""
    @property
    def packed(self) -> bool:
        """True when a side is tiled in two levels (``vllm_cpu_amx``): CPU kernels only."""

# --- threads ----------------------------------------------------------------------------------

def num_threads() -> int:
    """Threads used by the CPU twins."""

def set_num_threads(n: int) -> None:
    """Sets the threads used by the CPU twins (``n >= 1``)."""

# --- paged_kv_gather: paged caches -> chunk buffers ---------------------------------------------

def paged_kv_gather_cpu(
    layer_ptrs: Sequence[int],
    layout: PagedKVLayout,
    slot_mapping: int,
    num_tokens: int,
    slot_elem_size: int,
    out: int,
) -> None:
    """CPU twin: ``out[kv, layer, i] = row(layer, kv, slot_mapping[i])`` (slot -1 skipped)."""

def paged_kv_gather_cuda(
    layer_ptrs: Sequence[int],
    layout: PagedKVLayout,
    slot_mapping: int,
    num_tokens: int,
    slot_elem_size: int,
    out: int,
    device: int,
    stream: int,
    bad_pos: int,
    blocking: bool,
) -> None:
    """CUDA kernels on ``stream``; ``out`` in device or pinned host memory."""

def paged_kv_gather_chunks_cpu(
    layer_ptrs: Sequence[int],
    layout: PagedKVLayout,
    slot_mapping: int,
    num_tokens: int,
    slot_elem_size: int,
    outs: Sequence[int],
    chunk_tokens: Sequence[int],
) -> None:
    """CPU twin: ``outs[c]`` takes the next ``chunk_tokens[c]`` slots."""

def paged_kv_gather_chunks_cuda(
    layer_ptrs: Sequence[int],
    layout: PagedKVLayout,
    slot_mapping: int,
    num_tokens: int,
    slot_elem_size: int,
    outs: Sequence[int],
    chunk_tokens: Sequence[int],
    device: int,
    stream: int,
    bad_pos: int,
    blocking: bool,
) -> None:
    """CUDA kernels on ``stream``, chunks as :func:`paged_kv_gather_chunks_cpu`."""

# --- paged_kv_scatter: chunk buffers -> paged caches --------------------------------------------

def paged_kv_scatter_cpu(
    layer_ptrs: Sequence[int],
    layout: PagedKVLayout,
    slot_mapping: int,
    num_tokens: int,
    slot_elem_size: int,
    chunk: int,
) -> None:
    """CPU twin: ``row(layer, kv, slot_mapping[i]) = chunk[kv, layer, i]`` (slot -1 skipped)."""

def paged_kv_scatter_cuda(
    layer_ptrs: Sequence[int],
    layout: PagedKVLayout,
    slot_mapping: int,
    num_tokens: int,
    slot_elem_size: int,
    chunk: int,
    device: int,
    stream: int,
    bad_pos: int,
    blocking: bool,
) -> None:
    """CUDA kernels on ``stream``; ``chunk`` in device or pinned host memory."""

def paged_kv_scatter_chunks_cpu(
    layer_ptrs: Sequence[int],
    layout: PagedKVLayout,
    slot_mapping: int,
    num_tokens: int,
    slot_elem_size: int,
    chunks: Sequence[int],
    chunk_tokens: Sequence[int],
) -> None:
    """CPU twin: ``chunks[c]`` supplies the next ``chunk_tokens[c]`` slots."""

def paged_kv_scatter_chunks_cuda(
    layer_ptrs: Sequence[int],
    layout: PagedKVLayout,
    slot_mapping: int,
    num_tokens: int,
    slot_elem_size: int,
    chunks: Sequence[int],
    chunk_tokens: Sequence[int],
    device: int,
    stream: int,
    bad_pos: int,
    blocking: bool,
) -> None:
    """CUDA kernels on ``stream``, chunks as :func:`paged_kv_scatter_chunks_cpu`."""

def paged_kv_bad_slot_message(position: int, value: int, num_slots: int) -> str:
    """The ``IndexError`` message for ``slot_mapping[position] = value`` outside the cache."""

def copy_isa() -> str:
    """Instruction set of the CPU scatter into ``vllm_cpu``'s transposed K: avx2 or sse2."""

def copy_set_isa(isa: str) -> None:
    """Forces that instruction set (``ValueError`` when unknown or unsupported here)."""

def copy_supported_isas() -> list[str]:
    """Instruction sets of that scatter this CPU can run, best last."""

# --- kv_chunk_md5 -----------------------------------------------------------------------------

def kv_chunk_md5_cpu(
    layer_ptrs: Sequence[int],
    layout: PagedKVLayout,
    slot_mapping: int,
    num_tokens: int,
    chunk_size: int,
) -> tuple[list[list[str]], list[str]]:
    """MD5 of every (chunk, layer) read from host caches (``slot_mapping``: int64 slots).

    Returns ``(per_layer[layer][chunk], combined[chunk])`` lowercase hex.
    """

def kv_chunk_md5_cuda(
    layer_ptrs: Sequence[int],
    layer_ptrs_device: int,
    layout: PagedKVLayout,
    slot_mapping: int,
    num_tokens: int,
    chunk_size: int,
    workspace: int,
    per_layer: int,
    error: int,
    stream: int,
) -> None:
    """Enqueues the MD5 kernels on ``stream``.

    ``layer_ptrs_device``: the layer addresses as a device int64 array; ``workspace``:
    ``num_tokens + num_chunks`` int64 (device); digests land in ``per_layer`` ``[num_layers,
    num_chunks, 16]`` (device), the first bad token index (or -1) in ``error`` (device int64,
    pre-set to -1).
    """

def kv_chunk_md5_finish(
    per_layer: int, num_layers: int, num_chunks: int
) -> tuple[list[list[str]], list[str]]:
    """Hex strings and combined digests from host digests ``[num_layers, num_chunks, 16]``."""

def md5(data: bytes | bytearray | memoryview) -> str:
    """MD5 of one contiguous buffer, lowercase hex."""

def md5_many(buffers: Sequence[bytes | bytearray | memoryview]) -> list[str]:
    """MD5 of many contiguous buffers (multi-buffer SIMD across equal lengths), lowercase hex."""

def md5_isa() -> str:
    """The instruction set the CPU MD5 uses: scalar, avx2 or avx512."""

def md5_set_isa(isa: str) -> None:
    """Forces the CPU MD5 instruction set (``ValueError`` when unsupported here)."""

def md5_supported_isas() -> list[str]:
    """Instruction sets of the CPU MD5 this machine can run, best last."""

# --- slot_ranges ------------------------------------------------------------------------------

def parse_slot_mapping(text: str, max_slots: int) -> npt.NDArray[np.int64]:
    """Parses a slot string into an int64 array of slots (``ValueError`` naming the position)."""

def parse_slot_ranges(text: str, max_slots: int) -> npt.NDArray[np.int64]:
    """Parses a slot string into an int64 array ``[num_items, 2]`` of inclusive (start, end)."""

def compress_slot_mapping(slots: int, n: int) -> list[int | list[int]]:
    """``n`` contiguous int64 slots at address ``slots``: runs of >= 3 become [start, end]."""

def compress_slot_ranges(slots: int, n: int) -> npt.NDArray[np.int64]:
    """The items of :func:`compress_slot_mapping` as ``[num_items, 2]``, ``v`` as ``(v, v)``."""

def slot_ranges_expand_cpu(ranges: int, num_ranges: int, slots: int, num_slots: int) -> None:
    """Expands ``[num_ranges, 2]`` inclusive ranges (host) into ``num_slots`` slots (host)."""

def slot_ranges_expand_cuda(
    ranges: int, offsets: int, num_ranges: int, slots: int, num_slots: int, stream: int
) -> None:
    """Enqueues the expansion of ranges with exclusive ``offsets`` (all device) on ``stream``."""
