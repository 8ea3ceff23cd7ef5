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
from typing import Any

import pytest
import torch
from support.ray_local import local_ray

from mainsail.workers.checkpoint import ensure_checkpoint
from mainsail.workers.engine import Engine, EngineConfig, EngineRequest, SamplingParams
from mainsail.workers.parallel import ShardLost

ATOL = 1e-4
PACE_S = 0.1
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


def _params(tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=tokens, logprobs=5, ignore_eos=True)


def _run(engine: Engine, prompts: dict[str, list[int]], tokens: int) -> Result:
    for rid, p in prompts.items():
        engine.add_request(EngineRequest(rid, p, _params(tokens)))
    got: Result = {rid: ([], []) for rid in prompts}
    for _ in range(20_000):
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


@pytest.mark.timeout(600)
def test_elastic_expert_parallel_under_load(ray_local: None, mixtral: Path) -> None:
    cap, max_tokens, deadline = 150, 16, time.monotonic() + 420
    prompts = {f"r{i}": _prompt(4 + (7 * i) % 30, 50 + i) for i in range(cap)}
    engine = Engine(mixtral, _config(expert_parallel=1))
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
                engine.add_request(EngineRequest(rid, prompts[rid], _params(max_tokens)))
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
    reference = _run(Engine(mixtral, _config()), {r: prompts[r] for r in got}, max_tokens)
    _compare(reference, got)


def test_a_killed_rank_is_fatal(ray_local: None, mixtral: Path) -> None:
    import ray

    engine = Engine(mixtral, _config(expert_parallel=2, tensor_parallel=1))
    runner = engine.sharded
    assert runner is not None
    try:
        engine.add_request(EngineRequest("a", _prompt(9, 9), _params(50)))
        engine.step()
        victim = ray.get(runner.handles[1].actor.pid.remote())
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(ShardLost):
            for _ in range(100):
                engine.step()
    finally:
        engine.close()
