"""Tiny deterministic checkpoints (Llama-style dense and Mixtral-style MoE) in HF layout."""

from mainsail.workers.checkpoint.generator import MARKER, ensure_checkpoint, generate_checkpoint
from mainsail.workers.checkpoint.weights import Arch

__all__ = ["MARKER", "Arch", "ensure_checkpoint", "generate_checkpoint"]
