"""Chunk keys: token ids cut into chunks, each chunk's hash chained to the previous one.

Chunk ``i`` covers tokens ``[i * chunk_size, (i + 1) * chunk_size)``; its hash is
``H(hash of chunk i-1 || token ids of chunk i as little-endian int64)``, so a chunk's key names
the whole prefix that ends with it. Every algorithm here is deterministic across processes and
machines (no ``PYTHONHASHSEED``), so instances share chunks through the remote tier.

Key string: ``model_name@world_size@worker_id@<hash hex>@<dtype>`` (:class:`CacheKey`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import xxhash

from lmcache_native.config import HASH_ALGORITHMS

_SEED = b"lmcache-native/chunk-hash/v1"


def _xxh3_64(data: bytes) -> bytes:
    return xxhash.xxh3_64_digest(data)


def _xxh3_128(data: bytes) -> bytes:
    return xxhash.xxh3_128_digest(data)


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _sha256_64(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:8]


# Config spelling -> digest function. "builtin" and vLLM's xxhash names map to xxh3_64.
HASH_FUNCTIONS: dict[str, Callable[[bytes], bytes]] = {
    "builtin": _xxh3_64,
    "xxh3_64": _xxh3_64,
    "xxhash": _xxh3_64,
    "xxhash_cbor": _xxh3_64,
    "xxh3_128": _xxh3_128,
    "sha256": _sha256,
    "sha256_cbor": _sha256,
    "sha256_cbor_64bit": _sha256_64,
}
assert set(HASH_FUNCTIONS) == set(HASH_ALGORITHMS)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the form used in keys and chunk headers)."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class CacheKey:
    """The key of one chunk.

    Attributes:
        model_name: the served model (may contain ``/`` and ``@``).
        world_size: tensor-parallel world size of the writer.
        worker_id: rank of the writer.
        chunk_hash: lowercase hex of the chained prefix hash.
        dtype: KV dtype name, e.g. ``"bfloat16"``.
    """

    model_name: str
    world_size: int
    worker_id: int
    chunk_hash: str
    dtype: str

    def to_string(self) -> str:
        """``model_name@world_size@worker_id@<hash hex>@<dtype>``."""
        return (
            f"{self.model_name}@{self.world_size}@{self.worker_id}@{self.chunk_hash}@{self.dtype}"
        )

    @classmethod
    def from_string(cls, text: str) -> CacheKey:
        """Parses :meth:`to_string`'s output (the model name may itself contain ``@``).

        Raises:
            ValueError: the text is not a key string.
        """
        parts = text.rsplit("@", 4)
        if len(parts) != 5 or not parts[0]:
            raise ValueError(f"not a chunk key: {text!r}")
        model, ws, wid, h, dt = parts
        try:
            world_size, worker_id = int(ws), int(wid)
            int(h, 16)
        except ValueError:
            raise ValueError(f"not a chunk key: {text!r}") from None
        if not dt or h != h.lower():
            raise ValueError(f"not a chunk key: {text!r}")
        return cls(model, world_size, worker_id, h, dt)

    def __str__(self) -> str:
        return self.to_string()


@dataclass(frozen=True)
class ChunkSpan:
    """One chunk of a request: tokens ``[start, end)`` and its chained hash (hex)."""

    start: int
    end: int
    chunk_hash: str

    @property
    def num_tokens(self) -> int:
        """``end - start``."""
        return self.end - self.start


def tokens_to_array(tokens: Sequence[int] | torch.Tensor | np.ndarray) -> np.ndarray:
    """Token ids as a contiguous little-endian int64 array (a copy only when needed).

    Args:
        tokens: a sequence of ints, a 1-D integer tensor (any device) or array.

    Raises:
        ValueError: not one-dimensional, or not integers.
    """
    if isinstance(tokens, torch.Tensor):
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must be integers, got dtype {tokens.dtype}")
        arr = tokens.detach().cpu().numpy()
    else:
        arr = np.asarray(tokens)
        if arr.size == 0:
            arr = arr.astype(np.int64)
        elif not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"tokens must be integers, got {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"tokens must be one-dimensional, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype="<i8")


class ChunkHasher:
    """Cuts token ids into chunks and computes their chained hashes.

    Args:
        algorithm: a name from ``HASH_FUNCTIONS`` (``pre_caching_hash_algorithm``).
    """

    def __init__(self, algorithm: str = "builtin") -> None:
        try:
            self._fn = HASH_FUNCTIONS[algorithm]
        except KeyError:
            raise ValueError(
                f"pre_caching_hash_algorithm must be one of {sorted(HASH_FUNCTIONS)}, "
                f"got {algorithm!r}"
            ) from None
        self.algorithm = algorithm

    def spans(
        self,
        tokens: Sequence[int] | torch.Tensor | np.ndarray,
        chunk_size: int,
        save_unfull_chunk: bool,
    ) -> list[ChunkSpan]:
        """The chunks of ``tokens`` with their hashes, in order.

        Args:
            tokens: the request's token ids.
            chunk_size: tokens per chunk (>= 1).
            save_unfull_chunk: keep a last chunk shorter than ``chunk_size``; dropped otherwise.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        arr = tokens_to_array(tokens)
        n = arr.shape[0]
        end_full = (n // chunk_size) * chunk_size
        stop = n if save_unfull_chunk else end_full
        out: list[ChunkSpan] = []
        prev = _SEED
        raw = arr.tobytes()
        for start in range(0, stop, chunk_size):
            end = min(start + chunk_size, stop)
            prev = self._fn(prev + raw[start * 8 : end * 8])
            out.append(ChunkSpan(start, end, prev.hex()))
        return out
