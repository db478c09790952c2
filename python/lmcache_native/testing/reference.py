"""Naive, obviously correct references for the native kernels (per-token loops, hashlib).

Tests compare the kernels against these bit for bit; benchmarks use the pure-Python parser as
the slot-string baseline. Nothing here is fast on purpose.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


def kv_row(layer: torch.Tensor, layout: str, kv: int, slot: int) -> torch.Tensor:
    """One token's row (all heads, all dims) of one kv side of one layer, as a 1-D copy.

    Args:
        layer: one layer's paged cache, shaped as ``layout`` requires.
        layout: ``flash_attn``, ``flashinfer``, ``hnd``, ``mla``, ``vllm_cpu`` or
            ``vllm_cpu_amx``.
        kv: 0 for K, 1 for V (always 0 for ``mla``).
        slot: a valid slot (``block * block_size + offset``).

    Returns:
        A contiguous 1-D tensor of ``num_heads * head_size`` elements, same dtype/device.
    """
    if layout == "flash_attn":
        b = layer.shape[2]
        return layer[kv, slot // b, slot % b].reshape(-1).clone()
    if layout == "flashinfer":
        b = layer.shape[2]
        return layer[slot // b, kv, slot % b].reshape(-1).clone()
    if layout == "hnd":
        b = layer.shape[3]
        return layer[slot // b, kv, :, slot % b, :].reshape(-1).clone()
    if layout == "mla":
        b = layer.shape[1]
        return layer[slot // b, slot % b].reshape(-1).clone()
    if layout == "vllm_cpu_amx":
        n_heads, b, d = layer.shape[1], layer.shape[2], layer.shape[3] // 2
        p = 4 // layer.element_size()
        parts = []
        for h in range(n_heads):
            region = layer[slot // b, h].reshape(-1)
            parts.append(region[[amx_index(kv, slot % b, dim, b, d, p) for dim in range(d)]])
        return torch.cat(parts).clone()
    if layout == "vllm_cpu":
        n_heads, b, d2 = layer.shape[1], layer.shape[2], layer.shape[3]
        d = d2 // 2
        parts = []
        for h in range(n_heads):
            region = layer[slot // b, h].reshape(-1)
            if kv == 0:
                parts.append(region[: b * d].view(d, b)[:, slot % b])
            else:
                parts.append(region[b * d :].view(b, d)[slot % b])
        return torch.cat(parts).clone()
    raise ValueError(f"unknown layout {layout!r}")


def set_kv_row(layer: torch.Tensor, layout: str, kv: int, slot: int, row: torch.Tensor) -> None:
    """Writes ``row`` (``num_heads * head_size`` elements) into one token's row in place."""
    if layout == "flash_attn":
        b = layer.shape[2]
        layer[kv, slot // b, slot % b] = row.view(layer.shape[3], layer.shape[4])
    elif layout == "flashinfer":
        b = layer.shape[2]
        layer[slot // b, kv, slot % b] = row.view(layer.shape[3], layer.shape[4])
    elif layout == "hnd":
        b = layer.shape[3]
        layer[slot // b, kv, :, slot % b, :] = row.view(layer.shape[2], layer.shape[4])
    elif layout == "mla":
        b = layer.shape[1]
        layer[slot // b, slot % b] = row
    elif layout == "vllm_cpu":
        n_heads, b, d2 = layer.shape[1], layer.shape[2], layer.shape[3]
        d = d2 // 2
        for h in range(n_heads):
            block_head = layer[slot // b, h]  # [block_size, 2 * head_size], contiguous
            region = block_head.view(-1)
            if kv == 0:
                region[: b * d].view(d, b)[:, slot % b] = row[h * d : (h + 1) * d]
            else:
                region[b * d :].view(b, d)[slot % b] = row[h * d : (h + 1) * d]
    elif layout == "vllm_cpu_amx":
        n_heads, b, d = layer.shape[1], layer.shape[2], layer.shape[3] // 2
        p = 4 // layer.element_size()
        for h in range(n_heads):
            region = layer[slot // b, h].view(-1)  # [block_size * 2 * head_size], contiguous
            for dim in range(d):
                region[amx_index(kv, slot % b, dim, b, d, p)] = row[h * d + dim]
    else:
        raise ValueError(f"unknown layout {layout!r}")


def amx_index(kv: int, offset: int, dim: int, block_size: int, head_size: int, pack: int) -> int:
    """Element index of one value in vLLM's AMX-packed CPU cache.

    The index is inside one (block, head) region, of token ``offset`` of the block and dimension
    ``dim`` of K (``kv`` 0) or V (``kv`` 1).

    vLLM's ``cpu_attn_reshape_and_cache`` for the ``amx`` ISA packs each region (``2 *
    block_size * head_size`` elements, K first) for AMX B tiles of 16 rows of 64 bytes, with
    ``pack = 4 / elem_size`` elements per 32-bit word:

    - K, tokens in groups of 16: a group takes ``16 * head_size`` elements; inside it, the
      ``pack`` dims of word ``dim // pack`` of the 16 tokens form one 64-byte row, token after
      token.
    - V, dims in groups of 16: a group takes ``16 * block_size`` elements; inside it, the
      ``pack`` tokens of word ``offset // pack`` share one word per dim, so one 64-byte row holds
      16 dims of ``pack`` tokens.
    """
    if kv == 0:
        group, in_group = divmod(offset, 16)
        word, in_word = divmod(dim, pack)
        return group * 16 * head_size + word * 16 * pack + in_group * pack + in_word
    group, in_group = divmod(dim, 16)
    word, in_word = divmod(offset, pack)
    return (
        block_size * head_size
        + group * 16 * block_size
        + word * 16 * pack
        + in_group * pack
        + in_word
    )


def num_kv(layout: str) -> int:
    """2 for K/V layouts, 1 for MLA."""
    return 1 if layout == "mla" else 2


def paged_kv_gather(
    kv_caches: Sequence[torch.Tensor], slot_mapping: Sequence[int], out: torch.Tensor, layout: str
) -> None:
    """Reference gather: ``out[kv, layer, i] = row(kv, layer, slot_mapping[i])``; slot -1 skipped.

    Args:
        kv_caches: per-layer paged caches.
        slot_mapping: slots, one per token; -1 leaves ``out``'s row untouched.
        out: ``[num_kv, num_layers, num_tokens, num_heads * head_size]`` chunk buffer.
        layout: the cache layout name.
    """
    for kv in range(num_kv(layout)):
        for li, layer in enumerate(kv_caches):
            for i, slot in enumerate(slot_mapping):
                if int(slot) == -1:
                    continue
                out[kv, li, i] = kv_row(layer, layout, kv, int(slot))


def paged_kv_scatter(
    chunk: torch.Tensor, kv_caches: Sequence[torch.Tensor], slot_mapping: Sequence[int], layout: str
) -> None:
    """Reference scatter: ``row(kv, layer, slot_mapping[i]) = chunk[kv, layer, i]``; -1 skipped."""
    for kv in range(num_kv(layout)):
        for li, layer in enumerate(kv_caches):
            for i, slot in enumerate(slot_mapping):
                if int(slot) == -1:
                    continue
                set_kv_row(layer, layout, kv, int(slot), chunk[kv, li, i])


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).cpu().numpy().tobytes()


def kv_chunk_md5(
    kv_caches: Sequence[torch.Tensor], slot_mapping: Sequence[int], chunk_size: int, layout: str
) -> tuple[list[list[str]], list[str]]:
    """Reference checksums with ``hashlib.md5``.

    For chunk c (slots ``[c*chunk_size, (c+1)*chunk_size)`` of ``slot_mapping``, the last chunk
    may be shorter) and layer l: MD5 of the K rows of the chunk's slots in slot order, then the
    V rows (MLA: its single rows), raw bytes. Slot -1 contributes nothing. The combined digest
    of a chunk is the MD5 of the concatenated per-layer hex digests in layer order.

    Returns:
        ``(per_layer, combined)`` with ``per_layer[layer][chunk]`` and ``combined[chunk]``
        lowercase hex strings.
    """
    slots = [int(s) for s in slot_mapping]
    num_chunks = (len(slots) + chunk_size - 1) // chunk_size
    per_layer: list[list[str]] = []
    for layer in kv_caches:
        digests = []
        for c in range(num_chunks):
            h = hashlib.md5()
            for kv in range(num_kv(layout)):
                for slot in slots[c * chunk_size : (c + 1) * chunk_size]:
                    if slot != -1:
                        h.update(_bytes(kv_row(layer, layout, kv, slot)))
            digests.append(h.hexdigest())
        per_layer.append(digests)
    combined = [
        hashlib.md5("".join(per_layer[li][c] for li in range(len(kv_caches))).encode()).hexdigest()
        for c in range(num_chunks)
    ]
    return per_layer, combined


def parse_slot_mapping(text: str, max_slots: int) -> list[int]:
    """Pure-Python parser of the admin API's slot string (the benchmark baseline).

    ``"1,2,3,[9,12],17,19"``: whitespace ignored, ``[a,b]`` inclusive, order kept, no dedupe,
    empty items skipped. Raises ``ValueError`` for nested or unmatched brackets, ``a > b``,
    non-numbers, negative numbers, or more than ``max_slots`` slots.
    """
    s = "".join(text.split())
    out: list[int] = []
    i, n = 0, len(s)
    while i < n:
        if s[i] == ",":
            i += 1
            continue
        if s[i] == "[":
            j = s.find("]", i)
            if j < 0:
                raise ValueError(f"unmatched '[' at position {i}")
            inner = s[i + 1 : j]
            if "[" in inner:
                raise ValueError(f"nested '[' at position {i}")
            parts = inner.split(",")
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise ValueError(f"range must be [a,b] with non-negative integers, got [{inner}]")
            a, b = int(parts[0]), int(parts[1])
            if a > b:
                raise ValueError(f"range start {a} > end {b}")
            if len(out) + (b - a + 1) > max_slots:
                raise ValueError(f"more than max_slots={max_slots} slots")
            out.extend(range(a, b + 1))
            i = j + 1
            if i < n and s[i] != ",":
                raise ValueError(f"expected ',' after ']' at position {i}")
            continue
        j = i
        while j < n and s[j] != ",":
            j += 1
        item = s[i:j]
        if not item.isdigit():
            raise ValueError(f"not a non-negative integer: {item!r}")
        if len(out) + 1 > max_slots:
            raise ValueError(f"more than max_slots={max_slots} slots")
        out.append(int(item))
        i = j
    return out


def compress_slot_mapping(slots: Sequence[int]) -> list[int | list[int]]:
    """Pure-Python compressor: runs of >= 3 consecutive values -> ``[start, end]``, order kept."""
    vals = [int(s) for s in slots]
    out: list[int | list[int]] = []
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        if j - i + 1 >= 3:
            out.append([vals[i], vals[j]])
        else:
            out.extend(vals[i : j + 1])
        i = j + 1
    return out


def compress_slot_ranges(slots: Sequence[int]) -> list[list[int]]:
    """Pure-Python run table: ``compress_slot_mapping``'s items, a plain ``v`` as ``[v, v]``."""
    return [
        item if isinstance(item, list) else [item, item] for item in compress_slot_mapping(slots)
    ]
