"""Expert parallelism on the tiny Mixtral, against one process.

tp=1/ep=2 (rank 1 is expert-only: it gets each MoE layer's tokens from rank 0 and joins the
sum) and tp=2 (attention split by head, experts spread over the same two ranks). Greedy tokens
equal one process; top-5 log-probs within ``ATOL`` (expert parallelism alone is bit-identical
with top-2 routing; tensor-parallel attention moves results ~1e-6). Elastic expert
parallelism: test_engine_elastic_ep.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from support.ray_local import local_ray

from mainsail.workers.checkpoint import ensure_checkpoint
from mainsail.workers.engine import Engine, EngineConfig, EngineRequest, SamplingParams

ATOL = 1e-4
NEW_TOKENS = 6
Result = dict[str, tuple[list[int], list[dict[int, float]]]]


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    with local_ray(num_cpus=4):
        yield


@pytest.fixture(scope="module")
def mixtral() -> Path:
    return ensure_checkpoint("mixtral")


def _config(**kw: Any) -> EngineConfig:
    return EngineConfig(max_model_len=128, max_num_seqs=8, num_threads=1, **kw)


def _prompt(n: int, salt: int) -> list[int]:
    g = torch.Generator().manual_seed(100 * salt + n)
    return torch.randint(3, 500, (n,), generator=g).tolist()


def _params(tokens: int = NEW_TOKENS) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=tokens, logprobs=5, ignore_eos=True)


def _run(engine: Engine, prompts: dict[str, list[int]], tokens: int = NEW_TOKENS) -> Result:
    for rid, p in prompts.items():
        engine.add_request(EngineRequest(rid, p, _params(tokens)))
    got: Result = {rid: ([], []) for rid in prompts}
    for _ in range(5000):
        if not engine.has_unfinished():
            return got
        for out in engine.step():
            assert out.error is None, out.error
            got[out.request_id][0].extend(out.new_token_ids)
            got[out.request_id][1].extend(out.logprobs or [])
    raise AssertionError("engine did not finish")


def _compare(reference: Result, sharded: Result) -> None:
    for rid, (tokens, logprobs) in reference.items():
        got_tokens, got_logprobs = sharded[rid]
        assert got_tokens == tokens, rid
        for want, got in zip(logprobs, got_logprobs, strict=True):
            assert set(got) == set(want), rid
            for token, value in want.items():
                assert abs(got[token] - value) <= ATOL, (rid, token, got[token], value)


@pytest.mark.parametrize(("tp", "ep"), [(1, 2), (2, None)])
def test_expert_parallel_matches_one_process(
    ray_local: None, mixtral: Path, tp: int, ep: int | None
) -> None:
    prompts = {f"p{n}": _prompt(n, tp) for n in (5, 19, 37)}
    reference = _run(Engine(mixtral, _config()), prompts)
    sharded = Engine(mixtral, _config(tensor_parallel=tp, expert_parallel=ep))
    try:
        runner = sharded.sharded
        assert runner is not None and runner.ep == 2 and len(runner.handles) == 2
        assert sorted(e for held in runner.placement for e in held) == [0, 1, 2, 3]
        _compare(reference, _run(sharded, prompts))
        assert sum(runner.expert_load()) > 0
    finally:
        sharded.close()
