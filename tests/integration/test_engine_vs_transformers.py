"""Our engine against Hugging Face `transformers` on the same generated checkpoint.

`transformers` is the reference no one here wrote. For prompts of several lengths, the
engine's greedy tokens must equal `generate(do_sample=False)`, and the log-probabilities it
reports at every generated position (after paged prefill, chunked prefill and paged decode)
must match `transformers`' full-sequence forward within ``ATOL``. Float32 on CPU; differences
come only from summation order, observed around 1e-6.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from mainsail.workers.checkpoint import generate_checkpoint
from mainsail.workers.engine import Engine, EngineConfig, EngineRequest, SamplingParams

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

ATOL = 1e-4
PROMPT_LENGTHS = (1, 7, 16, 33, 100)
NEW_TOKENS = 8


def _prompt(n: int, salt: int) -> list[int]:
    g = torch.Generator().manual_seed(1000 * salt + n)
    return torch.randint(3, 512, (n,), generator=g).tolist()


def _run(
    engine: Engine, prompts: list[list[int]]
) -> dict[str, tuple[list[int], list[dict[int, float]]]]:
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, logprobs=5, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(EngineRequest(str(i), p, params))
    got: dict[str, tuple[list[int], list[dict[int, float]]]] = {
        str(i): ([], []) for i in range(len(prompts))
    }
    for _ in range(10_000):
        if not engine.has_unfinished():
            break
        for out in engine.step():
            assert out.error is None
            got[out.request_id][0].extend(out.new_token_ids)
            got[out.request_id][1].extend(out.logprobs or [])
    return got


@pytest.fixture(scope="module", params=["llama", "mixtral", "llama-small"])
def checkpoint(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Any]:
    arch, _, size = request.param.partition("-")
    path = generate_checkpoint(
        arch,
        tmp_path_factory.mktemp("ck") / request.param,
        size=size or "tiny",  # type: ignore[arg-type]
    )
    ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref.eval()
    return path, ref


@pytest.mark.integration
@pytest.mark.parametrize("max_batched_tokens", [512, 16])
def test_greedy_tokens_and_logprobs_match_transformers(
    checkpoint: tuple[Path, Any], max_batched_tokens: int
) -> None:
    path, ref = checkpoint
    engine = Engine(path, EngineConfig(max_model_len=256, max_batched_tokens=max_batched_tokens))
    prompts = [_prompt(n, 1) for n in PROMPT_LENGTHS]
    got = _run(engine, prompts)
    worst = 0.0
    for i, prompt in enumerate(prompts):
        tokens, logprobs = got[str(i)]
        with torch.no_grad():
            ids = torch.tensor([prompt])
            expected = ref.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                min_new_tokens=NEW_TOKENS,
                pad_token_id=2,
            )[0, len(prompt) :].tolist()
            full = torch.tensor([prompt + tokens])
            ref_lp = torch.log_softmax(ref(full).logits[0].float(), dim=-1)
        assert tokens == expected, f"prompt length {len(prompt)}"
        for step, top in enumerate(logprobs):
            row = ref_lp[len(prompt) - 1 + step]
            for token_id, value in top.items():
                worst = max(worst, abs(value - float(row[token_id])))
            best = sorted(top, key=top.__getitem__, reverse=True)[:5]
            assert best == torch.topk(row, 5).indices.tolist()
    assert worst < ATOL, f"max |logprob diff| {worst:.2e}"


@pytest.mark.integration
def test_sharded_checkpoint_gives_the_same_tokens(
    checkpoint: tuple[Path, Any], tmp_path: Path
) -> None:
    path, _ = checkpoint
    arch, _, size = path.name.partition("-")
    sharded = generate_checkpoint(
        arch,  # type: ignore[arg-type]
        tmp_path / "sharded",
        shards=2,
        size=size or "tiny",  # type: ignore[arg-type]
    )
    prompts = [_prompt(20, 2)]
    config = EngineConfig(max_model_len=128)
    assert (
        _run(Engine(sharded, config), prompts)["0"][0]
        == _run(Engine(path, config), prompts)["0"][0]
    )
