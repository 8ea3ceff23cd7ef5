"""Generated deterministic checkpoints (Llama-style dense, Mixtral-style MoE; sizes tiny, small)
and LoRA adapters for them."""

from mainsail.workers.checkpoint.adapter import ensure_adapter, generate_adapter
from mainsail.workers.checkpoint.generator import (
    MARKER,
    ensure_checkpoint,
    generate_checkpoint,
)

__all__ = [
    "MARKER",
    "ensure_adapter",
    "ensure_checkpoint",
    "generate_adapter",
    "generate_checkpoint",
]
