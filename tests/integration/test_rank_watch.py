"""An idle sharded worker notices a dead rank (issue 13), with real Ray rank actors.

A rank killed while its worker serves nothing used to be found only by the next request.
`rank_watch.watch_ranks` asks every serving rank, between steps, whether it is alive; a dead
one ends the engine exactly as a failed step does (`AsyncEngine.on_fatal`, which the worker
actor turns into the end of its process). The expert-load read of an expert-parallel worker
(`ExpertScaling.refresh`), a call outside any step, ends it the same way instead of only
logging. A rank whose process is stopped (SIGSTOP: alive to Ray, answering nothing) ends it
once it has been silent for the watch's hung bound. A dead warm spare (elastic expert
parallelism) is replaced and costs the worker nothing, whether the watch finds it or the
scale-up that takes it. Ranks are signalled by the pid Ray reports for them.
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
from mainsail.workers.parallel import ShardedRunner, ShardLost
from mainsail.workers.parallel.ray_ranks import RankHandle
from mainsail.workers.rank_watch import ask_idle_ranks, watch_ranks

pytestmark = pytest.mark.integration

NOTICE_S = 30.0
SPARE_START_S = 120.0
RANK_CPU = {"CPU": 0.5}


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


def _kill_the_spare(runner: ShardedRunner) -> RankHandle:
    """Wait for the worker's warm spare (started in the background) and kill it."""
    import ray

    deadline = time.monotonic() + SPARE_START_S
    while not runner.spares and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(runner.spares) == 1, "no warm spare rank was started"
    spare = runner.spares[0]
    process = psutil.Process(ray.get(spare.actor.pid.remote(), timeout=60))
    process.kill()
    process.wait(30)
    return spare


def _elastic() -> Engine:
    return Engine(
        ensure_checkpoint("mixtral"),
        engine_config(expert_parallel=2, expert_parallel_max=3, rank_resources=RANK_CPU),
    )


async def test_a_dead_warm_spare_is_replaced_and_the_worker_lives(ray_local: None) -> None:
    fatal: list[BaseException] = []
    engine = AsyncEngine(_elastic(), fatal.append)
    try:
        runner = engine.engine.sharded
        assert runner is not None
        dead = await asyncio.to_thread(_kill_the_spare, runner)
        watch = asyncio.create_task(watch_ranks(engine, every_s=0.2, answer_s=5.0))
        deadline = time.monotonic() + SPARE_START_S
        while time.monotonic() < deadline and not (runner.spares and runner.spares[0] is not dead):
            await asyncio.sleep(0.2)
        assert not watch.done(), "the watch ended: it took the dead spare for a lost rank"
        watch.cancel()
        assert runner.spares and runner.spares[0] is not dead, "the dead spare was not replaced"
        assert not fatal
        query = runner.ranks.ask_alive(runner.spares)
        assert not (await asyncio.to_thread(query.hear, 60.0)).dead  # the new one lives
    finally:
        await engine.shutdown()


def test_a_scale_up_that_takes_a_dead_spare_starts_a_new_rank_instead(ray_local: None) -> None:
    engine = _elastic()
    try:
        runner = engine.sharded
        assert runner is not None
        _kill_the_spare(runner)
        engine.scale_experts(3)
        deadline = time.monotonic() + SPARE_START_S
        while time.monotonic() < deadline and runner.ep != 3:
            resize = runner.resizing
            assert resize is None or resize.error is None, resize.error
            runner.switch_if_ready()
            time.sleep(0.2)
        assert runner.ep == 3 and len(runner.handles) == 3
        assert runner.ranks.lost is None  # the dead spare did not cost the worker
    finally:
        engine.close()


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
