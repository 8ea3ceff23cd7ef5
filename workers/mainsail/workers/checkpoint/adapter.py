"""Writes small deterministic LoRA adapters in PEFT layout for a checkpoint, and caches them.

Why: tests, benches and `mainsail up` (a deployment's ``generateRank`` adapters) need real
adapters, loadable by the `peft` library as well as by our engine, without training or a hub.
The directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` (keys
``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight``) plus a marker recording the
rank, seed, base model config and a SHA-256 of every file, written last as in `generator.py`.

Unlike PEFT's initialisation (``B = 0``, a no-op until trained), ``B`` is random too, so the
adapter visibly changes the model's output. Sizes: ``A ~ N(0, 1/in)``, ``B ~ N(0, 1/r) * 0.25``
and ``lora_alpha = 2 r`` (scale 2): each update is about half the size of the base layer's.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

from mainsail.workers.checkpoint.generator import _sha256, _write_json
from mainsail.workers.checkpoint_location import DEFAULT_CACHE_DIR
from mainsail.workers.models.config import ModelConfig, load_model_config

ADAPTER_MARKER = ".mainsail-adapter.json"
ADAPTER_GENERATOR_VERSION = 1
DEFAULT_ADAPTER_CACHE_DIR = DEFAULT_CACHE_DIR.parent / "adapters"
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")
B_GAIN = 0.25


def _shapes(cfg: ModelConfig) -> dict[str, tuple[str, int, int]]:
    """``{target: (module path inside a layer, in_features, out_features)}`` of ``cfg``."""
    q, kv, h = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.hidden_size
    shapes = {
        "q_proj": ("self_attn.q_proj", h, q),
        "k_proj": ("self_attn.k_proj", h, kv),
        "v_proj": ("self_attn.v_proj", h, kv),
        "o_proj": ("self_attn.o_proj", q, h),
    }
    if cfg.num_experts == 0:  # MoE experts are not adaptable (see LlamaForCausalLM.lora_targets)
        inter = cfg.intermediate_size
        shapes |= {
            "gate_proj": ("mlp.gate_proj", h, inter),
            "up_proj": ("mlp.up_proj", h, inter),
            "down_proj": ("mlp.down_proj", inter, h),
        }
    return shapes


def adapter_tensors(cfg: ModelConfig, rank: int, seed: int) -> dict[str, torch.Tensor]:
    """PEFT-named ``lora_A`` / ``lora_B`` tensors for every target of ``cfg`` (float32)."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for i in range(cfg.num_layers):
        for path, fan_in, fan_out in _shapes(cfg).values():
            key = f"base_model.model.model.layers.{i}.{path}"
            a = torch.randn(rank, fan_in, generator=gen) / fan_in**0.5
            b = torch.randn(fan_out, rank, generator=gen) * (B_GAIN / rank**0.5)
            out[f"{key}.lora_A.weight"] = a.contiguous()
            out[f"{key}.lora_B.weight"] = b.contiguous()
    return out


def _config_digest(model_dir: Path) -> str:
    return hashlib.sha256((model_dir / "config.json").read_bytes()).hexdigest()


def _is_complete(out_dir: Path, expect: dict[str, object]) -> bool:
    try:
        meta = json.loads((out_dir / ADAPTER_MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    files: dict[str, str] = meta.pop("files", {})
    return (
        meta == expect
        and bool(files)
        and all(
            (out_dir / name).is_file() and _sha256(out_dir / name) == digest
            for name, digest in files.items()
        )
    )


def generate_adapter(model_dir: Path, out_dir: Path, rank: int, seed: int = 0) -> Path:
    """Write a random rank-``rank`` adapter for the checkpoint in ``model_dir``; return its dir.

    Deterministic in (base config, rank, seed); does nothing when ``out_dir`` already holds it.
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    cfg = load_model_config(model_dir)
    expect: dict[str, object] = {
        "rank": rank,
        "seed": seed,
        "base_config_sha256": _config_digest(model_dir),
        "version": ADAPTER_GENERATOR_VERSION,
    }
    if _is_complete(out_dir, expect):
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ADAPTER_MARKER).unlink(missing_ok=True)
    tmp = out_dir / f".adapter_model.safetensors.tmp-{os.getpid()}"
    save_file(adapter_tensors(cfg, rank, seed), str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out_dir / "adapter_model.safetensors")
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": None,
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "target_modules": list(_shapes(cfg)),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "use_rslora": False,
        "use_dora": False,
    }
    _write_json(out_dir / "adapter_config.json", config)
    files = ["adapter_model.safetensors", "adapter_config.json"]
    marker = {**expect, "files": {name: _sha256(out_dir / name) for name in files}}
    _write_json(out_dir / ADAPTER_MARKER, marker)
    return out_dir


def ensure_adapter(
    model_dir: Path, name: str, rank: int, cache_dir: Path | None = None, seed: int | None = None
) -> Path:
    """The cached generated adapter ``name`` for ``model_dir``, generated on first use.

    Lives in ``<cache_dir>/<config digest>-<name>-r<rank>-s<seed>/``; ``cache_dir`` defaults
    to ``~/.cache/mainsail/adapters`` and ``seed`` to a CRC-32 of ``name`` (so two adapters of
    the same rank differ, and every worker of a deployment generates the same one).
    """
    model_dir = Path(model_dir)
    load_model_config(model_dir)  # a clear error for a directory that is no checkpoint
    if seed is None:
        seed = zlib.crc32(name.encode())
    root = Path(cache_dir) if cache_dir is not None else DEFAULT_ADAPTER_CACHE_DIR
    out = root / f"{_config_digest(model_dir)[:12]}-{name}-r{rank}-s{seed}"
    return generate_adapter(model_dir, out, rank, seed)
