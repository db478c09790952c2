"""What vLLM's workers are and hold: this worker's rank, each attention layer's geometry.

:func:`layer_geometry` reads vLLM's KV cache specs into the :class:`~.layout.LayerGeometry` that
:func:`~.layout.detect_layout` checks the caches against; :func:`cpu_attention_isa` tells how
vLLM's CPU attention packs K and V.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from lmcache_native.integration.vllm.layout import CPU_BACKENDS, LayerGeometry

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.kv_cache_interface import KVCacheConfig

logger = logging.getLogger("lmcache_native.integration.vllm")


def parallel_rank() -> tuple[int, int]:
    """(rank, world size) of this worker among the workers of its vLLM engine (TP x PP)."""
    from vllm.distributed.parallel_state import get_pp_group, get_tp_group

    tp, pp = get_tp_group(), get_pp_group()
    return pp.rank_in_group * tp.world_size + tp.rank_in_group, tp.world_size * pp.world_size


def layer_geometry(
    vllm_config: VllmConfig, kv_cache_config: KVCacheConfig | None, layer_names: list[str]
) -> dict[str, LayerGeometry]:
    """What each attention layer's cache must hold, from vLLM's KV cache specs.

    Layers vLLM does not describe are left out (``detect_layout`` then refuses them).
    """
    from vllm.v1.kv_cache_interface import AttentionSpec, MLAAttentionSpec

    block_size = int(vllm_config.cache_config.block_size)
    specs: dict[str, Any] = {}
    if kv_cache_config is not None:
        for group in kv_cache_config.kv_cache_groups:
            for name in group.layer_names:
                specs[name] = group.kv_cache_spec
    layers = vllm_config.compilation_config.static_forward_context
    out: dict[str, LayerGeometry] = {}
    for name in layer_names:
        spec = specs.get(name)
        layer = layers.get(name)
        if not isinstance(spec, AttentionSpec) or layer is None:
            continue
        backend_cls = getattr(layer, "attn_backend", None)
        if backend_cls is None and hasattr(layer, "get_attn_backend"):
            backend_cls = layer.get_attn_backend()
        backend = backend_cls.get_name() if backend_cls is not None else "unknown"
        head_size_v = int(getattr(spec, "head_size_v", spec.head_size) or spec.head_size)
        if head_size_v != int(spec.head_size):
            continue  # K and V of different sizes: no layout of the native ops holds that
        out[name] = LayerGeometry(
            backend=backend,
            num_kv_heads=int(spec.num_kv_heads),
            head_size=int(spec.head_size),
            block_size=block_size,
            use_mla=isinstance(spec, MLAAttentionSpec),
            cpu_isa=(
                cpu_attention_isa(vllm_config, layer, spec) if backend in CPU_BACKENDS else None
            ),
        )
    return out


def cpu_attention_isa(vllm_config: VllmConfig, layer: Any, spec: Any) -> str | None:
    """The ISA vLLM's CPU attention uses for ``layer`` (it decides how K and V are packed).

    vLLM's CPU metadata builder sets ``layer.isa`` before the caches are registered; if it is
    missing, the same choice is asked of vLLM's ``_get_attn_isa``. ``None`` when neither is
    available (the layout is then refused rather than guessed).
    """
    isa = getattr(layer, "isa", None)
    if isinstance(isa, str):
        return isa
    try:
        from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

        return str(
            _get_attn_isa(
                vllm_config.model_config.dtype,  # type: ignore[arg-type]  # resolved by now
                int(spec.block_size),
                int(spec.head_size),
                vllm_config.cache_config.cache_dtype,
            )
        )
    except Exception as exc:  # any vLLM without that helper: the ISA is unknown
        logger.debug("CPU attention ISA unknown: %s", exc)
        return None
