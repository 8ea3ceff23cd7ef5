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

import pytest
from support.ray_local import local_ray
from support.sharded import assert_matches, engine_config, random_prompt, run_to_end

from mainsail.workers.checkpoint import ensure_checkpoint
from mainsail.workers.engine import Engine

NEW_TOKENS = 6


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    with local_ray(num_cpus=4):
        yield


@pytest.fixture(scope="module")
def mixtral() -> Path:
    return ensure_checkpoint("mixtral")


@pytest.mark.parametrize(("tp", "ep"), [(1, 2), (2, None)])
def test_expert_parallel_matches_one_process(
    ray_local: None, mixtral: Path, tp: int, ep: int | None
) -> None:
    prompts = {f"p{n}": random_prompt(n, tp) for n in (5, 19, 37)}
    reference = run_to_end(Engine(mixtral, engine_config()), prompts, NEW_TOKENS)
    sharded = Engine(mixtral, engine_config(tensor_parallel=tp, expert_parallel=ep))
    try:
        runner = sharded.sharded
        assert runner is not None and runner.ep == 2 and len(runner.handles) == 2
        assert sorted(e for held in runner.placement for e in held) == [0, 1, 2, 3]
        assert_matches(reference, run_to_end(sharded, prompts, NEW_TOKENS))
        assert sum(runner.expert_load()) > 0
    finally:
        sharded.close()
