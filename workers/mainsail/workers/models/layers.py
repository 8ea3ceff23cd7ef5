"""Building blocks shared by the decoder architectures: Linear, Embedding, RMSNorm, SwiGLU.

Parameter names match Hugging Face checkpoints (``weight``, ``gate_proj``...), so a model's
``state_dict`` keys are exactly the checkpoint's tensor names and loading needs no mapping.
`Linear` and `Embedding` allocate uninitialised parameters: every weight comes from the
checkpoint, and random initialisation on the ``meta`` device would pull in torch's slow
reference-kernel imports (seconds per process) for nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from mainsail.workers.models.lora import LoRAHook


class Linear(nn.Module):
    """``y = x W^T (+ b)`` with an uninitialised ``[out, in]`` weight.

    ``lora`` is set when a resident LoRA adapter targets this layer (see `lora.py`); it is a
    plain attribute, not a submodule, so it never appears in ``state_dict``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.lora: LoRAHook | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.lora is not None:
            y = self.lora.apply(x, y)
        return y


class Embedding(nn.Module):
    """Token id -> row of an uninitialised ``[vocab, hidden]`` table."""

    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 and scaled by a learned weight."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


class GatedMLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``. ``names`` lets Mixtral call them w1/w3/w2."""

    def __init__(
        self,
        hidden: int,
        intermediate: int,
        names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj"),
    ) -> None:
        super().__init__()
        self._names = names
        gate, up, down = names
        self.add_module(gate, Linear(hidden, intermediate, bias=False))
        self.add_module(up, Linear(hidden, intermediate, bias=False))
        self.add_module(down, Linear(intermediate, hidden, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up, down = (getattr(self, n) for n in self._names)
        out: torch.Tensor = down(F.silu(gate(x)) * up(x))
        return out
