"""An idle sharded worker notices a dead rank (issue 13), with real Ray rank actors.

A rank killed while its worker serves nothing used to be found only by the next request.
`rank_watch.watch_ranks` asks every serving rank, between steps, whether it is alive; a dead
one ends the engine exactly as a failed step does (`AsyncEngine.on_fatal`, which the worker
actor turns into the end of its process). The expert-load read of an expert-parallel worker
(`ExpertScaling.refresh`), a call outside any step, ends it the same way instead of only
logging. A rank whose process is stopped (SIGSTOP: alive to Ray, answering nothing) ends it
once it has been silent for the watch's hung bound. Ranks are signalled by the pid Ray reports
for them.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import psutil
import pytest
from support.ray_local import local_ray
from support.sharded import engine_config

from mainsail.workers.checkpoint import ensure_checkpoint
from mainsail.workers.engine import AsyncEngine, Engine
from mainsail.workers.expert_scaling import ExpertScaling
from mainsail.workers.parallel import ShardLost
from mainsail.workers.rank_watch import ask_idle_ranks, watch_ranks

pytestmark = pytest.mark.integration

NOTICE_S = 30.0


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    with local_ray(num_cpus=4):
        yield


def _rank_process(engine: AsyncEngine, rank: int) -> psutil.Process:
    import ray

    runner = engine.engine.sharded
    assert runner is not None
    return psutil.Process(ray.get(runner.handles[rank].actor.pid.remote(), timeout=60))


def _kill_rank(engine: AsyncEngine, rank: int) -> None:
    process = _rank_process(engine, rank)
    process.kill()
    process.wait(30)


async def test_a_rank_killed_while_idle_ends_the_engine(ray_local: None) -> None:
    fatal: list[BaseException] = []
    engine = AsyncEngine(
        Engine(ensure_checkpoint("llama"), engine_config(tensor_parallel=2)), fatal.append
    )
    try:
        query = await engine.call(ask_idle_ranks)  # idle: asked
        assert query is not None
        heard = await asyncio.to_thread(query.hear, 60.0)
        assert not heard.dead and not heard.silent and not fatal  # both ranks alive
        _kill_rank(engine, 1)
        started = time.monotonic()
        await asyncio.wait_for(watch_ranks(engine, every_s=0.5), NOTICE_S)
        noticed = time.monotonic() - started
        assert len(fatal) == 1 and isinstance(fatal[0], ShardLost), fatal
        assert "rank 1 is dead" in str(fatal[0])
        print(f"dead idle rank noticed in {noticed:.2f} s")
    finally:
        await engine.shutdown()


async def test_a_rank_that_answers_nothing_ends_the_engine_once_past_the_hung_bound(
    ray_local: None,
) -> None:
    fatal: list[BaseException] = []
    engine = AsyncEngine(
        Engine(ensure_checkpoint("llama"), engine_config(tensor_parallel=2)), fatal.append
    )
    stopped = _rank_process(engine, 1)
    try:
        stopped.send_signal(signal.SIGSTOP)  # alive to Ray, answers nothing
        started = time.monotonic()
        watch = watch_ranks(engine, every_s=0.2, answer_s=0.5, hung_s=3.0)
        await asyncio.wait_for(watch, NOTICE_S)
        noticed = time.monotonic() - started
        assert len(fatal) == 1 and isinstance(fatal[0], ShardLost), fatal
        assert "rank 1 is hung" in str(fatal[0])
        assert noticed >= 3.0  # not before the bound
        # the engine thread was never held by the silent rank: it still answers at once
        assert await asyncio.wait_for(engine.call(lambda e: e.has_unfinished()), 5) is False
        print(f"hung idle rank noticed in {noticed:.2f} s")
    finally:
        stopped.send_signal(signal.SIGCONT)
        await engine.shutdown()


async def test_a_dead_rank_under_the_expert_load_read_ends_the_engine(ray_local: None) -> None:
    fatal: list[BaseException] = []
    engine = AsyncEngine(
        Engine(ensure_checkpoint("mixtral"), engine_config(tensor_parallel=1, expert_parallel=2)),
        fatal.append,
    )
    try:
        experts = ExpertScaling(engine, refresh_s=0.0)
        await experts.refresh()
        assert not fatal
        _kill_rank(engine, 0)  # the read asks rank 0 only
        await experts.refresh()  # logs, keeps the old figures, and the engine has ended
        assert len(fatal) == 1 and isinstance(fatal[0], ShardLost), fatal
    finally:
        await engine.shutdown()
