"""Periodic passes over every known ModelDeployment, without kopf timers.

Why not `@kopf.timer`: kopf puts a finalizer on every object a timer (or daemon) runs for, and
only a running operator removes it. With the operator gone (`helm uninstall`, a paused
`replicaCount: 0`, a crash loop) a ModelDeployment could then never be deleted, and neither
could any child it owns. Nothing of ours needs a finalizer: children go with their owner
through ownerReferences. So one loop per operator drives the resync and autoscaler passes of
every deployment it has seen a watch event for, and kopf, finding no handler that needs its
finalizer, removes the one an older operator left on existing objects.

`due` is the pure policy (which deployment is due for what); `Ticker` holds the bodies seen
and runs the due passes concurrently, each failure logged and retried at the next interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)
Key = tuple[str, str]
# Longest sleep between two looks at the schedule (a new deployment waits at most this).
MAX_SLEEP_S = 1.0


@dataclass
class Schedule:
    """When each kind of pass last ran for one deployment (monotonic seconds)."""

    resynced: float
    autoscaled: float


def due(schedule: Schedule, now: float, resync_s: float, autoscale_s: float) -> tuple[bool, bool]:
    """(resync due, autoscale due): an interval has passed since the pass last ran."""
    return now - schedule.resynced >= resync_s, now - schedule.autoscaled >= autoscale_s


@dataclass
class Ticker:
    """Runs `resync(namespace, name)` every `resync_s` and `autoscale(body)` every
    `autoscale_s` for each deployment `seen` and not `forget`-ten. A deployment's first passes
    come one interval after it is first seen (its create/resume handler already ran one)."""

    resync: Callable[[str, str], Awaitable[None]]
    autoscale: Callable[[Mapping[str, Any]], Awaitable[None]]
    resync_s: float
    autoscale_s: float
    clock: Callable[[], float] = time.monotonic
    _bodies: dict[Key, Mapping[str, Any]] = field(default_factory=dict)
    _schedules: dict[Key, Schedule] = field(default_factory=dict)

    def seen(self, body: Mapping[str, Any]) -> None:
        """The latest body of a deployment (from a watch event)."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if not all(key):
            return
        self._bodies[key] = body
        if key not in self._schedules:
            now = self.clock()
            self._schedules[key] = Schedule(resynced=now, autoscaled=now)

    def forget(self, namespace: str, name: str) -> None:
        self._bodies.pop((namespace, name), None)
        self._schedules.pop((namespace, name), None)

    def known(self) -> set[Key]:
        return set(self._bodies)

    async def tick(self) -> None:
        """Run every pass that is due now (concurrently), then mark them run."""
        now = self.clock()
        passes: list[Awaitable[None]] = []
        for key, schedule in list(self._schedules.items()):
            resync, autoscale = due(schedule, now, self.resync_s, self.autoscale_s)
            if resync:
                schedule.resynced = now
                passes.append(self._guarded("resync", key, self.resync(*key)))
            if autoscale:
                schedule.autoscaled = now
                passes.append(self._guarded("autoscale", key, self.autoscale(self._bodies[key])))
        if passes:
            await asyncio.gather(*passes)

    async def run(self) -> None:
        """Forever (until cancelled at the operator's cleanup)."""
        sleep_s = min(MAX_SLEEP_S, self.resync_s, self.autoscale_s)
        while True:
            await asyncio.sleep(sleep_s)
            await self.tick()

    @staticmethod
    async def _guarded(what: str, key: Key, work: Awaitable[None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s pass of %s/%s failed; retried at its next interval", what, *key)
