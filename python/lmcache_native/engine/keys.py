"""Chunk keys: token ids cut into chunks, each chunk's hash chained to the previous one.

Chunk ``i`` covers tokens ``[i * chunk_size, (i + 1) * chunk_size)``; its hash is
``H(hash of chunk i-1 || token ids of chunk i as little-endian int64)``, so a chunk's key names
the whole prefix that ends with it. Every algorithm here is deterministic across processes and
machines (no ``PYTHONHASHSEED``), so instances share chunks through the remote tier.

Key string: ``model_name@world_size@worker_id@<hash hex>@<dtype>`` (:class:`CacheKey`).

What besides the token ids decides a request's KV is mixed into the chain (:class:`KeyExtras`):
a ``cache_salt`` and a LoRA adapter's identity replace the chain's seed, and a multimodal item's
hash is mixed into every chunk that covers part of its placeholder (with the placeholder's
offset from the chunk start and its length), as vLLM's own prefix-cache block hashes do. A
request with none of these has exactly the keys it had before extras existed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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
        """The key string (:meth:`to_string`)."""
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


@dataclass(frozen=True)
class MMPlaceholder:
    """One multimodal item of a prompt: its hash and the token range its placeholder covers.

    Attributes:
        identifier: the item's hash as vLLM gives it (``mm_features[i].identifier``).
        offset: first token position of the placeholder.
        length: tokens in the placeholder.
    """

    identifier: str
    offset: int
    length: int


@dataclass(frozen=True)
class KeyExtras:
    """What besides token ids decides a request's KV, and so must be part of its chunk keys.

    Attributes:
        cache_salt: vLLM's per-request ``cache_salt`` (tenants with different salts never share).
        lora_name: the LoRA adapter's name, if the request uses one.
        lora_id: the LoRA adapter's ``lora_int_id``.
        mm: the request's multimodal items, sorted by offset.
    """

    cache_salt: str | None = None
    lora_name: str | None = None
    lora_id: int | None = None
    mm: tuple[MMPlaceholder, ...] = field(default_factory=tuple)

    @property
    def empty(self) -> bool:
        """Whether these extras leave the keys as plain token keys."""
        return (
            not self.cache_salt and self.lora_name is None and self.lora_id is None and not self.mm
        )

    def _request_tag(self) -> bytes | None:
        parts: list[Any] = []
        if self.cache_salt:
            parts += ["cache_salt", self.cache_salt]
        if self.lora_name is not None or self.lora_id is not None:
            parts += ["lora", self.lora_name, self.lora_id]
        if not parts:
            return None
        return json.dumps(parts, separators=(",", ":"), ensure_ascii=True).encode()

    def seed(self, base: bytes, fn: Callable[[bytes], bytes]) -> bytes:
        """The chain's seed: ``base``, or a hash of it with the salt and adapter identity."""
        tag = self._request_tag()
        return base if tag is None else fn(base + b"\x00request\x00" + tag)

    def chunk_tag(self, start: int, end: int) -> bytes:
        """Bytes mixed into the hash of the chunk covering ``[start, end)`` (empty: none)."""
        items = [
            [m.identifier, m.offset - start, m.length]
            for m in self.mm
            if m.offset < end and m.offset + m.length > start
        ]
        if not items:
            return b""
        return b"\x00mm\x00" + json.dumps(items, separators=(",", ":"), ensure_ascii=True).encode()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (for the lookup protocol); :meth:`from_dict` reads it back."""
        return {
            "cache_salt": self.cache_salt,
            "lora_name": self.lora_name,
            "lora_id": self.lora_id,
            "mm": [[m.identifier, m.offset, m.length] for m in self.mm],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeyExtras:
        """Reads :meth:`to_dict`'s output.

        Raises:
            ValueError: a field has the wrong type.
        """
        try:
            salt = data.get("cache_salt")
            name = data.get("lora_name")
            lid = data.get("lora_id")
            mm = tuple(MMPlaceholder(str(i), int(o), int(n)) for i, o, n in data.get("mm") or ())
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"bad key extras: {exc}") from None
        if salt is not None and not isinstance(salt, str):
            raise ValueError("bad key extras: cache_salt must be a string")
        if name is not None and not isinstance(name, str):
            raise ValueError("bad key extras: lora_name must be a string")
        if lid is not None and not isinstance(lid, int):
            raise ValueError("bad key extras: lora_id must be an integer")
        return cls(salt, name, lid, mm)


NO_EXTRAS = KeyExtras()


class ChunkHasher:
    """Cuts token ids into chunks and computes their chained hashes.

    Args:
        algorithm: a name from ``HASH_FUNCTIONS`` (``pre_caching_hash_algorithm``).
    """

    def __init__(self, algorithm: str = "builtin") -> None:
        """Hashes with ``algorithm``; raises ValueError for an unknown name."""
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
        extras: KeyExtras | None = None,
        offset: int = 0,
        prev_hash: str | None = None,
    ) -> list[ChunkSpan]:
        """The chunks of ``tokens`` with their hashes, in order.

        Args:
            tokens: the request's token ids (from position ``offset`` on).
            chunk_size: tokens per chunk (>= 1).
            save_unfull_chunk: keep a last chunk shorter than ``chunk_size``; dropped otherwise.
            extras: salt, adapter and multimodal items of the request (``None``: none).
            offset: the request position of ``tokens[0]``, a multiple of ``chunk_size``; the
                spans' ``start``/``end`` stay relative to ``tokens``.
            prev_hash: the hash (hex) of the chunk that ends at ``offset`` (required when
                ``offset > 0``), so a request's chain is continued without rehashing it.

        Raises:
            ValueError: bad ``chunk_size``, ``offset`` or ``prev_hash``.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if offset < 0 or offset % chunk_size:
            raise ValueError(f"offset must be a multiple of chunk_size, got {offset}")
        if offset and prev_hash is None:
            raise ValueError("prev_hash is required when offset > 0")
        arr = tokens_to_array(tokens)
        n = arr.shape[0]
        end_full = (n // chunk_size) * chunk_size
        stop = n if save_unfull_chunk else end_full
        out: list[ChunkSpan] = []
        ex = extras if extras is not None and not extras.empty else None
        if prev_hash is not None and offset:
            prev = bytes.fromhex(prev_hash)
        else:
            prev = _SEED if ex is None else ex.seed(_SEED, self._fn)
        raw = arr.tobytes()
        for start in range(0, stop, chunk_size):
            end = min(start + chunk_size, stop)
            data = prev + raw[start * 8 : end * 8]
            if ex is not None and ex.mm:
                data += ex.chunk_tag(offset + start, offset + end)
            prev = self._fn(data)
            out.append(ChunkSpan(start, end, prev.hex()))
        return out


class ChunkNamer:
    """The chunks and keys of one engine's requests.

    Args:
        algorithm: ``pre_caching_hash_algorithm``.
        chunk_size: tokens per chunk.
        prefix: ``(model_name, world_size, worker_id)``, the first fields of every key.
        save_unfull: whether the last, shorter chunk counts (read per call; a runtime key).
    """

    def __init__(
        self,
        algorithm: str,
        chunk_size: int,
        prefix: tuple[str, int, int],
        save_unfull: Callable[[], bool],
    ) -> None:
        """Names chunks of ``chunk_size`` tokens with ``algorithm`` under ``prefix``."""
        self.hasher = ChunkHasher(algorithm)
        self.chunk_size = chunk_size
        self._prefix = prefix
        self._save_unfull = save_unfull

    def spans(
        self,
        tokens: Sequence[int] | torch.Tensor | np.ndarray,
        extras: KeyExtras | None = None,
        offset: int = 0,
        prev_hash: str | None = None,
        save_unfull: bool | None = None,
    ) -> list[ChunkSpan]:
        """The chunks of ``tokens`` (from request position ``offset``) and their hashes.

        See :meth:`ChunkHasher.spans`; ``save_unfull`` overrides the configured value.
        """
        return self.hasher.spans(
            tokens,
            self.chunk_size,
            self._save_unfull() if save_unfull is None else save_unfull,
            extras,
            offset=offset,
            prev_hash=prev_hash,
        )

    def keys(self, spans: Sequence[ChunkSpan], dtype: torch.dtype) -> list[str]:
        """The key strings of ``spans`` for KV of ``dtype``."""
        model, world, worker = self._prefix
        name = dtype_name(dtype)
        return [CacheKey(model, world, worker, s.chunk_hash, name).to_string() for s in spans]
