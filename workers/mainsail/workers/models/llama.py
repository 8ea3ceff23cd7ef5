"""Llama-family dense decoder: RoPE, grouped-query attention, RMSNorm, SwiGLU.

The class is also the base of other decoders: a subclass changes the feed-forward block by
overriding ``make_ffn`` (see `mixtral.py`). ``forward`` takes the flattened tokens of one
engine step (any mix of prefill chunks and decodes) and the per-layer paged KV caches.
"""

from __future__ import annotations

import torch
from torch import nn

from mainsail.workers.models.attention import AttentionBatch, paged_attention
from mainsail.workers.models.config import ModelConfig
from mainsail.workers.models.layers import Embedding, GatedMLP, Linear, RMSNorm
from mainsail.workers.models.rope import RotaryTable, apply_rotary

KVCache = tuple[torch.Tensor, torch.Tensor]


class Attention(nn.Module):
    """Self-attention with GQA; keys and values go through the paged cache."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        bias = cfg.attention_bias
        self.q_proj = Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=bias)
        self.k_proj = Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=bias)
        self.v_proj = Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=bias)
        self.o_proj = Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, ...],
        cache: KVCache,
        batch: AttentionBatch,
    ) -> torch.Tensor:
        t = x.shape[0]
        cos, sin = rope
        q = apply_rotary(self.q_proj(x).view(t, self.heads, self.head_dim), cos, sin)
        k = apply_rotary(self.k_proj(x).view(t, self.kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(x).view(t, self.kv_heads, self.head_dim)
        out = paged_attention(q, k, v, cache[0], cache[1], batch)
        result: torch.Tensor = self.o_proj(out.reshape(t, -1))
        return result


class DecoderLayer(nn.Module):
    """Pre-norm residual block: attention then feed-forward (named as in the checkpoint)."""

    def __init__(self, cfg: ModelConfig, ffn_name: str, ffn: nn.Module) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.add_module(ffn_name, ffn)
        self._ffn_name = ffn_name

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, ...],
        cache: KVCache,
        batch: AttentionBatch,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, cache, batch)
        ffn = getattr(self, self._ffn_name)
        out: torch.Tensor = x + ffn(self.post_attention_layernorm(x))
        return out


class _Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig, layers: list[DecoderLayer]) -> None:
        super().__init__()
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """The dense decoder; ``state_dict`` keys equal the Hugging Face tensor names."""

    ffn_name = "mlp"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        layers = [
            DecoderLayer(cfg, self.ffn_name, self.make_ffn(cfg)) for _ in range(cfg.num_layers)
        ]
        self.model = _Backbone(cfg, layers)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rotary: RotaryTable | None = None

    def make_ffn(self, cfg: ModelConfig) -> nn.Module:
        """The feed-forward block of one layer (overridden by MoE architectures)."""
        return GatedMLP(cfg.hidden_size, cfg.intermediate_size)

    def tied_weights(self) -> dict[str, str]:
        """Tensor names that alias another (absent from tied checkpoints)."""
        if self.config.tie_word_embeddings:
            return {"lm_head.weight": "model.embed_tokens.weight"}
        return {}

    def lora_targets(self) -> dict[str, Linear]:
        """Linear layers a LoRA adapter may adapt, by module name: those applied to every
        token row of the step (attention projections; the feed-forward's when it is a plain
        SwiGLU; MoE experts see only their routed rows and are not adaptable)."""
        out: dict[str, Linear] = {}
        for i, layer in enumerate(self.model.layers):
            prefix = f"model.layers.{i}."
            attn = layer.self_attn
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                out[f"{prefix}self_attn.{name}"] = getattr(attn, name)
            ffn = getattr(layer, self.ffn_name)
            if isinstance(ffn, GatedMLP):
                for name, module in ffn.named_children():
                    if isinstance(module, Linear):
                        out[f"{prefix}{self.ffn_name}.{name}"] = module
        return out

    def prepare(self, device: torch.device) -> None:
        """Build non-persistent state (the RoPE table) once weights are on ``device``."""
        cfg = self.config
        self.rotary = RotaryTable(
            cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta, cfg.rope_scaling, device
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        caches: list[KVCache],
        batch: AttentionBatch,
    ) -> torch.Tensor:
        """Hidden states ``[T, hidden]`` after the final norm, for the flattened tokens."""
        if self.rotary is None:
            raise RuntimeError("model not prepared: call prepare(device) after loading weights")
        x = self.model.embed_tokens(input_ids)
        rope = self.rotary.lookup(positions, x.dtype)
        for layer, cache in zip(self.model.layers, caches, strict=True):
            x = layer(x, rope, cache, batch)
        out: torch.Tensor = self.model.norm(x)
        return out

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits ``[N, vocab]`` for the given rows of hidden states."""
        logits: torch.Tensor = self.lm_head(hidden)
        return logits.float()
