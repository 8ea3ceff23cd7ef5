"""Model implementations, looked up by the `architectures` entry of `config.json`.

Adding an architecture is one module plus one line in `_REGISTRY`; modules are imported only
when a checkpoint asks for them (a CPU-only path never imports what it does not run).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Literal

import torch

from mainsail.workers.models.config import ModelConfig, load_model_config
from mainsail.workers.models.errors import CheckpointError
from mainsail.workers.models.llama import KVCache, LlamaForCausalLM
from mainsail.workers.models.loader import load_weights
from mainsail.workers.models.lora import AdapterConfig, AdapterSet, read_adapter_config

DType = Literal["auto", "float32", "float16", "bfloat16"]

_REGISTRY: dict[str, str] = {
    "LlamaForCausalLM": "mainsail.workers.models.llama:LlamaForCausalLM",
    "MixtralForCausalLM": "mainsail.workers.models.mixtral:MixtralForCausalLM",
}

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def supported_architectures() -> list[str]:
    """Values of `architectures` in config.json that this engine can run."""
    return sorted(_REGISTRY)


def model_class(architecture: str) -> type[LlamaForCausalLM]:
    """The implementation registered for ``architecture``."""
    target = _REGISTRY.get(architecture)
    if target is None:
        raise CheckpointError(
            f"unsupported architecture {architecture!r}; supported: {supported_architectures()}"
        )
    module, _, name = target.partition(":")
    cls: type[LlamaForCausalLM] = getattr(importlib.import_module(module), name)
    return cls


def resolve_dtype(dtype: DType, cfg: ModelConfig, device: torch.device) -> torch.dtype:
    """``auto`` means float32 on CPU and the checkpoint's dtype elsewhere."""
    if dtype != "auto":
        return _DTYPES[dtype]
    return torch.float32 if device.type == "cpu" else cfg.dtype


def load_model(
    model_dir: Path, dtype: DType = "auto", device: str = "cpu"
) -> tuple[LlamaForCausalLM, ModelConfig]:
    """Build the model of ``model_dir``'s architecture and load its weights, ready to run."""
    model_dir = Path(model_dir)
    cfg = load_model_config(model_dir)
    dev = torch.device(device)
    cls = model_class(cfg.architecture)
    with torch.device("meta"):
        model = cls(cfg)
    load_weights(model, model_dir, resolve_dtype(dtype, cfg, dev), dev)
    model.prepare(dev)
    model.eval()
    return model, cfg


__all__ = [
    "AdapterConfig",
    "AdapterSet",
    "CheckpointError",
    "DType",
    "KVCache",
    "LlamaForCausalLM",
    "ModelConfig",
    "load_model",
    "load_model_config",
    "model_class",
    "read_adapter_config",
    "resolve_dtype",
    "supported_architectures",
]
