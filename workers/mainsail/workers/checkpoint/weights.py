"""Configuration and deterministic weights of the tiny Llama- and Mixtral-style checkpoints.

Why these scales: a tiny model initialised like a training run (std 0.02) has nearly flat
logits, so greedy decoding would hinge on rounding noise and barely depend on the prompt.
Here every projection uses std ``1/sqrt(fan_in)`` (activations keep their size through the
layers) and the output head a gain of 4, so logits spread over several units: greedy output
varies with the prompt and is robust to the small numeric differences between engines.
Tensor names follow the original Hugging Face layouts (Mixtral experts as ``w1``/``w2``/``w3``),
which is what real checkpoints on disk look like.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

Arch = Literal["llama", "mixtral"]

VOCAB_SIZE = 512
HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 128
EXPERTS = 4
EXPERTS_PER_TOKEN = 2
MAX_POSITIONS = 4096
BOS_ID, EOS_ID, PAD_ID = 0, 1, 2
HEAD_GAIN = 4.0


def model_config(arch: Arch) -> dict[str, Any]:
    """The `config.json` of the tiny model of ``arch``."""
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HIDDEN // HEADS,
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


def model_weights(arch: Arch, seed: int) -> dict[str, torch.Tensor]:
    """All tensors of the tiny model, deterministic in ``seed`` (float32, contiguous)."""
    gen = torch.Generator().manual_seed(seed)

    def normal(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float32) * std

    def linear(out_features: int, in_features: int, gain: float = 1.0) -> torch.Tensor:
        return normal(out_features, in_features, std=gain / in_features**0.5)

    def norm() -> torch.Tensor:
        return 1.0 + normal(HIDDEN, std=0.1)

    head_dim = HIDDEN // HEADS
    out: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": normal(VOCAB_SIZE, HIDDEN, std=1.0)
    }
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = norm()
        out[p + "self_attn.q_proj.weight"] = linear(HEADS * head_dim, HIDDEN)
        out[p + "self_attn.k_proj.weight"] = linear(KV_HEADS * head_dim, HIDDEN)
        out[p + "self_attn.v_proj.weight"] = linear(KV_HEADS * head_dim, HIDDEN)
        out[p + "self_attn.o_proj.weight"] = linear(HIDDEN, HEADS * head_dim)
        out[p + "post_attention_layernorm.weight"] = norm()
        if arch == "llama":
            out[p + "mlp.gate_proj.weight"] = linear(INTERMEDIATE, HIDDEN)
            out[p + "mlp.up_proj.weight"] = linear(INTERMEDIATE, HIDDEN)
            out[p + "mlp.down_proj.weight"] = linear(HIDDEN, INTERMEDIATE)
        else:
            moe = p + "block_sparse_moe."
            out[moe + "gate.weight"] = linear(EXPERTS, HIDDEN, gain=2.0)
            for e in range(EXPERTS):
                out[moe + f"experts.{e}.w1.weight"] = linear(INTERMEDIATE, HIDDEN)
                out[moe + f"experts.{e}.w3.weight"] = linear(INTERMEDIATE, HIDDEN)
                out[moe + f"experts.{e}.w2.weight"] = linear(HIDDEN, INTERMEDIATE)
    out["model.norm.weight"] = norm()
    out["lm_head.weight"] = linear(VOCAB_SIZE, HIDDEN, gain=HEAD_GAIN)
    return out
