"""What one engine, alone, generates: the reference other tiers compare moved, disaggregated
or routed requests against."""

from __future__ import annotations

from pathlib import Path

from mainsail.workers.engine import Engine, EngineConfig, EngineRequest, SamplingParams


def greedy_tokens(model_dir: Path, prompt: list[int], max_tokens: int) -> list[int]:
    """Greedy tokens of ``prompt`` from a fresh engine on ``model_dir`` (EOS ignored)."""
    engine = Engine(model_dir, EngineConfig(max_model_len=1024))
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    engine.add_request(EngineRequest("reference", prompt, params))
    out: list[int] = []
    for _ in range(10 * max_tokens + 100):
        if not engine.has_unfinished():
            return out
        for o in engine.step():
            out += o.new_token_ids
    raise AssertionError("the reference engine did not finish")
