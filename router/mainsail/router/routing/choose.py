"""Choosing a worker for a request: the scheduling profile over live worker views, and the
wait for capacity when no worker can take it yet.

Apart from dispatch because it is the one place that reads the KV indexes and the profile;
the dispatcher only books and submits what this chose. Requests waiting here are the router's
queue (`waiting`, bounded by `max_queue` in `Router.open`), exported as
`mainsail_router_queued_requests`: the demand the operator's autoscaler reads.

Scale to zero: while no worker at all is registered (every pool at zero, or still starting) a
new request is held up to the longer ``cold_start_timeout`` rather than ``timeout``, because
the held request itself is what wakes the pool (the autoscaler sees it as queued demand and
scales the pool up; the new worker registers and takes it). After that it gets a 503 that
says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from mainsail.router.errors import unavailable
from mainsail.router.fleet.registry import WorkerEntry, WorkerRegistry
from mainsail.router.kvindex import ApproximateIndex, KVIndex
from mainsail.router.metrics import RouterMetrics
from mainsail.router.routing.prepare import Prepared
from mainsail.router.routing.worker_views import ScheduleRecorder, WorkerViews
from mainsail.router.scheduling import SchedulingContext, SchedulingProfile


class WorkerChooser:
    """Runs the profile for a request, waiting (up to a timeout) until some worker fits."""

    def __init__(
        self,
        registry: WorkerRegistry,
        profile: SchedulingProfile,
        index: KVIndex,
        metrics: RouterMetrics,
        clock: Callable[[], float],
        approx: ApproximateIndex | None = None,
        publishes_events: Callable[[str], bool] = lambda worker_id: True,
    ) -> None:
        self.registry = registry
        self.profile = profile
        self.index = index
        self.approx = approx
        self.publishes_events = publishes_events
        self.metrics = metrics
        self._clock = clock
        self._waiting = 0
        self._changed = asyncio.Event()
        self._views = WorkerViews(registry)
        self.recorder = ScheduleRecorder(metrics)

    @property
    def waiting(self) -> int:
        """Requests waiting for a worker right now."""
        return self._waiting

    def notify(self) -> None:
        """Wake requests waiting for capacity (a worker joined, heartbeated or finished)."""
        self._changed.set()

    def cold(self) -> bool:
        """No worker that could take a request is registered (all absent or draining)."""
        return not any(not e.draining for e in self.registry.entries())

    async def choose(
        self,
        prepared: Prepared,
        tried: set[str],
        started: float,
        timeout: float,
        cold_start_timeout: float = 0.0,
    ) -> tuple[WorkerEntry, int]:
        """A worker not in ``tried`` and how many leading blocks the index says it holds;
        RouterError 503 when none could take the request within ``timeout`` of ``started``
        (within ``cold_start_timeout``, if longer, while `cold`)."""
        self._waiting += 1
        self.metrics.queued.inc()
        try:
            while True:
                chosen = self._schedule(prepared, tried)
                if chosen is not None:
                    return chosen
                self.recorder.flush()
                cold = self.cold()
                limit = max(timeout, cold_start_timeout) if cold else timeout
                remaining = started + limit - self._clock()
                if remaining <= 0:
                    if cold:
                        raise unavailable(
                            f"No worker is registered to serve this request (its pool is "
                            f"scaled to zero or still starting); held {limit:g} s and none "
                            "registered."
                        )
                    raise unavailable(
                        f"No worker could take the request within {timeout:g} s "
                        f"({len(self.registry)} registered)."
                    )
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 0.5))
        except BaseException:
            self.recorder.flush()
            raise
        finally:
            self._waiting -= 1
            self.metrics.queued.dec()

    def _schedule(self, prepared: Prepared, tried: set[str]) -> tuple[WorkerEntry, int] | None:
        entries = [
            e for e in self.registry.entries() if e.worker_id not in tried and not e.draining
        ]
        if not entries:
            return None
        t0 = time.perf_counter()
        hashes = prepared.info.block_hashes
        hits = self.index.longest_prefix(hashes)
        if self.approx is not None:
            # Workers that publish no KV events are scored from the router's own history.
            for worker_id, depth in self.approx.longest_prefix(hashes).items():
                if not self.publishes_events(worker_id):
                    hits[worker_id] = max(hits.get(worker_id, 0), depth)
        ctx = SchedulingContext(
            request=prepared.info,
            workers=tuple([self._views.snapshot(e) for e in entries]),
            prefix_hits=hits,
            now=self._clock(),
        )
        decision = self.profile.schedule(ctx)
        elapsed = time.perf_counter() - t0
        if decision.worker_id is None:
            self.recorder.add(elapsed, decision.timings, "", 0)
            return None
        mode = self.index.mode
        if self.approx is not None and not self.publishes_events(decision.worker_id):
            self.approx.record_dispatch(decision.worker_id, hashes)
            mode = self.approx.mode
        depth = hits.get(decision.worker_id, 0)
        self.recorder.add(elapsed, decision.timings, mode, depth)
        entry = self.registry.get(decision.worker_id)
        return None if entry is None else (entry, depth)
