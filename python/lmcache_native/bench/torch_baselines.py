"""The baselines of the copy benchmark: one layer's rows by torch advanced indexing.

What a pure-torch connector writes: ``torch_rows`` reads the ``[num_kv, T, row]`` rows of some
slots out of one layer of a paged cache, ``torch_put_rows`` writes them back (``index_put``),
for every layout of :data:`lmcache_native.ops.LAYOUTS`.
"""

from __future__ import annotations

import torch


def _amx_flat_index(layer: torch.Tensor, slots: torch.Tensor, b: int) -> torch.Tensor:
    """Element indices into ``layer.view(-1)`` of the rows of ``slots``, ``[2, T, H * D]``.

    For a ``vllm_cpu_amx`` cache: the packing of ``testing/reference.py``'s ``amx_index``, as
    one index table per block offset.
    """
    _, h, _, d2 = layer.shape
    d = d2 // 2
    p = 4 // layer.element_size()
    o = torch.arange(b, device=slots.device)[:, None]
    dim = torch.arange(d, device=slots.device)[None, :]
    k_idx = (o // 16) * 16 * d + (dim // p) * 16 * p + (o % 16) * p + dim % p  # [B, D]
    v_idx = b * d + (dim // 16) * 16 * b + (o // p) * 16 * p + o % p + (dim % 16) * p
    s0, s1 = layer.stride(0), layer.stride(1)
    blk, off = slots // b, slots % b
    heads = torch.arange(h, device=slots.device)[None, :, None] * s1
    base = blk[:, None, None] * s0 + heads  # [T, H, 1]
    t = slots.numel()
    k = (base + k_idx[off][:, None, :]).reshape(t, -1)
    v = (base + v_idx[off][:, None, :]).reshape(t, -1)
    return torch.stack((k, v))


def torch_rows(layer: torch.Tensor, layout: str, slots: torch.Tensor, b: int) -> torch.Tensor:
    """[num_kv, T, row] rows of ``slots`` by advanced indexing (a new tensor)."""
    t = slots.numel()
    if layout == "vllm_cpu_amx":
        return layer.view(-1)[_amx_flat_index(layer, slots, b)]
    if layout == "flash_attn":
        return layer.flatten(1, 2).flatten(2)[:, slots]
    if layout == "mla":
        return layer.flatten(0, 1)[slots].unsqueeze(0)
    blk, off = slots // b, slots % b
    if layout == "flashinfer":  # [N, 2, B, H, D] -> [T, 2, H, D]
        return layer[blk, :, off].reshape(t, 2, -1).transpose(0, 1)
    if layout == "hnd":  # [N, 2, H, B, D] -> [T, 2, H, D]
        return layer[blk, :, :, off].reshape(t, 2, -1).transpose(0, 1)
    # vllm_cpu [N, H, B, 2D]: per (block, head) K as [D, B] then V as [B, D]
    n, h, _, d2 = layer.shape
    d = d2 // 2
    halves = layer.view(n, h, 2, b * d)
    k = halves[:, :, 0].view(n, h, d, b)[blk, :, :, off]  # [T, H, D]
    v = halves[:, :, 1].view(n, h, b, d)[blk, :, off]  # [T, H, D]
    return torch.stack((k.reshape(t, -1), v.reshape(t, -1)))


def torch_put_rows(
    layer: torch.Tensor, layout: str, slots: torch.Tensor, b: int, rows: torch.Tensor
) -> None:
    """Writes [num_kv, T, row] ``rows`` into ``slots`` by advanced indexing (index_put)."""
    t = slots.numel()
    if layout == "vllm_cpu_amx":
        layer.view(-1)[_amx_flat_index(layer, slots, b)] = rows
        return
    if layout == "flash_attn":
        layer.flatten(1, 2).flatten(2)[:, slots] = rows
        return
    if layout == "mla":
        layer.flatten(0, 1)[slots] = rows[0]
        return
    blk, off = slots // b, slots % b
    if layout == "flashinfer":
        layer[blk, :, off] = rows.transpose(0, 1).reshape(t, 2, *layer.shape[3:])
        return
    if layout == "hnd":
        layer[blk, :, :, off] = rows.transpose(0, 1).reshape(t, 2, layer.shape[2], layer.shape[4])
        return
    n, h, _, d2 = layer.shape
    d = d2 // 2
    halves = layer.view(n, h, 2, b * d)
    halves[:, :, 0].view(n, h, d, b)[blk, :, :, off] = rows[0].view(t, h, d)
    halves[:, :, 1].view(n, h, b, d)[blk, :, off] = rows[1].view(t, h, d)
