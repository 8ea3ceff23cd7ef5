"""LoRA adapter files: the generator's output, config parsing, and every load-time refusal.

The multi-adapter forward is checked against `peft` in tests/integration/test_engine_lora.py;
here the pieces around it: an adapter that does not fit must fail with a message naming it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mainsail.spec.adapters import Adapter
from mainsail.workers.checkpoint import ensure_adapter, generate_adapter, generate_checkpoint
from mainsail.workers.host import adapter_dirs
from mainsail.workers.models import AdapterSet, CheckpointError, load_model, read_adapter_config
from mainsail.workers.models.lora import AdapterConfig
from mainsail.workers.worker_spec import WorkerSpec

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_adapter(tiny_model_dir, tmp_path_factory.mktemp("a") / "x", rank=4, seed=7)


def _copy(
    src: Path,
    dst: Path,
    edit_config: Callable[[dict[str, object]], None] | None = None,
    edit_tensors: Callable[[dict[str, torch.Tensor]], None] | None = None,
) -> Path:
    dst.mkdir()
    cfg = json.loads((src / "adapter_config.json").read_text())
    if edit_config is not None:
        edit_config(cfg)
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    tensors = load_file(str(src / "adapter_model.safetensors"))
    if edit_tensors is not None:
        edit_tensors(tensors)
    save_file(tensors, str(dst / "adapter_model.safetensors"))
    return dst


def _load(model_dir: Path, adapter: Path) -> AdapterSet:
    model, _ = load_model(model_dir)
    adapters = AdapterSet(model)
    adapters.load("a", adapter)
    return adapters


def test_generated_adapter_is_peft_layout_deterministic_and_nonzero(
    tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path
) -> None:
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"} <= set(cfg["target_modules"])
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"
    assert key in tensors and tensors[key].abs().sum() > 0
    again = generate_adapter(tiny_model_dir, tmp_path / "again", rank=4, seed=7)
    other = load_file(str(again / "adapter_model.safetensors"))
    assert all(torch.equal(tensors[k], other[k]) for k in tensors)


def test_ensure_adapter_caches_and_seeds_by_name(tiny_model_dir: Path, tmp_path: Path) -> None:
    first = ensure_adapter(tiny_model_dir, "sql", 8, cache_dir=tmp_path)
    stamp = (first / "adapter_model.safetensors").stat().st_mtime_ns
    assert ensure_adapter(tiny_model_dir, "sql", 8, cache_dir=tmp_path) == first
    assert (first / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    other = ensure_adapter(tiny_model_dir, "legal", 8, cache_dir=tmp_path)
    assert other != first
    a = load_file(str(first / "adapter_model.safetensors"))
    b = load_file(str(other / "adapter_model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_mixtral_adapter_targets_attention_only(tmp_path: Path) -> None:
    model = generate_checkpoint("mixtral", tmp_path / "m")
    cfg = read_adapter_config(generate_adapter(model, tmp_path / "a", rank=2))
    assert cfg.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")


def test_scale_is_alpha_over_rank() -> None:
    assert AdapterConfig(8, 16.0, ("q_proj",)).scale == 2.0
    assert AdapterConfig(4, 8.0, ("q_proj",), use_rslora=True).scale == 4.0


def test_loaded_adapter_hooks_only_its_targets(tiny_model_dir: Path, tmp_path: Path) -> None:
    src = generate_adapter(tiny_model_dir, tmp_path / "src", rank=2, seed=1)

    def only_q(tensors: dict[str, torch.Tensor]) -> None:
        for k in [k for k in tensors if "q_proj" not in k]:
            del tensors[k]

    def cfg_q(cfg: dict[str, object]) -> None:
        cfg["target_modules"] = ["q_proj"]

    q_only = _copy(src, tmp_path / "q", cfg_q, only_q)
    adapters = _load(tiny_model_dir, q_only)
    assert adapters.names == ["a"] and adapters.slots == {"a": 1}
    targets = adapters._targets
    assert targets["model.layers.0.self_attn.q_proj"].lora is not None
    assert targets["model.layers.0.self_attn.k_proj"].lora is None


@pytest.mark.parametrize(
    ("edit_config", "edit_tensors", "message"),
    [
        (lambda c: c.update(target_modules=["c_attn"]), None, "'c_attn' does not exist"),
        (lambda c: c.update(r=0), None, "`r` must be a positive integer"),
        (lambda c: c.update(peft_type="IA3"), None, "peft_type 'IA3' is not supported"),
        (lambda c: c.update(use_dora=True), None, "use_dora=true is not supported"),
        (lambda c: c.update(bias="all"), None, "bias='all' is not supported"),
        (lambda c: c.update(target_modules=["q_proj"]), None, "not in target_modules"),
        (
            None,
            lambda t: t.pop("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"),
            "has no lora_B weight",
        ),
        (
            None,
            lambda t: t.update(
                {
                    "base_model.model.model.layers.0.self_attn.q_proj.weight": t[
                        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
                    ].clone()
                }
            ),
            "is not a LoRA weight",
        ),
        (
            None,
            lambda t: t.update(
                {
                    "base_model.model.lm_head.lora_A.weight": torch.zeros(4, 64),
                    "base_model.model.lm_head.lora_B.weight": torch.zeros(512, 4),
                }
            ),
            "LoRA on 'lm_head' is not supported",
        ),
        (
            None,
            lambda t: t.update(
                {
                    "base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight": torch.zeros(
                        32, 4
                    )
                }
            ),
            r"o_proj.lora_B has shape \[32, 4\], expected \[64, 4\]",
        ),
    ],
)
def test_bad_adapters_are_refused_with_a_clear_message(
    tiny_model_dir: Path,
    adapter_dir: Path,
    tmp_path: Path,
    edit_config: Callable[[dict[str, object]], None] | None,
    edit_tensors: Callable[[dict[str, torch.Tensor]], object] | None,
    message: str,
) -> None:
    bad = _copy(adapter_dir, tmp_path / "bad", edit_config, edit_tensors)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=message):
        _load(tiny_model_dir, bad)


def test_missing_files_are_refused(tiny_model_dir: Path, adapter_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"adapter 'a': adapter directory .* does not exist"):
        _load(tiny_model_dir, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no adapter_config\.json"):
        _load(tiny_model_dir, tmp_path / "empty")
    (tmp_path / "empty" / "adapter_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        _load(tiny_model_dir, tmp_path / "empty")
    (tmp_path / "empty" / "adapter_config.json").write_text(
        (adapter_dir / "adapter_config.json").read_text()
    )
    with pytest.raises(CheckpointError, match=r"no adapter_model\.safetensors"):
        _load(tiny_model_dir, tmp_path / "empty")


def test_worker_spec_resolves_adapters(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = WorkerSpec(
        worker_id="w",
        model_name="m",
        model_dir=tiny_model_dir,
        adapters=(Adapter(name="sql", generate_rank=2), Adapter(name="legal", path=str(tmp_path))),
    )
    again = WorkerSpec.model_validate_json(spec.model_dump_json())
    assert again == spec and again.adapter_names == ("sql", "legal")
    dirs = adapter_dirs(again)
    assert dirs["legal"] == tmp_path
    assert read_adapter_config(dirs["sql"]).rank == 2
    names_only = WorkerSpec(worker_id="w", model_name="m", model_dir=tmp_path, adapters=("x",))
    assert names_only.adapter_names == ("x",)
    with pytest.raises(ValueError, match="'x' has neither a path nor a generateRank"):
        adapter_dirs(names_only)


@pytest.mark.parametrize("row_slots", [[0, 1, 0, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
def test_hook_adds_scaled_update_to_its_rows_only(
    tiny_model_dir: Path, adapter_dir: Path, row_slots: list[int]
) -> None:
    """Gathered (interleaved rows) and sliced (contiguous rows) paths equal the formula
    ``W x + (alpha / r) B A x`` on the adapter's rows and ``W x`` on the others."""
    adapters = _load(tiny_model_dir, adapter_dir)
    layer = adapters._targets["model.layers.1.mlp.down_proj"]
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.1.mlp.down_proj"
    a, b = tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"]
    scale = adapters.configs["a"].scale
    x = torch.randn(len(row_slots), a.shape[1], generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        with adapters.activate(row_slots, torch.device("cpu")):
            got = layer(x)
        base = layer(x)
    want = base.clone()
    rows = [i for i, s in enumerate(row_slots) if s == 1]
    want[rows] += scale * (x[rows] @ a.T) @ b.T
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.equal(got, base)
