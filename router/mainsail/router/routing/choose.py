"""Choosing a worker for a request: the scheduling profile over live worker views, and the
wait for capacity when no worker can take it yet.

Apart from dispatch because it is the one place that reads the KV indexes and the profile;
the dispatcher only books and submits what this chose. Requests waiting here are the router's
queue (`waiting`), exported as `mainsail_router_queued_requests`: the demand the operator's
autoscaler reads. Who goes next and who is refused is the `FlowQueue` policy
(`scheduling/flow.py`: priority bands, fair across tenants, deadlines within one, bounded):
only the head of that queue runs the profile, so a request never overtakes one the policy
puts before it; when the head fits, the next in line is woken at once.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from mainsail.router.errors import RouterError, overloaded, slo_unattainable, unavailable
from mainsail.router.fleet.registry import WorkerEntry, WorkerRegistry
from mainsail.router.kvindex import ApproximateIndex, KVIndex
from mainsail.router.metrics import RouterMetrics
from mainsail.router.routing.prepare import Prepared
from mainsail.router.routing.worker_views import ScheduleRecorder, WorkerViews
from mainsail.router.scheduling import (
    RequestInfo,
    SchedulingContext,
    SchedulingProfile,
    WorkerSnapshot,
    shared_tier_hits,
)
from mainsail.router.scheduling.admission import Waiting, admit, recheck
from mainsail.router.scheduling.flow import FlowLimits, FlowQueue, Ticket
from mainsail.spec.admission import Admission as AdmissionSettings

RECHECK_INTERVAL_S = 0.1
"""Least time between two re-checks of the waiting requests' predicted TTFT (it also stays
above ten times the last re-check's own duration, so a long queue costs the router at most
about a tenth of its time)."""


@dataclass(frozen=True, slots=True)
class _Queued:
    """What a waiting request's re-check needs: the request, when it started, its TTFT
    target and its prefix hits per worker (from its admission; they rarely change while it
    waits, and a lookup per request per re-check would cost more than it tells)."""

    info: RequestInfo
    started: float
    target_s: float
    hits: Mapping[str, int]


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
        limits: FlowLimits | None = None,
        admission: AdmissionSettings | None = None,
        block_size: int = 16,
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
        step_cost = admission.step_cost if admission is not None else None
        self._views = WorkerViews(registry, block_size, step_cost)
        self.recorder = ScheduleRecorder(metrics)
        self.flow = FlowQueue(limits or FlowLimits(4096, 4096, 1024))
        self._refusals: dict[Ticket, RouterError | None] = {}
        self._queued: dict[Ticket, _Queued] = {}
        self._next_recheck = 0.0
        self.admission = admission
        self.block_size = block_size

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
        queue: bool = True,
    ) -> tuple[WorkerEntry, int]:
        """A worker not in ``tried`` and how many leading blocks the index says it holds;
        RouterError 503 when none could take the request within ``timeout`` of ``started``
        (within ``cold_start_timeout``, if longer, while `cold`), 429 when admission or the
        flow queue refuses it or sheds it while it waits.

        ``queue=False`` is for a request admitted earlier (another try after a fail-over, a
        move of a streaming request, the decode half of a disaggregated one): it neither
        passes admission again nor joins the flow queue, and tries every worker it may on
        every wake — behind the queue's order it could wait for a head that cannot use the
        workers it can (a move must avoid its own worker)."""
        ticket: Ticket | None = None
        if queue:
            with prepared.trace.phase("mainsail.admission"):
                ticket = self._enqueue(prepared, started)
        self._waiting += 1
        self.metrics.queued.inc()
        try:
            while True:
                if ticket is not None:
                    self._recheck()
                refusal = self._refusals.get(ticket) if ticket is not None else None
                if refusal is not None:
                    raise refusal
                if ticket is None or self.flow.head() == ticket:
                    chosen = self._schedule(prepared, tried)
                    if chosen is not None:
                        if ticket is not None:
                            self.flow.pop_head()
                            self._changed.set()  # the next in line may fit too
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
            if ticket is not None:
                self._refusals.pop(ticket, None)
                self._queued.pop(ticket, None)
                if ticket in self.flow:
                    self.flow.remove(ticket)
                    self._changed.set()  # whoever is next in line now
            self._waiting -= 1
            self.metrics.queued.dec()

    def _enqueue(self, prepared: Prepared, started: float) -> Ticket:
        """Admission, then a place in the flow queue (deadline: its TTFT target from
        ``started``); 429 when either refuses. Requests it displaces are refused."""
        hits = self.admit(prepared, started)  # a new request: refused now rather than late
        due = started + prepared.ttft_target_s
        offer = self.flow.offer(prepared.priority, prepared.flow, due)
        for gone in offer.shed:
            self._refuse(gone, "it was shed for a higher-priority request")
        if offer.ticket is None:
            self.metrics.shed.labels("queue_full").inc()
            raise overloaded(f"The router cannot queue this request: {offer.reason}; retry later.")
        self._refusals[offer.ticket] = None
        self._queued[offer.ticket] = _Queued(prepared.info, started, prepared.ttft_target_s, hits)
        return offer.ticket

    def _refuse(self, ticket: Ticket, why: str) -> None:
        """End a waiting request with 429 (shed): its waiter raises when it wakes."""
        if ticket in self._refusals:
            self._refusals[ticket] = overloaded(
                f"The router dropped this request while it waited: {why}; retry later."
            )
            self.metrics.shed.labels("displaced").inc()
            self._changed.set()

    def admit(self, prepared: Prepared, started: float) -> Mapping[str, int]:
        """429 (with `Retry-After`) when no worker is predicted to give ``prepared`` its first
        token within its TTFT target (`scheduling/admission.py`); no-op without a cost model
        or while no worker is registered (a cold pool is woken by the held request). Returns
        the request's prefix hits per worker (empty when nothing was predicted)."""
        settings = self.admission
        if settings is None or settings.step_cost is None:
            return {}
        entries = [e for e in self.registry.entries() if not e.draining]
        if not entries:
            return {}
        ahead = [
            q
            for t, q in self._queued.items()
            if t.priority >= prepared.priority and self._refusals.get(t) is None
        ]
        ctx = self._context(prepared, entries)
        verdict = admit(
            settings.step_cost,
            ctx,
            block_size=self.block_size,
            target_s=prepared.ttft_target_s,
            waited_s=self._clock() - started,
            queued_ahead_tokens=sum(q.info.prompt_tokens for q in ahead),
            queued_ahead_requests=len(ahead),
            headroom=settings.headroom,
        )
        if not verdict.admit:
            self.metrics.shed.labels("predicted_ttft").inc()
            raise slo_unattainable(
                f"Refused at admission: {verdict.reason}; retry after {verdict.retry_after_s:g} s.",
                verdict.retry_after_s,
            )
        return dict(ctx.prefix_hits)

    def _recheck(self) -> None:
        """Refuse the waiting requests whose predicted TTFT can no longer meet their target,
        and the sheddable ones when higher bands are missing theirs (`admission.recheck`);
        at most every `RECHECK_INTERVAL_S`, whoever of the waiters wakes first runs it."""
        settings = self.admission
        now = self._clock()
        if settings is None or settings.step_cost is None or now < self._next_recheck:
            return
        entries = [e for e in self.registry.entries() if not e.draining]
        if not entries or not self._queued:
            self._next_recheck = now + RECHECK_INTERVAL_S
            return
        t0 = time.perf_counter()
        waiting = [
            Waiting(t, t.priority, q.info, q.hits, now - q.started, q.target_s)
            for t in self.flow.in_order()
            if (q := self._queued.get(t)) is not None and self._refusals.get(t) is None
        ]
        workers = [self._views.snapshot(e) for e in entries]
        refusals = recheck(
            settings.step_cost,
            workers,
            waiting,
            block_size=self.block_size,
            headroom=settings.headroom,
        )
        for refusal in refusals:
            if refusal.shed:
                error = overloaded(
                    f"The router dropped this request while it waited: {refusal.reason}; "
                    "retry later."
                )
                self.metrics.shed.labels("displaced").inc()
            else:
                error = slo_unattainable(
                    f"Refused while waiting: {refusal.reason}; retry after "
                    f"{refusal.retry_after_s:g} s.",
                    refusal.retry_after_s,
                )
                self.metrics.shed.labels("predicted_ttft").inc()
            self._refusals[refusal.key] = error
            self.flow.remove(refusal.key)
        if refusals:
            self._changed.set()
        spent = time.perf_counter() - t0
        self._next_recheck = self._clock() + max(RECHECK_INTERVAL_S, 10 * spent)

    def _context(self, prepared: Prepared, entries: list[WorkerEntry]) -> SchedulingContext:
        return self.context(prepared.info, entries)

    def context(
        self, info: RequestInfo, entries: Sequence[WorkerEntry] | None = None
    ) -> SchedulingContext:
        """What the profile decides on for ``info`` over ``entries`` (default: every worker
        not draining): load views, prefix hits per worker and what each can fetch from its
        shared tier. Pure reads; `choose` and admission use it, and it explains a decision."""
        if entries is None:
            entries = [e for e in self.registry.entries() if not e.draining]
        hashes = info.block_hashes
        hits = self.index.longest_prefix(hashes)
        if self.approx is not None:
            # Workers that publish no KV events are scored from the router's own history.
            for worker_id, depth in self.approx.longest_prefix(hashes).items():
                if not self.publishes_events(worker_id):
                    hits[worker_id] = max(hits.get(worker_id, 0), depth)
        workers = tuple([self._views.snapshot(e) for e in entries])
        return SchedulingContext(
            request=info,
            workers=workers,
            prefix_hits=hits,
            tier_hits=self._tier_hits(hashes, workers),
            now=self._clock(),
        )

    def _tier_hits(
        self, hashes: Sequence[int], workers: Sequence[WorkerSnapshot]
    ) -> dict[str, int]:
        """Leading blocks each worker can fetch from its shared tier (empty without tiers)."""
        if not hashes or not any(w.kv_tier_id for w in workers):
            return {}
        writers = self.index.longest_prefix(hashes, tiers=("redis",))
        if not writers:
            return {}
        tier_of = {e.worker_id: e.load.kv_cost.tier_id for e in self.registry.entries()}
        return shared_tier_hits(writers, tier_of, workers)

    def _schedule(self, prepared: Prepared, tried: set[str]) -> tuple[WorkerEntry, int] | None:
        entries = [
            e for e in self.registry.entries() if e.worker_id not in tried and not e.draining
        ]
        if not entries:
            return None
        t0 = time.perf_counter()
        hashes = prepared.info.block_hashes
        ctx = self._context(prepared, entries)
        hits = ctx.prefix_hits
        decision = self.profile.schedule(ctx)
        elapsed = time.perf_counter() - t0
        prepared.trace.decision(decision, elapsed, len(entries))
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
