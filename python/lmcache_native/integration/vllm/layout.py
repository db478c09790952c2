"""Recognise vLLM's per-layer paged KV caches and name their layout for the native ops.

vLLM hands the connector one tensor per attention layer. What the tensor means depends on the
vLLM version and the attention backend, so the layout is decided from both the backend name and
the tensor's shape, and every dimension is checked against the model's head count, head size and
block size. Anything that does not match a known layout exactly is refused with a message that
says what was seen; the connector then disables itself instead of guessing.

Known layouts (``B`` blocks, ``N`` tokens per block, ``H`` KV heads, ``D`` head size):

===========================  ==============================  ==================================
backend                      tensor vLLM passes              registered as
===========================  ==============================  ==================================
``CPU_ATTN`` (vLLM CPU,      ``[B, H, N, 2*D]``, each        ``vllm_cpu`` (K transposed per
ISA ``vec``/``vec16``)       ``(block, head)`` region dense  ``(block, head)``, then V)
``CPU_ATTN``, ISA ``amx``    ``[B, H, N, 2*D]``, each        ``vllm_cpu_amx`` (K then V per
(bf16 on AMX CPUs)           ``(block, head)`` region dense  ``(block, head)``, packed for AMX
                                                             tiles: 16-token groups of K,
                                                             16-dim groups of V)
any GPU backend, vLLM>=0.32  ``[B, H, N, 2*D]`` (K in        ``flash_attn`` strided view
                             ``[..., :D]``, V in ``[..., D:]``, ``[2, B, N, H, D]``
                             any stride order)
flash-attn, vLLM<0.32        ``[2, B, N, H, D]``             ``flash_attn``
FlashInfer, vLLM<0.32        ``[B, 2, N, H, D]`` (NHD or     ``flashinfer``
                             HND strides)
MLA backends                 ``[B, N, C]`` or ``[B, 1, N, C]`` ``mla``
===========================  ==============================  ==================================

The views share storage with vLLM's tensors; nothing is copied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch

from lmcache_native.ops import check_packing

#: Backends whose ``[B, H, N, 2*D]`` cache is the CPU paged-attention layout, not split K|V.
CPU_BACKENDS: frozenset[str] = frozenset({"CPU_ATTN"})

#: ISAs of vLLM's CPU attention (``layer.isa``) -> the layout of the cache they write. ``vec``
#: and ``vec16`` hold, per ``(block, head)``, K transposed ``[D, N]`` then V ``[N, D]``
#: (``vllm_cpu``); ``amx`` packs the same region for AMX tiles (``vllm_cpu_amx``, see
#: ``lmcache_native.ops._layout``). Each is checked against vLLM 0.32's own
#: ``cpu_attn_reshape_and_cache`` for bf16, fp16 and fp32. The native ops read both into the same
#: token-row chunks, so a chunk stored from an AMX worker loads into a ``vec`` one and back.
#: Other ISAs (``neon``, ``vxe``, ...) are not checked against vLLM and are refused; so are fp8
#: caches, which vLLM quantises and packs in yet another way.
CPU_ISA_LAYOUTS: Mapping[str, str] = MappingProxyType(
    {"vec": "vllm_cpu", "vec16": "vllm_cpu", "amx": "vllm_cpu_amx"}
)

#: The ISAs of :data:`CPU_ISA_LAYOUTS`, the ones the connector reads.
CPU_ISAS: frozenset[str] = frozenset(CPU_ISA_LAYOUTS)


class UnsupportedLayoutError(ValueError):
    """The KV cache tensors do not match any layout the native ops support."""


@dataclass(frozen=True)
class LayerGeometry:
    """What the model says one attention layer's cache must hold.

    Attributes:
        backend: the attention backend name (``AttentionBackend.get_name()``), e.g. ``CPU_ATTN``.
        num_kv_heads: KV heads of this worker's shard.
        head_size: elements per head (for MLA: the latent size, ``kv_lora_rank + rope dim``).
        block_size: tokens per block (vLLM's cache block size).
        use_mla: whether the layer is multi-head latent attention.
        cpu_isa: for a CPU backend, the ISA its attention kernels were built for (vLLM's
            ``layer.isa``: ``vec``, ``vec16``, ``amx``, ...); ``None`` when unknown.
    """

    backend: str
    num_kv_heads: int
    head_size: int
    block_size: int
    use_mla: bool = False
    cpu_isa: str | None = None


@dataclass(frozen=True)
class DetectedLayout:
    """The outcome of :func:`detect_layout`.

    Attributes:
        layout: a name in ``lmcache_native.ops.LAYOUTS``.
        kv_caches: layer name -> tensor (a view of vLLM's tensor) shaped as ``layout`` requires,
            in vLLM's layer order.
        description: one line for logs: backend, vLLM shape, layout.
    """

    layout: str
    kv_caches: dict[str, torch.Tensor]
    description: str


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def _block_multiple(n: int, block_size: int) -> bool:
    # NOTE: vLLM may split a cache block into smaller kernel blocks (same slot numbering), so the
    # tensor's block dimension may divide the configured block size.
    return n > 0 and block_size % n == 0


def _one_layer(name: str, t: torch.Tensor, geo: LayerGeometry) -> tuple[str, torch.Tensor]:
    """Layout name and view for one layer; raises UnsupportedLayoutError with the reason."""
    shape = _shape(t)
    what = f"layer {name!r}: backend {geo.backend}, shape {shape}, strides {tuple(t.stride())}"
    if geo.use_mla:
        if t.dim() == 3 and _block_multiple(shape[1], geo.block_size):
            if shape[2] != geo.head_size:
                raise UnsupportedLayoutError(f"{what}: MLA last dim != head_size {geo.head_size}")
            return "mla", t
        if t.dim() == 4 and shape[1] == 1 and _block_multiple(shape[2], geo.block_size):
            if shape[3] != geo.head_size:
                raise UnsupportedLayoutError(f"{what}: MLA last dim != head_size {geo.head_size}")
            return "mla", t.squeeze(1)
        raise UnsupportedLayoutError(f"{what}: not an MLA cache [B, N, C] or [B, 1, N, C]")

    h, d = geo.num_kv_heads, geo.head_size
    if t.dim() == 4:
        _, heads, n, c = shape
        if heads != h or c != 2 * d or not _block_multiple(n, geo.block_size):
            raise UnsupportedLayoutError(
                f"{what}: expected [num_blocks, {h}, block_size, {2 * d}] "
                f"(num_kv_heads={h}, head_size={d}, block_size={geo.block_size})"
            )
        if geo.backend in CPU_BACKENDS:
            layout = CPU_ISA_LAYOUTS.get(geo.cpu_isa) if geo.cpu_isa is not None else None
            if layout is None:
                raise UnsupportedLayoutError(
                    f"{what}: CPU attention ISA {geo.cpu_isa!r} lays K/V out in a way the "
                    f"native ops do not read (supported: {', '.join(sorted(CPU_ISAS))})"
                )
            if t.element_size() == 1:
                raise UnsupportedLayoutError(
                    f"{what}: quantised (fp8) CPU KV caches are not supported"
                )
            try:
                check_packing(layout, t.element_size(), n, d)
            except ValueError as e:
                raise UnsupportedLayoutError(f"{what}: ISA {geo.cpu_isa!r}: {e}") from None
            return layout, t
        if t.stride(3) != 1:
            raise UnsupportedLayoutError(f"{what}: the K|V dimension must be contiguous")
        # [B, H, N, 2D] -> [B, H, N, 2, D] -> [2, B, N, H, D]: K and V as two strided halves.
        view = t.view(*t.shape[:3], 2, d).permute(3, 0, 2, 1, 4)
        return "flash_attn", view
    if t.dim() == 5:
        is_fa = shape[0] == 2 and shape[3] == h and shape[4] == d
        is_fa = is_fa and _block_multiple(shape[2], geo.block_size)
        is_fi = shape[1] == 2 and shape[3] == h and shape[4] == d
        is_fi = is_fi and _block_multiple(shape[2], geo.block_size)
        if is_fa and is_fi:
            raise UnsupportedLayoutError(f"{what}: ambiguous between flash-attn and FlashInfer")
        if is_fa:
            return "flash_attn", t
        if is_fi:
            return "flashinfer", t
        raise UnsupportedLayoutError(
            f"{what}: expected [2, B, N, {h}, {d}] (flash-attn) or [B, 2, N, {h}, {d}] (FlashInfer)"
        )
    raise UnsupportedLayoutError(f"{what}: rank {t.dim()} is not a known paged KV layout")


def detect_layout(
    kv_caches: Mapping[str, torch.Tensor], geometry: Mapping[str, LayerGeometry]
) -> DetectedLayout:
    """Decides the layout of vLLM's KV caches and builds the views the engine registers.

    Args:
        kv_caches: layer name -> vLLM's per-layer paged cache (any device, any dtype), in layer
            order, as passed to ``KVConnectorBase_V1.register_kv_caches``.
        geometry: layer name -> what the model says that layer holds.

    Returns:
        The layout name and the per-layer views.

    Raises:
        UnsupportedLayoutError: a layer is unknown, does not match a known layout, or the
            layers do not all share one layout, shape, dtype and device.
    """
    if not kv_caches:
        raise UnsupportedLayoutError("no KV cache tensors were registered")
    layouts: set[str] = set()
    views: dict[str, torch.Tensor] = {}
    for name, t in kv_caches.items():
        if not isinstance(t, torch.Tensor):
            raise UnsupportedLayoutError(
                f"layer {name!r}: expected one tensor per layer, got {type(t).__name__}"
            )
        geo = geometry.get(name)
        if geo is None:
            raise UnsupportedLayoutError(f"layer {name!r}: no attention layer of that name")
        layout, view = _one_layer(name, t, geo)
        layouts.add(layout)
        views[name] = view
    if len(layouts) != 1:
        raise UnsupportedLayoutError(f"layers use different layouts: {sorted(layouts)}")
    first_name, first = next(iter(views.items()))
    for name, v in views.items():
        if v.shape != first.shape or v.stride() != first.stride():
            raise UnsupportedLayoutError(
                f"layer {name!r} shape/strides {_shape(v)}/{tuple(v.stride())} differ from "
                f"{first_name!r} {_shape(first)}/{tuple(first.stride())}"
            )
        if v.dtype != first.dtype or v.device != first.device:
            raise UnsupportedLayoutError(
                f"layer {name!r} dtype/device {v.dtype}/{v.device} differ from "
                f"{first_name!r} {first.dtype}/{first.device}"
            )
    layout = layouts.pop()
    backend = geometry[first_name].backend
    original = _shape(kv_caches[first_name])
    description = (
        f"{len(views)} layers, backend {backend}, vLLM shape {original} {first.dtype} on "
        f"{first.device} -> layout {layout} {_shape(first)}"
    )
    return DetectedLayout(layout=layout, kv_caches=views, description=description)
