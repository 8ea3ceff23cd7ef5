"""`ModelConfig`: the fields of a Hugging Face `config.json` that our model code reads.

Why a copy instead of `transformers.PretrainedConfig`: the engine must not need `transformers`
at serving time, and a small frozen record makes every assumption explicit. Unsupported
features (other activations, unknown RoPE scaling) are refused here with a clear message
rather than silently computing something else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mainsail.workers.models.errors import CheckpointError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters (sizes in elements, lengths in tokens)."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    torch_dtype: str
    num_experts: int = 0
    experts_per_token: int = 0
    eos_token_ids: tuple[int, ...] = ()

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the checkpoint declares (float32 when it declares none)."""
        return _DTYPES.get(self.torch_dtype, torch.float32)


def _eos_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def _rope(raw: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    params = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling") or None
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    kind = (scaling or params).get("rope_type", (scaling or {}).get("type", "default"))
    if kind not in ("default", "llama3"):
        raise CheckpointError(f"config.json: unsupported RoPE scaling type {kind!r}")
    return theta, (dict(scaling or params) if kind == "llama3" else None)


def load_model_config(model_dir: Path) -> ModelConfig:
    """Parse ``model_dir/config.json`` (and `generation_config.json` for extra eos ids)."""
    path = Path(model_dir) / "config.json"
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"no config.json in {model_dir}") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON ({exc})") from exc
    archs = raw.get("architectures") or []
    if not archs:
        raise CheckpointError(f"{path}: no `architectures` entry")
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"{path}: unsupported hidden_act {act!r} (only 'silu')")
    try:
        heads = int(raw["num_attention_heads"])
        hidden = int(raw["hidden_size"])
        theta, scaling = _rope(raw)
        eos = set(_eos_ids(raw.get("eos_token_id")))
        gen_path = Path(model_dir) / "generation_config.json"
        if gen_path.is_file():
            eos |= set(_eos_ids(json.loads(gen_path.read_text()).get("eos_token_id")))
        return ModelConfig(
            architecture=str(archs[0]),
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(raw["intermediate_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or hidden // heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            attention_bias=bool(raw.get("attention_bias", False)),
            torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "float32"),
            num_experts=int(raw.get("num_local_experts", 0)),
            experts_per_token=int(raw.get("num_experts_per_tok", 0)),
            eos_token_ids=tuple(sorted(eos)),
        )
    except KeyError as exc:
        raise CheckpointError(f"{path}: missing field {exc.args[0]!r}") from exc
