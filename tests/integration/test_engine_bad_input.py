"""Bad requests and bad checkpoints fail with a clear message; the engine keeps serving."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mainsail.workers.engine import (
    CheckpointError,
    Engine,
    EngineConfig,
    EngineInputError,
    EngineRequest,
    RequestOutput,
    SamplingParams,
)

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


def _drain(engine: Engine) -> dict[str, list[RequestOutput]]:
    outs: dict[str, list[RequestOutput]] = {}
    for _ in range(1000):
        if not engine.has_unfinished():
            break
        for out in engine.step():
            outs.setdefault(out.request_id, []).append(out)
    return outs


@pytest.mark.integration
@pytest.mark.parametrize(
    ("prompt", "params", "message"),
    [
        ([], GREEDY, "prompt is empty"),
        (list(range(3, 200)), SamplingParams(max_tokens=100), "exceeds max_model_len 256"),
        ([5, 512, 7], GREEDY, "token id 512 is outside the vocabulary"),
        ([5, -1], GREEDY, "token id -1"),
        ([5, 6], SamplingParams(temperature=-0.5), "temperature"),
        ([5, 6], SamplingParams(top_p=7.0), "top_p"),
        ([5, 6], SamplingParams(stop_token_ids=(99999,)), "stop token id 99999"),
    ],
)
def test_bad_requests_are_refused_while_others_are_served(
    tiny_model_dir: Path, prompt: list[int], params: SamplingParams, message: str
) -> None:
    engine = Engine(tiny_model_dir, EngineConfig(max_model_len=256))
    engine.add_request(EngineRequest("good", [10, 11, 12], GREEDY))
    engine.step()
    with pytest.raises(EngineInputError, match=message):
        engine.add_request(EngineRequest("bad", prompt, params))
    outs = _drain(engine)
    assert set(outs) == {"good"} and outs["good"][-1].finish_reason == "length"


@pytest.mark.integration
def test_duplicate_ids_and_unknown_adapters_are_refused(tiny_model_dir: Path) -> None:
    engine = Engine(tiny_model_dir, EngineConfig(max_model_len=64))
    engine.add_request(EngineRequest("a", [4, 5], GREEDY))
    with pytest.raises(EngineInputError, match="already in use"):
        engine.add_request(EngineRequest("a", [4, 5], GREEDY))
    with pytest.raises(EngineInputError, match="adapter 'x'"):
        engine.add_request(EngineRequest("b", [4, 5], GREEDY, adapter="x"))
    with pytest.raises(EngineInputError, match="KV blocks"):
        Engine(tiny_model_dir, EngineConfig(max_model_len=64, num_kv_blocks=2)).add_request(
            EngineRequest("c", list(range(3, 40)), GREEDY)
        )


@pytest.mark.integration
def test_a_failing_step_finishes_its_requests_with_error_and_serving_continues(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Engine(tiny_model_dir, EngineConfig(max_model_len=64))
    runner = engine._runner
    real = runner.execute
    calls = {"n": 0}

    def flaky(inputs: list[object]) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected device fault")
        return real(inputs)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "execute", flaky)
    engine.add_request(EngineRequest("victim", [4, 5, 6], GREEDY))
    engine.step()
    failed = engine.step()
    assert [(o.request_id, o.finish_reason) for o in failed] == [("victim", "error")]
    assert failed[0].error is not None and "injected device fault" in failed[0].error
    engine.add_request(EngineRequest("after", [4, 5, 6], GREEDY))
    outs = _drain(engine)
    assert outs["after"][-1].finish_reason == "length"
    assert engine.metrics().kv_blocks_used == 0


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.integration
def test_missing_tensor_is_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = _copy(tiny_model_dir, tmp_path / "missing")
    tensors = load_file(str(broken / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"
    ):
        Engine(broken, EngineConfig(max_model_len=64))


@pytest.mark.integration
def test_mismatched_tensor_is_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = _copy(tiny_model_dir, tmp_path / "shape")
    tensors = load_file(str(broken / "model.safetensors"))
    tensors["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(16, 64)
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"'model\.layers\.0\.self_attn\.k_proj\.weight'.*\[16, 64\]"
    ):
        Engine(broken, EngineConfig(max_model_len=64))


@pytest.mark.integration
def test_unknown_architecture_is_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = _copy(tiny_model_dir, tmp_path / "arch")
    cfg = json.loads((broken / "config.json").read_text())
    cfg["architectures"] = ["GPTNeoXForCausalLM"]
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unsupported architecture 'GPTNeoXForCausalLM'"):
        Engine(broken, EngineConfig(max_model_len=64))
