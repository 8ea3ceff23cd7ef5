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
