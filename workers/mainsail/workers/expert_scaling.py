"""The worker's side of elastic expert parallelism: report the degree and expert load, and
start a change of degree when asked (`Worker.ScaleExperts`).

Why here and not in the engine: the engine already knows how to change its degree between two
steps (`Engine.scale_experts`, `ShardedRunner.switch_if_ready`); what a serving worker adds is
(1) the figures the operator's expert-parallel autoscaler decides on, carried in every
heartbeat (`LoadSnapshot.expert_parallel`, `expert_parallel_target`, `expert_load`), and
(2) the wire call that asks for a change. Everything that touches the engine runs on its
thread through `AsyncEngine.call`, between two steps. The expert load is read from rank 0
(one Ray call) at most every ``refresh_s``, not per heartbeat.

An idle engine takes no steps, and `Engine.step` is where a prepared change is switched in; so
after a change is asked for, `complete` waits for the joining ranks to be ready and then runs
the switch itself on the engine thread (a no-op if a step already did it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from mainsail.proto.v1 import mainsail_pb2 as pb

if TYPE_CHECKING:
    from mainsail.workers.engine import Engine
    from mainsail.workers.engine.async_engine import AsyncEngine
    from mainsail.workers.parallel import ShardedRunner

log = logging.getLogger(__name__)

REFRESH_S = 2.0
"""Seconds between two reads of the expert load from rank 0."""
PREPARE_TIMEOUT_S = 600.0
"""A change whose joining ranks are not ready by then is left to the engine's next step."""


class ScaleRefused(Exception):
    """A change of degree the worker will not start; ``code`` is the gRPC status name
    (``INVALID_ARGUMENT`` for a degree the model cannot take, else ``FAILED_PRECONDITION``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ExpertScaling:
    """Degree, expert load and changes of one sharded mixture-of-experts worker."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self._refresh_s = refresh_s
        self._clock = clock
        self._load: tuple[float, ...] = ()
        self._read_at: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def applies(engine: Engine) -> bool:
        """Whether ``engine`` runs a mixture-of-experts model in rank actors."""
        return engine.sharded is not None and bool(engine.model_config.num_experts)

    @property
    def runner(self) -> ShardedRunner:
        runner = self.engine.engine.sharded
        if runner is None:
            raise ScaleRefused("FAILED_PRECONDITION", "this worker does not run sharded")
        return runner

    def degrees(self) -> tuple[int, int]:
        """(degree run now, degree being moved to; equal when no change is under way)."""
        runner = self.runner
        resize = runner.resizing
        busy = resize is not None and resize.switched is None and resize.error is None
        return runner.ep, resize.target if busy and resize is not None else runner.ep

    def fill(self, snapshot: pb.LoadSnapshot) -> None:
        """Add the degree and the last expert load read to a heartbeat's snapshot."""
        current, target = self.degrees()
        snapshot.expert_parallel = current
        snapshot.expert_parallel_target = target
        snapshot.expert_load.extend(self._load)

    async def refresh(self) -> None:
        """Read the expert load from rank 0 (on the engine thread) if the last read is older
        than ``refresh_s``; a failure keeps the old figures. A dead rank (`ShardLost`, an
        `EngineFatalError`) ends the worker there as after a step (`AsyncEngine._fatal`)."""
        now = self._clock()
        if self._read_at is not None and now - self._read_at < self._refresh_s:
            return
        self._read_at = now
        try:
            load = await self.engine.call(_expert_load)
        except Exception as exc:  # ShardLost: the engine has ended the worker already
            log.warning("could not read the expert load: %s", exc)
            return
        self._load = tuple(load)

    async def run(self) -> None:
        """Refresh the expert load every ``refresh_s`` until cancelled."""
        while True:
            await self.refresh()
            await asyncio.sleep(self._refresh_s)

    async def scale(self, expert_parallel: int) -> tuple[int, int]:
        """Start moving to ``expert_parallel`` ranks; returns `degrees` after the request.
        Raises `ScaleRefused`."""
        from mainsail.workers.parallel import ShardingError

        if expert_parallel < 1:
            raise ScaleRefused("INVALID_ARGUMENT", "expert_parallel must be >= 1")
        current, target = self.degrees()
        if target != current:
            raise ScaleRefused(
                "FAILED_PRECONDITION",
                f"a change from expertParallel {current} to {target} is still under way",
            )
        if expert_parallel == current:
            return current, current

        def start(engine: Engine) -> None:
            engine.scale_experts(expert_parallel)

        try:
            await self.engine.call(start)
        except ShardingError as exc:
            code = "FAILED_PRECONDITION" if "in progress" in str(exc) else "INVALID_ARGUMENT"
            raise ScaleRefused(code, str(exc)) from exc
        except ValueError as exc:
            raise ScaleRefused("FAILED_PRECONDITION", str(exc)) from exc
        log.info("expertParallel %d -> %d requested", current, expert_parallel)
        task = asyncio.get_running_loop().create_task(self.complete())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return self.degrees()

    async def complete(self, poll_s: float = 0.1) -> None:
        """Once the change's joining ranks are ready, switch on the engine thread (a step
        may have done it already: then nothing happens)."""
        resize = self.runner.resizing
        deadline = self._clock() + PREPARE_TIMEOUT_S
        while resize is not None and resize.prepared is None and resize.error is None:
            if self._clock() > deadline:
                return
            await asyncio.sleep(poll_s)
        with contextlib.suppress(Exception):  # a failure here is the next step's to report
            await self.engine.call(_switch)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _expert_load(engine: Engine) -> list[float]:
    runner = engine.sharded
    return runner.expert_load() if runner is not None else []


def _switch(engine: Engine) -> None:
    runner = engine.sharded
    if runner is not None:
        runner.switch_if_ready()
