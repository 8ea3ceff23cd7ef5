"""Generated deterministic checkpoints (Llama-style dense, Mixtral-style MoE; sizes tiny, small)."""

from mainsail.workers.checkpoint.generator import MARKER, ensure_checkpoint, generate_checkpoint
from mainsail.workers.checkpoint.weights import Arch, Size

__all__ = ["MARKER", "Arch", "Size", "ensure_checkpoint", "generate_checkpoint"]
