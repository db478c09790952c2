"""Engine metadata and the results of store/retrieve."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class EngineMetadata:
    """Who this engine is; the first three fields name its chunks' keys.

    Attributes:
        model_name: the served model.
        world_size: tensor-parallel world size.
        worker_id: this worker's rank.
        kv_dtype: KV dtype (taken from the caches when they are registered, if ``None``).
        kv_shape: LMCache's ``(num_layers, num_kv, chunk_size, num_heads, head_size)``
            (derived from the caches when they are registered, if ``None``).
        use_mla: the model uses MLA (one latent row per token, no K/V split).
        role: free text (e.g. ``"worker"``, ``"standalone"``).
        served_model_name: the name vLLM serves under, if different.
        extra: more JSON-able fields shown by ``/meta``.
    """

    model_name: str
    world_size: int = 1
    worker_id: int = 0
    kv_dtype: torch.dtype | None = None
    kv_shape: tuple[int, ...] | None = None
    use_mla: bool = False
    role: str = "worker"
    served_model_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Checks the fields."""
        if not self.model_name:
            raise ValueError("model_name must be non-empty")
        if self.world_size < 1 or not 0 <= self.worker_id < self.world_size:
            raise ValueError(
                f"need world_size >= 1 and 0 <= worker_id < world_size, got "
                f"world_size={self.world_size}, worker_id={self.worker_id}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able view (dtype as ``"torch.bfloat16"``, shape as a list)."""
        return {
            "model_name": self.model_name,
            "world_size": self.world_size,
            "worker_id": self.worker_id,
            "kv_dtype": str(self.kv_dtype) if self.kv_dtype is not None else None,
            "kv_shape": list(self.kv_shape) if self.kv_shape is not None else None,
            "use_mla": self.use_mla,
            "role": self.role,
            "served_model_name": self.served_model_name,
            **self.extra,
        }


@dataclass(frozen=True)
class StoreResult:
    """What ``store`` did.

    Attributes:
        num_tokens: tokens in the request.
        num_stored_tokens: tokens copied out of the KV cache and stored by this call.
        num_skipped_chunks: chunks not copied (already stored, or not stored for ``reason``).
        reason: why fewer tokens than possible were stored, or ``None`` (``"frozen"``,
            ``"shorter than chunk_size"``, ``"already stored"``, ``"hot cache disabled"``,
            ``"no storage backend"``, ``"out of memory"``, ``"unfull chunk not saved"``).
    """

    num_tokens: int
    num_stored_tokens: int
    num_skipped_chunks: int
    reason: str | None = None


@dataclass(frozen=True)
class RetrieveResult:
    """What ``retrieve`` did.

    Attributes:
        num_tokens: tokens in the request.
        num_retrieved: tokens loaded into the KV cache (a prefix of whole chunks).
        mask: ``[num_tokens]`` bool on the CPU, ``True`` for the loaded prefix.
        reason: why nothing or less was loaded, or ``None`` (e.g. ``"below
            min_retrieve_tokens"``).
    """

    num_tokens: int
    num_retrieved: int
    mask: torch.Tensor
    reason: str | None = None
