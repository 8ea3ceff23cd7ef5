"""Batching, paging, prefix reuse and preemption must not change what a request generates.

All on the real engine and a generated tiny checkpoint; greedy decoding, so any change in
the numbers that matters shows up as a different token.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mainsail.spec.kvhash import chain_hashes
from mainsail.workers.engine import (
    Engine,
    EngineConfig,
    EngineRequest,
    RequestOutput,
    SamplingParams,
)

GREEDY = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)


def _prompt(n: int, salt: int = 0) -> list[int]:
    return torch.randint(
        3, 512, (n,), generator=torch.Generator().manual_seed(salt * 7919 + n)
    ).tolist()


def _drain(engine: Engine, max_steps: int = 5000) -> dict[str, list[RequestOutput]]:
    outs: dict[str, list[RequestOutput]] = {}
    for _ in range(max_steps):
        if not engine.has_unfinished():
            return outs
        for out in engine.step():
            outs.setdefault(out.request_id, []).append(out)
    raise AssertionError("engine did not finish within the step bound")


def _tokens(outs: list[RequestOutput]) -> list[int]:
    return [t for o in outs for t in o.new_token_ids]


def _generate(
    engine: Engine, prompts: dict[str, list[int]], params: SamplingParams = GREEDY
) -> dict[str, list[int]]:
    for rid, prompt in prompts.items():
        engine.add_request(EngineRequest(rid, prompt, params))
    return {rid: _tokens(o) for rid, o in _drain(engine).items()}


@pytest.mark.integration
def test_alone_equals_inside_a_batch_of_32_mixed_lengths(tiny_model_dir: Path) -> None:
    prompts = {f"r{i}": _prompt(1 + (i * 37) % 150, salt=i) for i in range(32)}
    config = EngineConfig(max_model_len=256, max_batched_tokens=256)
    batched = _generate(Engine(tiny_model_dir, config), prompts)
    alone_engine = Engine(tiny_model_dir, config)
    for rid in ("r0", "r5", "r17", "r31"):
        assert _generate(alone_engine, {rid: prompts[rid]}) == {rid: batched[rid]}
    assert all(len(t) == GREEDY.max_tokens for t in batched.values())


@pytest.mark.integration
def test_seeded_sampling_is_independent_of_batching(tiny_model_dir: Path) -> None:
    params = SamplingParams(
        temperature=0.8, top_p=0.95, top_k=50, seed=11, max_tokens=8, ignore_eos=True
    )
    prompts = {f"s{i}": _prompt(10 + i, salt=3) for i in range(8)}
    batched = _generate(Engine(tiny_model_dir, EngineConfig(max_model_len=128)), prompts, params)
    alone = _generate(
        Engine(tiny_model_dir, EngineConfig(max_model_len=128)), {"s3": prompts["s3"]}, params
    )
    assert alone["s3"] == batched["s3"]


@pytest.mark.integration
def test_prefix_cache_hit_equals_cold_run_and_reports_events(tiny_model_dir: Path) -> None:
    config = EngineConfig(max_model_len=256, block_size=16)
    shared = _prompt(96, salt=5)
    cold = _generate(Engine(tiny_model_dir, config), {"cold": [*shared, 7, 8, 9]})["cold"]
    engine = Engine(tiny_model_dir, config)
    _generate(engine, {"warm-up": [*shared, 1, 2]})
    stored = [h for e in engine.drain_kv_events() if e.kind == "stored" for h in e.block_hashes]
    assert stored[:6] == chain_hashes(shared, 16, seed=0)
    engine.add_request(EngineRequest("hit", [*shared, 7, 8, 9], GREEDY))
    outs = _drain(engine)["hit"]
    assert _tokens(outs) == cold
    assert outs[-1].cached_tokens == 96
    assert engine.metrics().prefix_hit_tokens >= 96
    assert set(chain_hashes(shared, 16)) <= set(engine.kv_snapshot())


@pytest.mark.integration
def test_preemption_and_resume_give_the_same_tokens(tiny_model_dir: Path) -> None:
    prompts = {f"p{i}": _prompt(20 + 9 * i, salt=9) for i in range(6)}
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    roomy = _generate(
        Engine(tiny_model_dir, EngineConfig(max_model_len=128, block_size=8)), prompts, params
    )
    tight_engine = Engine(
        tiny_model_dir, EngineConfig(max_model_len=128, block_size=8, num_kv_blocks=14)
    )
    tight = _generate(tight_engine, prompts, params)
    assert tight == roomy
    metrics = tight_engine.metrics()
    assert metrics.preemptions > 0
    assert metrics.kv_blocks_used == 0 and metrics.num_requests_finished == 6
    removed = [e for e in tight_engine.drain_kv_events() if e.kind == "removed"]
    assert removed, "a tight cache must evict cached blocks"


@pytest.mark.integration
def test_priority_abort_and_metrics(tiny_model_dir: Path) -> None:
    engine = Engine(tiny_model_dir, EngineConfig(max_model_len=128, max_num_seqs=1))
    engine.add_request(EngineRequest("low", _prompt(8), GREEDY, priority=0))
    engine.add_request(EngineRequest("high", _prompt(9), GREEDY, priority=5))
    engine.add_request(EngineRequest("gone", _prompt(10), GREEDY, priority=9))
    engine.abort("gone")
    finished: list[str] = []
    outs: dict[str, list[RequestOutput]] = {}
    for _ in range(1000):
        if not engine.has_unfinished():
            break
        for out in engine.step():
            outs.setdefault(out.request_id, []).append(out)
            if out.finished:
                finished.append(out.request_id)
    assert finished == ["gone", "high", "low"]
    assert outs["gone"][-1].finish_reason == "abort" and _tokens(outs["gone"]) == []
    assert outs["high"][-1].finish_reason == "length"
    m = engine.metrics()
    assert m.ttft.count == 2 and m.tpot.count == 2 * (GREEDY.max_tokens - 1)
    assert m.generation_tokens_total == 20 and m.running == 0 and m.waiting == 0
    assert m.num_requests_finished == 3 and engine.step() == []


@pytest.mark.integration
def test_stop_strings_and_eos(tiny_model_dir: Path) -> None:
    engine = Engine(tiny_model_dir, EngineConfig(max_model_len=128))
    prompt = engine.tokenizer.encode("The captain wrote in the log")
    free = _drain_text(engine, prompt, SamplingParams(temperature=0.0, max_tokens=12))
    stop = free[3:6]
    cut = _drain_text(engine, prompt, SamplingParams(temperature=0.0, max_tokens=12, stop=(stop,)))
    assert cut == free[: free.index(stop)]
    first = engine.tokenizer.encode(free)[0]
    outs = _drain_one(
        engine, prompt, SamplingParams(temperature=0.0, max_tokens=12, stop_token_ids=(first,))
    )
    assert outs[-1].finish_reason == "stop" and outs[-1].completion_tokens == 1


def _drain_one(engine: Engine, prompt: list[int], params: SamplingParams) -> list[RequestOutput]:
    engine.add_request(EngineRequest("one", prompt, params))
    return _drain(engine)["one"]


def _drain_text(engine: Engine, prompt: list[int], params: SamplingParams) -> str:
    return "".join(o.new_text for o in _drain_one(engine, prompt, params))


@pytest.mark.integration
def test_last_step_records_the_shape_the_simulator_is_fitted_to(tiny_model_dir: Path) -> None:
    """`Engine.last_step`: prefill chunks (new, computed) and decode contexts of each step."""
    config = EngineConfig(max_model_len=256, max_batched_tokens=40, block_size=16)
    engine = Engine(tiny_model_dir, config)
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
    engine.add_request(EngineRequest("a", _prompt(30, salt=1), params))
    engine.add_request(EngineRequest("b", _prompt(25, salt=2), params))
    shapes = []
    for _ in range(50):
        if not engine.has_unfinished():
            break
        engine.step()
        assert engine.last_step is not None
        assert engine.last_step.seconds > 0
        shapes.append((engine.last_step.prefill, engine.last_step.decode_contexts))
    assert shapes[:4] == [
        (((30, 0), (10, 0)), ()),  # a whole, then b's first chunk fills the 40-token budget
        (((15, 10),), (30,)),  # b's rest beside a's first decode over its 30 prompt tokens
        ((), (31, 25)),
        ((), (26,)),  # a finished: 3 tokens are its prefill's and two decodes
    ]
    assert engine.step() == [] and engine.last_step is None  # nothing ran


@pytest.mark.integration
def test_a_moved_seeded_request_draws_what_it_would_have_unmoved(tiny_model_dir: Path) -> None:
    """Seeded sampling is per position: continuing from k tokens on another engine (prompt +
    those k tokens, `sampled_before=k`) yields exactly the unmoved request's remaining tokens."""
    prompt = _prompt(37, salt=5)
    params = SamplingParams(temperature=1.0, top_p=0.95, seed=11, max_tokens=20, ignore_eos=True)
    config = EngineConfig(max_model_len=256)
    whole = _generate(Engine(tiny_model_dir, config), {"r": prompt}, params)["r"]
    assert len(set(whole)) > 3  # really sampled, not a constant
    for k in (1, 8, 19):
        rest = SamplingParams(
            temperature=1.0, top_p=0.95, seed=11, max_tokens=20 - k, ignore_eos=True
        )
        other = Engine(tiny_model_dir, config)
        other.add_request(EngineRequest("m", prompt + whole[:k], rest, sampled_before=k))
        moved = _tokens(_drain(other)["m"])
        assert moved == whole[k:], k
    # Without the offset the continuation would draw from position 0 again: different tokens.
    other = Engine(tiny_model_dir, config)
    rest = SamplingParams(temperature=1.0, top_p=0.95, seed=11, max_tokens=12, ignore_eos=True)
    other.add_request(EngineRequest("n", prompt + whole[:8], rest))
    assert _tokens(_drain(other)["n"]) != whole[8:]
