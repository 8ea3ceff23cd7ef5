"""The tiny checkpoint generator: HF layout, deterministic, idempotent, sharding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from mainsail.workers.checkpoint import MARKER, ensure_checkpoint, generate_checkpoint
from mainsail.workers.engine import Tokenizer

FILES = {
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    MARKER,
}


def _tensor(path: Path, name: str) -> list[float]:
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        values: list[float] = f.get_tensor(name).flatten()[:8].tolist()
    return values


@pytest.mark.unit
@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_layout_and_config(tmp_path: Path, arch: str) -> None:
    out = generate_checkpoint(arch, tmp_path / arch)  # type: ignore[arg-type]
    assert {p.name for p in out.iterdir()} == FILES
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM" if arch == "llama" else "MixtralForCausalLM"]
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (
        64,
        4,
        2,
    )
    assert cfg.get("num_local_experts", 4) == 4
    tok = Tokenizer(out)
    assert tok.vocab_size == cfg["vocab_size"] == 512
    assert tok.decode(tok.encode("Hello, sailor!")) == "Hello, sailor!"
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert chat[0] == cfg["bos_token_id"]


@pytest.mark.unit
def test_deterministic_and_idempotent(tmp_path: Path) -> None:
    a = generate_checkpoint("llama", tmp_path / "a", seed=1)
    mtime = (a / "model.safetensors").stat().st_mtime_ns
    assert generate_checkpoint("llama", a, seed=1) == a
    assert (a / "model.safetensors").stat().st_mtime_ns == mtime
    b = generate_checkpoint("llama", tmp_path / "b", seed=1)
    c = generate_checkpoint("llama", tmp_path / "c", seed=2)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert _tensor(a, name) == _tensor(b, name) != _tensor(c, name)
    (a / "model.safetensors").write_bytes(b"torn")
    generate_checkpoint("llama", a, seed=1)
    assert _tensor(a, name) == _tensor(b, name)


@pytest.mark.unit
def test_sharded_layout_and_cache(tmp_path: Path) -> None:
    out = generate_checkpoint("mixtral", tmp_path / "sharded", shards=3)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3
    assert ensure_checkpoint("llama", cache_dir=tmp_path) == tmp_path / "llama-s0"
    with pytest.raises(ValueError, match="architecture"):
        generate_checkpoint("gpt2", tmp_path / "x")  # type: ignore[arg-type]


@pytest.mark.unit
def test_small_size_config_cache_name_and_determinism(tmp_path: Path) -> None:
    out = ensure_checkpoint("llama", cache_dir=tmp_path, seed=3, size="small")
    assert out == tmp_path / "llama-small-s3"
    cfg = json.loads((out / "config.json").read_text())
    shape = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    assert tuple(cfg[k] for k in shape) == (256, 4, 8, 4)
    assert (cfg["intermediate_size"], cfg["head_dim"], cfg["vocab_size"]) == (768, 32, 512)
    assert json.loads((out / MARKER).read_text())["size"] == "small"
    # The tokenizer is the tiny model's, byte for byte.
    tiny = ensure_checkpoint("llama", cache_dir=tmp_path, seed=3)
    assert (out / "tokenizer.json").read_bytes() == (tiny / "tokenizer.json").read_bytes()
    again = generate_checkpoint("llama", tmp_path / "again", seed=3, size="small")
    name = "model.layers.3.mlp.down_proj.weight"
    assert _tensor(out, name) == _tensor(again, name)
    # A tiny checkpoint in the same directory is not mistaken for a small one.
    generate_checkpoint("llama", again, seed=3)
    assert json.loads((again / "config.json").read_text())["hidden_size"] == 64
    with pytest.raises(ValueError, match="size"):
        generate_checkpoint("llama", tmp_path / "x", size="huge")  # type: ignore[arg-type]


@pytest.mark.unit
def test_small_size_tensor_shapes_follow_its_config(tmp_path: Path) -> None:
    """Every tensor has the shape `LlamaForCausalLM` builds from config.json (no transformers
    import here: it costs seconds; tests/integration compares logits with transformers)."""
    out = generate_checkpoint("llama", tmp_path / "small", size="small")
    cfg = json.loads((out / "config.json").read_text())
    hidden, inter, head_dim = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * head_dim, cfg["num_key_value_heads"] * head_dim
    expected = {
        "model.embed_tokens.weight": (cfg["vocab_size"], hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (cfg["vocab_size"], hidden),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        expected |= {
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (q, hidden),
            p + "self_attn.k_proj.weight": (kv, hidden),
            p + "self_attn.v_proj.weight": (kv, hidden),
            p + "self_attn.o_proj.weight": (hidden, q),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
        }
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        found = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    assert found == expected
