"""Llama checkpoint variants the generator does not make (other head counts, MQA, tied
embeddings), built next to the generated tiny one: same tokenizer and layer sizes, fresh
seeded weights. Sharding tests need them to cover KV-head replication and uneven splits."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

_COPIED = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


def llama_variant(
    base: Path, out: Path, *, heads: int, kv_heads: int, tie: bool, seed: int = 7
) -> Path:
    """A Llama checkpoint like ``base`` but with ``heads``/``kv_heads`` (head_dim kept) and,
    with ``tie``, the LM head tied to the embedding (no ``lm_head.weight`` tensor)."""
    cfg = json.loads((base / "config.json").read_text())
    hidden, inter, head_dim = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    vocab, layers = cfg["vocab_size"], cfg["num_hidden_layers"]
    gen = torch.Generator().manual_seed(seed)

    def linear(rows: int, cols: int) -> torch.Tensor:
        return torch.randn(rows, cols, generator=gen) / math.sqrt(cols)

    def norm() -> torch.Tensor:
        return 1.0 + 0.1 * torch.randn(hidden, generator=gen)

    tensors = {"model.embed_tokens.weight": torch.randn(vocab, hidden, generator=gen)}
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = norm()
        tensors[p + "self_attn.q_proj.weight"] = linear(heads * head_dim, hidden)
        tensors[p + "self_attn.k_proj.weight"] = linear(kv_heads * head_dim, hidden)
        tensors[p + "self_attn.v_proj.weight"] = linear(kv_heads * head_dim, hidden)
        tensors[p + "self_attn.o_proj.weight"] = linear(hidden, heads * head_dim)
        tensors[p + "post_attention_layernorm.weight"] = norm()
        tensors[p + "mlp.gate_proj.weight"] = linear(inter, hidden)
        tensors[p + "mlp.up_proj.weight"] = linear(inter, hidden)
        tensors[p + "mlp.down_proj.weight"] = linear(hidden, inter)
    tensors["model.norm.weight"] = norm()
    if not tie:
        tensors["lm_head.weight"] = linear(vocab, hidden)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg.update(num_attention_heads=heads, num_key_value_heads=kv_heads, tie_word_embeddings=tie)
    (out / "config.json").write_text(json.dumps(cfg))
    for name in _COPIED:
        shutil.copyfile(base / name, out / name)
    return out
