"""What the scheduler-side connector tells the worker-side connector for one engine step.

The metadata travels from the scheduler to every worker with the scheduler output (pickled in
vLLM's multiprocess mode), so it holds plain lists and ints only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorMetadata

from lmcache_native.engine.keys import KeyExtras


def slot_range(block_ids: list[int], block_size: int, start: int, end: int) -> torch.Tensor:
    """Slots of a request's tokens ``[start, end)``: ``block_id * block_size + offset``.

    Only the blocks covering the range are read, so the cost is that of the range.

    Raises:
        ValueError: the blocks cannot hold ``end`` tokens, or ``start > end``.
    """
    if start > end or start < 0:
        raise ValueError(f"bad token range [{start}, {end})")
    if end > len(block_ids) * block_size:
        raise ValueError(f"{len(block_ids)} blocks of {block_size} tokens cannot hold {end} tokens")
    if start == end:
        return torch.empty(0, dtype=torch.int64)
    first = start // block_size
    last = (end - 1) // block_size
    blocks = torch.tensor(block_ids[first : last + 1], dtype=torch.int64)
    slots = blocks[:, None] * block_size + torch.arange(block_size, dtype=torch.int64)[None, :]
    base = first * block_size
    return slots.reshape(-1)[start - base : end - base].contiguous()


def slot_mapping(block_ids: list[int], block_size: int, num_tokens: int) -> torch.Tensor:
    """Slots of a request's first ``num_tokens`` tokens: ``block_id * block_size + offset``.

    Args:
        block_ids: the request's cache blocks, in token order.
        block_size: tokens per block (vLLM's ``cache_config.block_size``).
        num_tokens: how many leading tokens to map (at most ``len(block_ids) * block_size``).

    Returns:
        int64 CPU tensor ``[num_tokens]``.

    Raises:
        ValueError: the blocks cannot hold ``num_tokens`` tokens.
    """
    if num_tokens > len(block_ids) * block_size:
        raise ValueError(
            f"{len(block_ids)} blocks of {block_size} tokens cannot hold {num_tokens} tokens"
        )
    nb = (num_tokens + block_size - 1) // block_size
    blocks = torch.tensor(block_ids[:nb], dtype=torch.int64)
    slots = blocks[:, None] * block_size + torch.arange(block_size, dtype=torch.int64)[None, :]
    return slots.reshape(-1)[:num_tokens].contiguous()


@dataclass
class LoadSpec:
    """Load stored chunks into a request's blocks before this step's forward.

    Attributes:
        req_id: vLLM's request id.
        token_ids: the stored prefix to retrieve (whole chunks).
        block_ids: the request's blocks, in token order.
        start: first token position to write (vLLM already holds ``[0, start)``).
        end: one past the last token position to write (``end <= len(token_ids)``).
        extras: the request's key extras (salt, LoRA adapter, multimodal items), if any.
        async_load: load in the background and report the request in ``get_finished`` (vLLM
            holds it in ``WAITING_FOR_REMOTE_KVS`` until then).
    """

    req_id: str
    token_ids: list[int]
    block_ids: list[int]
    start: int
    end: int
    extras: KeyExtras | None = None
    async_load: bool = False


@dataclass
class SaveSpec:
    """Store a request's computed prefix after this step's forward (what is new since before).

    The worker keeps each request's token ids and block ids; a SaveSpec replaces them from
    ``start`` (tokens) and ``block_start`` (blocks) on. The first SaveSpec of a request has both
    at 0 and carries its key extras.

    Attributes:
        req_id: vLLM's request id.
        token_ids: the request's tokens ``[start, start + len)`` whose KV is in the cache after
            this step (prompt, then decode).
        block_ids: the request's blocks from index ``block_start`` on, in token order.
        num_prompt_tokens: how many of the request's tokens are prompt tokens.
        extras: the request's key extras (salt, LoRA adapter, multimodal items), if any; sent
            with the first SaveSpec only.
        start: the request position of ``token_ids[0]``.
        block_start: the index of ``block_ids[0]`` among the request's blocks.
    """

    req_id: str
    token_ids: list[int]
    block_ids: list[int]
    num_prompt_tokens: int
    extras: KeyExtras | None = None
    start: int = 0
    block_start: int = 0


@dataclass
class LMCacheNativeConnectorMetadata(KVConnectorMetadata):
    """One step's loads and saves.

    Attributes:
        loads: requests to load into before the forward.
        saves: requests to store after the forward.
        released: requests whose looked-up chunks the workers may stop holding (finished, or
            not loading after all).
        delayed_free: finished requests whose blocks vLLM keeps until the workers report their
            stores done (``get_finished``'s first set).
        preempted: requests vLLM preempted this step (their blocks may be reused by its
            forward, so their background stores must finish before it).
        idle: vLLM scheduled no tokens this step (no forward runs): the workers may wait a
            moment for a background load before they answer ``get_finished``.
    """

    loads: list[LoadSpec] = field(default_factory=list)
    saves: list[SaveSpec] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    delayed_free: list[str] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)
    idle: bool = False
