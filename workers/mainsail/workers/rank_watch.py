"""The idle liveness check of a sharded worker's ranks.

Why: a sharded worker finds a dead rank when a step calls it (`ShardLost`, and the worker
ends: `AsyncEngine._fatal`). An idle worker runs no steps, so a rank killed then went
unnoticed: the worker stayed registered and heartbeating, and the router sent it the next
request, which had to be moved. Every `CHECK_S` this asks each serving rank a question it
answers at once (`ShardedRunner.check_alive`); a dead one ends the worker exactly as a
failed step does, so the router deregisters it and the supervisor replaces it.

The check runs on the engine thread through `AsyncEngine.call`, between two steps like the
expert-load read and an elastic switch, so it never races a step or a change of the ranks.
A busy engine is not asked: its steps already call every rank.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from mainsail.workers.engine.errors import EngineFatalError

if TYPE_CHECKING:
    from mainsail.workers.engine import Engine
    from mainsail.workers.engine.async_engine import AsyncEngine

log = logging.getLogger(__name__)

CHECK_S = 2.0
"""Seconds between two checks (the expert-load read's cadence)."""


def check_idle_ranks(engine: Engine) -> bool:
    """On the engine thread: ask every serving rank if ``engine`` is sharded and idle;
    whether it asked. `ShardLost` if a rank is dead."""
    runner = engine.sharded
    if runner is None or engine.has_unfinished():
        return False
    runner.check_alive()
    return True


async def watch_ranks(engine: AsyncEngine, every_s: float = CHECK_S) -> None:
    """Check the ranks every ``every_s`` until cancelled, the engine stops, or a rank is
    found dead (the engine has then ended the worker)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await engine.call(check_idle_ranks)
        except EngineFatalError:
            return
        except RuntimeError as exc:  # shut down
            log.info("rank watch ends: %s", exc)
            return
