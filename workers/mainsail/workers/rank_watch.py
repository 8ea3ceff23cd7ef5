"""The idle liveness check of a sharded worker's ranks.

Why: a sharded worker finds a dead rank when a step calls it (`ShardLost`, and the worker
ends: `AsyncEngine._fatal`). An idle worker runs no steps, so a rank killed then went
unnoticed: the worker stayed registered and heartbeating, and the router sent it the next
request, which had to be moved. Every `CHECK_S` this asks each serving rank a question it
answers at once (`RankActor.ready`). A rank Ray reports dead, or one that has answered none
of the questions for `HUNG_S` (its process stopped or wedged, which Ray does not see), ends
the worker exactly as a failed step does, so the router deregisters it and the supervisor
replaces it. Warm spare ranks (elastic expert parallelism) are asked too, busy or idle: a dead
one is released and replaced (`ShardedRunner.drop_dead_spares`), which costs the worker
nothing, instead of being found by the scale-up that takes it.

Only the sending and the verdict run on the engine thread (`AsyncEngine.call`), between two
steps like the expert-load read and an elastic switch, so the ranks asked are the members and
the verdict never races a step or a change of the ranks. The wait for the answers runs on a
thread of its own: a rank that does not answer holds up no step. A busy engine is not asked:
its steps already call every rank.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from mainsail.workers.engine.errors import EngineFatalError

if TYPE_CHECKING:
    from mainsail.workers.engine import Engine
    from mainsail.workers.engine.async_engine import AsyncEngine
    from mainsail.workers.parallel import ShardedRunner
    from mainsail.workers.parallel.ray_ranks import Liveness, LivenessQuery

log = logging.getLogger(__name__)

CHECK_S = 2.0
"""Seconds between two questions (the expert-load read's cadence)."""
ANSWER_S = 10.0
"""How long one question waits for its answers (off the engine thread)."""
HUNG_S = 60.0
"""A serving rank of an idle worker that has answered no question for this long is taken as
hung: `ready` needs no work of the rank, so even a machine at load 50 answers in seconds."""


def ask_idle_ranks(engine: Engine) -> LivenessQuery | None:
    """On the engine thread: send the serving ranks a liveness question if ``engine`` is
    sharded and idle; None otherwise."""
    runner = engine.sharded
    if runner is None or engine.has_unfinished():
        return None
    return runner.ask_alive()


def verdict(
    heard: Liveness, silent_since: Mapping[int, float], now: float, hung_s: float
) -> tuple[str | None, dict[int, float]]:
    """Why the worker is lost after ``heard`` (None: it is not), and when each rank that is
    still silent first failed to answer (the next call's ``silent_since``)."""
    if heard.dead:
        rank, why = heard.dead[0]
        return f"rank {rank} is dead: {why}", {}
    since = {rank: silent_since.get(rank, now) for rank in heard.silent}
    for rank, first in sorted(since.items()):
        if now - first >= hung_s:
            return f"rank {rank} is hung: it answered no liveness query for {now - first:.0f} s", {}
    return None, since


def end_if_serving(engine: Engine, query: LivenessQuery, reason: str) -> None:
    """On the engine thread: end the worker for ``reason`` (`ShardLost`) if the ranks asked
    still serve it; a resize since the question made the answer moot."""
    runner = engine.sharded
    if runner is not None and runner.serves_with(query.handles):
        runner.lose(reason)


async def _check_spares(runner: ShardedRunner, answer_s: float) -> None:
    """`ShardedRunner.drop_dead_spares` off the engine thread. A failure here is logged and
    the watch goes on: spares serve nothing, and the members' check decides the worker. No
    thread hop when there is no spare (every worker that is not elastic, most checks)."""
    if not runner.spares:
        return
    try:
        await asyncio.to_thread(runner.drop_dead_spares, answer_s)
    except EngineFatalError:
        raise
    except Exception as exc:
        log.warning("checking the warm spare ranks failed: %s", exc)


async def watch_ranks(
    engine: AsyncEngine,
    every_s: float = CHECK_S,
    answer_s: float = ANSWER_S,
    hung_s: float = HUNG_S,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Ask the ranks every ``every_s`` until cancelled, the engine stops, or a rank is found
    dead or hung (the engine has then ended the worker)."""
    silent_since: dict[int, float] = {}
    while True:
        await asyncio.sleep(every_s)
        try:
            runner = engine.engine.sharded
            if runner is not None:
                await _check_spares(runner, answer_s)
            query = await engine.call(ask_idle_ranks)
            if query is None:  # busy (its steps call every rank) or not sharded
                silent_since = {}
                continue
            heard = await asyncio.to_thread(query.hear, answer_s)
            for rank in heard.silent:
                log.warning("rank %d did not answer a liveness query in %s s", rank, answer_s)
            reason, silent_since = verdict(heard, silent_since, clock(), hung_s)
            if reason is not None:
                await engine.call(functools.partial(end_if_serving, query=query, reason=reason))
        except EngineFatalError:
            return
        except RuntimeError as exc:  # shut down
            log.info("rank watch ends: %s", exc)
            return
