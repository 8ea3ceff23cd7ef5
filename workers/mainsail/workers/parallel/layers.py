"""Sharded replacements for the layers whose math crosses ranks.

Each keeps the parameter names of the layer it replaces, so a shard's ``state_dict`` keys are
still the checkpoint's tensor names and the loader only has to slice:

* `RowParallelLinear` (``o_proj``, ``down_proj``): the input is this rank's slice of heads or
  intermediate rows; the partial products are summed over the tensor-parallel ranks. A bias
  is held by rank 0 only (zeros elsewhere), so the sum adds it once.
* `VocabParallelEmbedding`: this rank's rows of the table; ids outside them give zeros and
  the sum over ranks assembles every token's row.
* `VocabParallelHead`: this rank's vocabulary slice of the logits, gathered along the
  vocabulary and cut back to the real size (the last slice may be padding).
* `ExpertParallelMoE`: the router (gate) is replicated; each rank runs only the experts it
  holds on the tokens routed to them and the outputs are summed over the expert world. With
  top-2 routing every token's output is ``0 + y1 + y2`` in one process and ``y1 + y2`` (plus
  exact zeros) here, so expert parallelism alone is bit-identical to one process.

Column-parallel layers (``q/k/v_proj``, ``gate/up_proj``) need no code: a plain `Linear` over
this rank's output rows is exactly that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mainsail.workers.models.layers import GatedMLP, Linear
from mainsail.workers.parallel.collectives import Collectives


class RowParallelLinear(Linear):
    """`Linear` over this rank's input columns; outputs summed over tensor-parallel ranks."""

    def __init__(self, in_features: int, out_features: int, bias: bool, comm: Collectives):
        super().__init__(in_features, out_features, bias=bias)
        self.comm = comm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.comm.tp_all_reduce(super().forward(x))


class VocabParallelEmbedding(nn.Module):
    """Rows ``[start, start + per_rank)`` of the embedding table (padding rows are zero)."""

    def __init__(self, start: int, per_rank: int, dim: int, comm: Collectives) -> None:
        super().__init__()
        self.start, self.per_rank, self.comm = start, per_rank, comm
        self.weight = nn.Parameter(torch.empty(per_rank, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        outside = (local < 0) | (local >= self.per_rank)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out.masked_fill_(outside.unsqueeze(-1), 0.0)
        return self.comm.tp_all_reduce(out)


class VocabParallelHead(nn.Module):
    """This rank's vocabulary slice of the LM head; logits gathered over the ranks."""

    def __init__(self, per_rank: int, dim: int, vocab_size: int, comm: Collectives) -> None:
        super().__init__()
        self.vocab_size, self.comm = vocab_size, comm
        self.weight = nn.Parameter(torch.empty(per_rank, dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        local = F.linear(hidden, self.weight)
        return self.comm.tp_gather_last(local)[..., : self.vocab_size]


class ExpertParallelMoE(nn.Module):
    """Mixtral's sparse MoE with only the experts in ``held`` (``gate`` + ``experts.{e}``).

    ``load`` counts the tokens routed to each expert (all experts: the gate is replicated, so
    every rank sees the whole routing); elastic expert parallelism balances placements by it.
    """

    load: torch.Tensor

    def __init__(
        self,
        hidden: int,
        intermediate: int,
        num_experts: int,
        top_k: int,
        held: tuple[int, ...],
        comm: Collectives,
    ) -> None:
        super().__init__()
        self.hidden, self.intermediate = hidden, intermediate
        self.num_experts, self.top_k, self.comm = num_experts, top_k, comm
        self.gate = Linear(hidden, num_experts, bias=False)
        self.experts = nn.ModuleDict({str(e): self.new_expert() for e in held})
        self.register_buffer("load", torch.zeros(num_experts, dtype=torch.long), persistent=False)

    def new_expert(self) -> GatedMLP:
        """An empty expert of this layer's shape (weights assigned by the loader)."""
        return GatedMLP(self.hidden, self.intermediate, names=("w1", "w3", "w2"))

    @property
    def held(self) -> tuple[int, ...]:
        return tuple(sorted(int(e) for e in self.experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.comm.share_tokens(x.contiguous())
        probs = F.softmax(self.gate(x).float(), dim=-1)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
        self.load += torch.bincount(chosen.flatten(), minlength=self.num_experts).to(
            self.load.device
        )
        out = torch.zeros_like(x)
        for e in self.held:
            rows, slot = torch.where(chosen == e)
            if rows.numel() == 0:
                continue
            y = self.experts[str(e)](x[rows]) * weights[rows, slot].unsqueeze(-1)
            out.index_add_(0, rows, y)
        return self.comm.expert_all_reduce(out)
