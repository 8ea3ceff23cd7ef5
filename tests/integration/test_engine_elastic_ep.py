"""Elastic expert parallelism on the tiny Mixtral: ranks join and leave while serving.

* 2 -> 4 -> 2 expert ranks (tp=1: rank 0 holds attention, the others are expert-only) while
  a bounded, paced stream of requests keeps arriving (at most ``CAP`` requests, at most 3 in
  flight, one step per ``PACE_S`` while scaling, ``DEADLINE_S``): each switch must happen
  with requests in flight, every response must be complete and equal (greedy tokens; top-5
  log-probs within ``ATOL``) to what one process generates for the same prompts, and the
  worker must end on two ranks with every expert placed once. ``expertParallel.max`` is 4,
  so one warm spare rank is started once the worker serves; the scale-up must take it (its
  process becomes rank 2) instead of starting a new one, and the scale-down must keep one
  of the ranks it removes as the next spare.
* A killed rank makes the next step raise `ShardLost` (an `EngineFatalError`: the worker
  then dies and the router moves its requests, as for any dead worker).

Sized for two shared cores: Ray gets two logical CPUs and each rank bundle half of one
(``RANK_CPU``), and each rank runs torch on one thread. The paced client keeps a few
requests for the switch itself (when the new placement is ready and nothing is in flight,
one is submitted), so a slow start of the joining ranks cannot let the load run out before
the switch.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
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
CAP = 150
RESERVE = 10
DEADLINE_S = 420
RANK_CPU = {"CPU": 0.5}


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    with local_ray(num_cpus=2):
        yield


@pytest.fixture(scope="module")
def mixtral() -> Path:
    return ensure_checkpoint("mixtral")


@pytest.mark.timeout(600)
def test_elastic_expert_parallel_2_4_2_under_load(ray_local: None, mixtral: Path) -> None:
    max_tokens, deadline = 16, time.monotonic() + DEADLINE_S
    prompts = {f"r{i}": random_prompt(4 + (7 * i) % 30, 50 + i) for i in range(CAP)}
    engine = Engine(
        mixtral,
        engine_config(expert_parallel=2, expert_parallel_max=4, rank_resources=RANK_CPU),
    )
    runner = engine.sharded
    assert runner is not None and len(runner.handles) == 2
    while not runner.spares and time.monotonic() < deadline:
        time.sleep(0.2)  # the warm spare starts in the background
    assert len(runner.spares) == 1, "no warm spare rank was started"
    spare_pid = ray.get(runner.spares[0].actor.pid.remote())
    joined_pids: list[int] = []
    got: Result = {}
    in_flight_at_switch: list[int] = []
    plan = [4, 2]
    next_id, peak = 0, 0

    def submit() -> None:
        nonlocal next_id
        rid = f"r{next_id}"
        engine.add_request(EngineRequest(rid, prompts[rid], greedy_params(max_tokens)))
        got[rid] = ([], [])
        next_id += 1

    try:
        while time.monotonic() < deadline:
            resize = runner.resizing
            busy = resize is not None and resize.switched is None
            if plan and not busy and next_id >= 2:
                engine.scale_experts(plan.pop(0))
                resize, busy = runner.resizing, True
            scaling = bool(plan) or busy
            metrics = engine.metrics()
            in_flight = metrics.running + metrics.waiting
            if scaling and next_id < CAP - RESERVE and in_flight < 3:
                submit()
                in_flight += 1
            ready = busy and resize is not None and resize.prepared is not None
            if ready and in_flight == 0 and next_id < CAP:
                submit()  # the switch is the point: it must find requests in flight
                in_flight += 1
            if not scaling and not engine.has_unfinished():
                break
            if scaling:
                time.sleep(PACE_S)  # a paced client: the bounded load must outlast the resize
            for out in engine.step():
                assert out.error is None, out.error
                got[out.request_id][0].extend(out.new_token_ids)
                got[out.request_id][1].extend(out.logprobs or [])
            if len(runner.handles) == 4 and not joined_pids:
                joined_pids = [ray.get(h.actor.pid.remote()) for h in runner.handles]
            peak = max(peak, len(runner.handles))
            after = runner.resizing
            if busy and after is not None:
                assert after.error is None, after.error
                if after.switched is not None:
                    in_flight_at_switch.append(in_flight)
        assert not plan, f"scaling did not finish within {DEADLINE_S} s: {runner.resizing}"
        assert peak == 4 and runner.ep == 2 and len(runner.handles) == 2
        assert joined_pids[2] == spare_pid, (joined_pids, spare_pid)
        # the scale-down kept a rank it removed as the next warm spare (no new process)
        spares = [ray.get(s.actor.pid.remote()) for s in runner.spares]
        assert len(spares) == 1 and spares[0] in joined_pids[2:], (spares, joined_pids)
        assert sorted(e for held in runner.placement for e in held) == [0, 1, 2, 3]
        assert len(in_flight_at_switch) == 2, in_flight_at_switch
        assert min(in_flight_at_switch) > 0, (in_flight_at_switch, next_id)
        assert all(len(tokens) == max_tokens for tokens, _ in got.values())
    finally:
        engine.close()
    served = {r: prompts[r] for r in got}
    reference = run_to_end(Engine(mixtral, engine_config()), served, max_tokens)
    assert_matches(reference, got, max_tokens)


def test_a_killed_rank_is_fatal(ray_local: None, mixtral: Path) -> None:
    import ray

    engine = Engine(
        mixtral, engine_config(expert_parallel=2, tensor_parallel=1, rank_resources=RANK_CPU)
    )
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
