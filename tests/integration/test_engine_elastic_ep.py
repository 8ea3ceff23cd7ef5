"""Elastic expert parallelism on the tiny Mixtral: ranks join and leave while serving.

* 1 -> 2 -> 1 expert ranks while a bounded, paced stream of requests keeps arriving (at most
  150 requests, at most 3 in flight, one step per ``PACE_S`` while scaling, 420 s): each
  switch must happen with requests in flight, every response must be complete and equal
  (greedy tokens; top-5 log-probs within ``ATOL``) to what one process generates for the
  same prompts, and the worker must end on one rank. 1->2->1 rather than 2->4->2: the test
  machine has two cores shared with other suites, and four rank processes plus Ray do not
  start there within a test's time; the code path is the same
  (`ShardedRunner.start_resize` / `switch_if_ready`).
* A killed rank makes the next step raise `ShardLost` (an `EngineFatalError`: the worker
  then dies and the router moves its requests, as for any dead worker).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.ray_local import local_ray
from support.sharded import (
    Result,
    assert_matches,
    engine_config,
    greedy_params,
    random_prompt,
    run_to_end,
)

from mainsail.workers.checkpoint import ensure_checkpoint
from mainsail.workers.engine import Engine, EngineRequest
from mainsail.workers.parallel import ShardLost

PACE_S = 0.1


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    with local_ray(num_cpus=4):
        yield


@pytest.fixture(scope="module")
def mixtral() -> Path:
    return ensure_checkpoint("mixtral")


@pytest.mark.timeout(600)
def test_elastic_expert_parallel_under_load(ray_local: None, mixtral: Path) -> None:
    cap, max_tokens, deadline = 150, 16, time.monotonic() + 420
    prompts = {f"r{i}": random_prompt(4 + (7 * i) % 30, 50 + i) for i in range(cap)}
    engine = Engine(mixtral, engine_config(expert_parallel=1))
    runner = engine.sharded
    assert runner is not None
    got: Result = {}
    in_flight_at_switch: list[int] = []
    plan = [2, 1]
    next_id = 0
    try:
        while time.monotonic() < deadline:
            resize = runner.resizing
            busy = resize is not None and resize.switched is None
            if plan and not busy and next_id >= 2:
                engine.scale_experts(plan.pop(0))
                busy = True
            scaling = bool(plan) or busy
            metrics = engine.metrics()
            in_flight = metrics.running + metrics.waiting
            if scaling and next_id < cap and in_flight < 3:
                rid = f"r{next_id}"
                engine.add_request(EngineRequest(rid, prompts[rid], greedy_params(max_tokens)))
                got[rid] = ([], [])
                next_id += 1
                in_flight += 1
            if not scaling and not engine.has_unfinished():
                break
            if scaling:
                time.sleep(PACE_S)  # a paced client: the bounded load must outlast the resize
            for out in engine.step():
                assert out.error is None, out.error
                got[out.request_id][0].extend(out.new_token_ids)
                got[out.request_id][1].extend(out.logprobs or [])
            after = runner.resizing
            if after is not None and after.switched is not None and busy:
                in_flight_at_switch.append(in_flight)
        assert not plan and runner.ep == 1 and len(runner.handles) == 1
        assert len(in_flight_at_switch) == 2, in_flight_at_switch
        assert min(in_flight_at_switch) > 0, (in_flight_at_switch, next_id)
        assert all(len(tokens) == max_tokens for tokens, _ in got.values())
    finally:
        engine.close()
    served = {r: prompts[r] for r in got}
    reference = run_to_end(Engine(mixtral, engine_config()), served, max_tokens)
    assert_matches(reference, got)


def test_a_killed_rank_is_fatal(ray_local: None, mixtral: Path) -> None:
    import ray

    engine = Engine(mixtral, engine_config(expert_parallel=2, tensor_parallel=1))
    runner = engine.sharded
    assert runner is not None
    try:
        engine.add_request(EngineRequest("a", random_prompt(9, 9), greedy_params(50)))
        engine.step()
        victim = ray.get(runner.handles[1].actor.pid.remote())
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(ShardLost):
            for _ in range(100):
                engine.step()
    finally:
        engine.close()
