"""Configuration and deterministic weights of the generated Llama- and Mixtral-style checkpoints.

Two sizes share one vocabulary and tokenizer. ``tiny`` (hidden 64, 2 layers) makes every
forward pass nearly free: right for tests. ``small`` (hidden 256, 4 layers, ~3.3 M weights per
token) makes prefill cost real CPU time (a few hundred microseconds per prompt token on one
core), so benchmarks can see what a prefix-cache hit saves.

Why these scales: a tiny model initialised like a training run (std 0.02) has nearly flat
logits, so greedy decoding would hinge on rounding noise and barely depend on the prompt.
Here every projection uses std ``1/sqrt(fan_in)`` (activations keep their size through the
layers) and the output head a gain of 4, so logits spread over several units: greedy output
varies with the prompt and is robust to the small numeric differences between engines.
Tensor names follow the original Hugging Face layouts (Mixtral experts as ``w1``/``w2``/``w3``),
which is what real checkpoints on disk look like.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mainsail.workers.checkpoint_location import Arch, Size


@dataclass(frozen=True)
class Dims:
    """Shape of one generated model size (heads divide ``hidden``; kv heads divide heads)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


SIZES: dict[str, Dims] = {
    "tiny": Dims(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128),
    "small": Dims(hidden=256, layers=4, heads=8, kv_heads=4, intermediate=768),
}

VOCAB_SIZE = 512
HIDDEN = SIZES["tiny"].hidden
LAYERS = SIZES["tiny"].layers
HEADS = SIZES["tiny"].heads
KV_HEADS = SIZES["tiny"].kv_heads
INTERMEDIATE = SIZES["tiny"].intermediate
EXPERTS = 4
EXPERTS_PER_TOKEN = 2
MAX_POSITIONS = 4096
BOS_ID, EOS_ID, PAD_ID = 0, 1, 2
HEAD_GAIN = 4.0


def dims(size: Size) -> Dims:
    """The shape of ``size``; raises ValueError for an unknown size."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; expected one of {sorted(SIZES)}")
    return SIZES[size]


def model_config(arch: Arch, size: Size = "tiny") -> dict[str, Any]:
    """The `config.json` of the generated ``size`` model of ``arch``."""
    d = dims(size)
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": d.hidden,
        "intermediate_size": d.intermediate,
        "num_hidden_layers": d.layers,
        "num_attention_heads": d.heads,
        "num_key_value_heads": d.kv_heads,
        "head_dim": d.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITIONS,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "torch_dtype": "float32",
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "use_cache": True,
    }
    if arch == "mixtral":
        config.update(
            architectures=["MixtralForCausalLM"],
            model_type="mixtral",
            num_local_experts=EXPERTS,
            num_experts_per_tok=EXPERTS_PER_TOKEN,
            output_router_logits=False,
            router_aux_loss_coef=0.001,
            router_jitter_noise=0.0,
            sliding_window=None,
        )
        del config["mlp_bias"]
    elif arch != "llama":
        raise ValueError(f"unknown architecture {arch!r}; expected 'llama' or 'mixtral'")
    return config


def model_weights(arch: Arch, seed: int, size: Size = "tiny") -> dict[str, torch.Tensor]:
    """All tensors of the ``size`` model, deterministic in ``seed`` (float32, contiguous)."""
    d = dims(size)
    hidden, heads, kv_heads, inter = d.hidden, d.heads, d.kv_heads, d.intermediate
    gen = torch.Generator().manual_seed(seed)

    def normal(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float32) * std

    def linear(out_features: int, in_features: int, gain: float = 1.0) -> torch.Tensor:
        return normal(out_features, in_features, std=gain / in_features**0.5)

    def norm() -> torch.Tensor:
        return 1.0 + normal(hidden, std=0.1)

    head_dim = d.head_dim
    out: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": normal(VOCAB_SIZE, hidden, std=1.0)
    }
    for i in range(d.layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = norm()
        out[p + "self_attn.q_proj.weight"] = linear(heads * head_dim, hidden)
        out[p + "self_attn.k_proj.weight"] = linear(kv_heads * head_dim, hidden)
        out[p + "self_attn.v_proj.weight"] = linear(kv_heads * head_dim, hidden)
        out[p + "self_attn.o_proj.weight"] = linear(hidden, heads * head_dim)
        out[p + "post_attention_layernorm.weight"] = norm()
        if arch == "llama":
            out[p + "mlp.gate_proj.weight"] = linear(inter, hidden)
            out[p + "mlp.up_proj.weight"] = linear(inter, hidden)
            out[p + "mlp.down_proj.weight"] = linear(hidden, inter)
        else:
            moe = p + "block_sparse_moe."
            out[moe + "gate.weight"] = linear(EXPERTS, hidden, gain=2.0)
            for e in range(EXPERTS):
                out[moe + f"experts.{e}.w1.weight"] = linear(inter, hidden)
                out[moe + f"experts.{e}.w3.weight"] = linear(inter, hidden)
                out[moe + f"experts.{e}.w2.weight"] = linear(hidden, inter)
    out["model.norm.weight"] = norm()
    out["lm_head.weight"] = linear(VOCAB_SIZE, hidden, gain=HEAD_GAIN)
    return out
