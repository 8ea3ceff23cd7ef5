"""Mixtral-style sparse mixture of experts: a router picks the top-k experts per token.

Routing (as in the Mixtral checkpoints): softmax over all expert logits, keep the ``k`` best,
renormalise their weights to sum to one, and add the weighted SwiGLU outputs of those experts.
Only the feed-forward differs from Llama, so this module just supplies ``make_ffn``. Each
expert runs once per step on the tokens routed to it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mainsail.workers.models.config import ModelConfig
from mainsail.workers.models.layers import GatedMLP, Linear
from mainsail.workers.models.llama import LlamaForCausalLM


class SparseMoE(nn.Module):
    """``gate`` (router) plus ``experts.{i}.w1/w2/w3``, named as in the checkpoints."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.num_experts < 1 or not 1 <= cfg.experts_per_token <= cfg.num_experts:
            raise ValueError(
                f"MoE config needs 1 <= num_experts_per_tok ({cfg.experts_per_token}) <= "
                f"num_local_experts ({cfg.num_experts})"
            )
        self.top_k = cfg.experts_per_token
        self.gate = Linear(cfg.hidden_size, cfg.num_experts, bias=False)
        self.experts = nn.ModuleList(
            GatedMLP(cfg.hidden_size, cfg.intermediate_size, names=("w1", "w3", "w2"))
            for _ in range(cfg.num_experts)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(self.gate(x).float(), dim=-1)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows, slot = torch.where(chosen == e)
            if rows.numel() == 0:
                continue
            y = expert(x[rows]) * weights[rows, slot].unsqueeze(-1)
            out.index_add_(0, rows, y)
        return out


class MixtralForCausalLM(LlamaForCausalLM):
    """Llama attention with a sparse MoE feed-forward in every layer."""

    ffn_name = "block_sparse_moe"

    def make_ffn(self, cfg: ModelConfig) -> nn.Module:
        return SparseMoE(cfg)
