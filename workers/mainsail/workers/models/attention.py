"""Paged attention on any device: KV lives in fixed-size blocks addressed by block tables.

Layout per layer: ``k_cache`` and ``v_cache`` are ``[num_blocks, block_size, kv_heads,
head_dim]``; token ``j`` of a sequence lives in block ``table[j // B]`` at offset ``j % B``.
One step's tokens are flattened into ``[T, ...]``. New keys and values are written to their
slots first, then each query attends over its sequence's gathered blocks:

* decode queries (one token per sequence) are batched into one padded
  ``scaled_dot_product_attention`` call with a length mask;
* prefill chunks (several tokens) run one call per sequence with a causal mask offset by the
  tokens already cached (prefix hits, earlier chunks).

Correctness first: this gathers blocks into a contiguous tensor instead of a fused kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class PrefillSpan:
    """One sequence's chunk of several query tokens inside the flattened step."""

    start: int
    end: int
    context_len: int
    block_ids: torch.Tensor


@dataclass
class DecodeGroup:
    """All single-token queries of the step: their rows, padded block tables and key mask."""

    index: torch.Tensor
    tables: torch.Tensor
    mask: torch.Tensor


@dataclass
class AttentionBatch:
    """Where each token's KV goes and what each query attends to, shared by all layers."""

    slot_mapping: torch.Tensor
    decode: DecodeGroup | None = None
    prefills: list[PrefillSpan] = field(default_factory=list)


def _gather(cache: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """Blocks ``[..., n]`` of ``cache`` as contiguous tokens ``[..., n * B, kv_heads, d]``."""
    got = cache[blocks]
    return got.reshape(*blocks.shape[:-1], -1, cache.shape[-2], cache.shape[-1])


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    batch: AttentionBatch,
) -> torch.Tensor:
    """Store ``k``/``v`` (``[T, kv_heads, d]``) and attend ``q`` (``[T, heads, d]``)."""
    kv_heads, dim = k.shape[1], k.shape[2]
    k_cache.view(-1, kv_heads, dim).index_copy_(0, batch.slot_mapping, k)
    v_cache.view(-1, kv_heads, dim).index_copy_(0, batch.slot_mapping, v)
    out = torch.empty_like(q)
    group = batch.decode
    if group is not None:
        qd = q[group.index].unsqueeze(2)
        keys = _gather(k_cache, group.tables).transpose(1, 2)
        values = _gather(v_cache, group.tables).transpose(1, 2)
        att = F.scaled_dot_product_attention(
            qd, keys, values, attn_mask=group.mask, enable_gqa=True
        )
        out[group.index] = att.squeeze(2)
    for span in batch.prefills:
        length = span.end - span.start
        qs = q[span.start : span.end].transpose(0, 1).unsqueeze(0)
        keys = _gather(k_cache, span.block_ids)[: span.context_len].transpose(0, 1).unsqueeze(0)
        values = _gather(v_cache, span.block_ids)[: span.context_len].transpose(0, 1).unsqueeze(0)
        if span.context_len == length:
            att = F.scaled_dot_product_attention(qs, keys, values, is_causal=True, enable_gqa=True)
        else:
            offset = span.context_len - length
            rows = torch.arange(length, device=q.device).unsqueeze(1) + offset
            mask = torch.arange(span.context_len, device=q.device).unsqueeze(0) <= rows
            att = F.scaled_dot_product_attention(qs, keys, values, attn_mask=mask, enable_gqa=True)
        out[span.start : span.end] = att.squeeze(0).transpose(0, 1)
    return out
