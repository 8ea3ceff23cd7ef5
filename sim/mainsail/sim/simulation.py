"""The discrete-event loop: arrivals, routing, engine steps and load samples on a virtual clock.

Why discrete events: time jumps from one state change to the next (an arrival, the end of a
step or of a fast-forwarded decode stretch), so an hour of traffic on a thousand workers costs
work proportional to requests and prefill chunks, not to wall time or token count.

Ordering at equal times is fixed and documented, so runs are deterministic for a seed: step
ends first (a worker finishing frees room before the next request is routed), then arrivals in
trace order, then load samples, then the ends of shared-tier fetches (`kvtier`). Ties inside a
kind keep insertion order. Requests a policy
cannot place (every worker filtered out, e.g. all at capacity) wait in a FIFO at the router and
are retried whenever a request finishes, as the router's admission queue would hold them.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field

from mainsail.sim.cost import GPUProfile
from mainsail.sim.kvtier import SimSharedTier, TierSettings, cost_model
from mainsail.sim.policies import make_policy
from mainsail.sim.prompts import PromptHasher
from mainsail.sim.request import SimRequest
from mainsail.sim.router_policy import RouterPolicy
from mainsail.sim.traces import TraceRequest
from mainsail.sim.worker import SimWorker
from mainsail.spec.kvhash import KVHashConfig
from mainsail.spec.routing_profile import RoutingProfile

_STEP, _ARRIVAL, _SAMPLE, _LOAD = 0, 1, 2, 3


class VirtualClock:
    """The simulator's clock, injected into every router component it drives (seconds)."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class SimSettings:
    """One simulated cluster. Times in seconds."""

    workers: int = 8
    block_size: int = 16  # engine KV block, tokens; must divide 512
    hash_seed: int = 0
    seed: int = 0
    sample_every_s: float = 10.0  # period of the load-over-time samples
    drain_s: float = 3600.0  # keep simulating this long after the last arrival
    max_model_len: int = 131_072
    routing: RoutingProfile = field(default_factory=RoutingProfile)
    tier: TierSettings = field(default_factory=TierSettings)  # KV tier store(s) (default: none)
    tier_aware: bool = True  # the router prices tier-held prefixes (False: device only)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        if self.sample_every_s <= 0 or self.drain_s < 0:
            raise ValueError("sample_every_s must be > 0 and drain_s >= 0")


@dataclass
class RunResult:
    """Everything one policy's run produced; `mainsail.sim.metrics` summarises it."""

    policy: str
    requests: list[SimRequest]
    served: list[int]  # requests finished per worker
    busy_s: list[float]  # virtual seconds each worker spent in steps
    sample_times: list[float]
    load_samples: list[list[int]]  # per sample: requests at each worker
    end_time: float
    wall_s: float
    decide_wall_s: float = math.nan
    index_entries: int = 0
    evictions: int = 0
    tier_evictions: int = 0


def run_policy(
    policy_name: str,
    trace: list[TraceRequest],
    profile: GPUProfile,
    settings: SimSettings,
    hasher: PromptHasher | None = None,
) -> RunResult:
    """Replays ``trace`` through ``policy_name`` on fresh simulated workers."""
    return PolicyRun(policy_name, trace, profile, settings, hasher).run()


class PolicyRun:
    """One policy's replay of a trace: the event heap, the workers, the router's FIFO of
    requests no worker could take yet, and the load samples. Used once (`run`)."""

    def __init__(
        self,
        policy_name: str,
        trace: list[TraceRequest],
        profile: GPUProfile,
        settings: SimSettings,
        hasher: PromptHasher | None = None,
    ) -> None:
        self.wall0 = time.perf_counter()
        self.trace = trace
        self.settings = settings
        self.clock = VirtualClock()
        self.hasher = hasher or PromptHasher(settings.block_size, settings.hash_seed)
        if self.hasher.block_size != settings.block_size:
            raise ValueError("hasher and settings disagree on block_size")
        fingerprint = KVHashConfig(
            block_size=settings.block_size, hash_seed=settings.hash_seed
        ).fingerprint()
        self.heap: list[tuple[float, int, int, int, int]] = []  # (at, kind, seq, a, b)
        self.seq = 0  # insertion order, the tie-break inside a kind
        self.pending: deque[SimRequest] = deque()  # waiting at the router, FIFO
        self.finished_any = False  # a request finished during the current step end
        changed: set[int] = set()  # workers whose snapshot is stale (see RouterPolicy)
        tier = settings.tier
        self.tiers: list[SimSharedTier] = []
        if tier.capacity_blocks:
            ids = [SimSharedTier.TIER_ID] if tier.stores == 1 else [
                f"{SimSharedTier.TIER_ID}-{g}" for g in range(tier.stores)
            ]  # fmt: skip
            self.tiers = [SimSharedTier(tier.capacity_blocks, tier_id) for tier_id in ids]
        cost = cost_model(profile, settings.block_size, tier)
        self.workers = [
            SimWorker(
                i,
                profile,
                settings.block_size,
                self._schedule_step,
                self._on_finish,
                sink=self._kv_event,
                max_model_len=settings.max_model_len,
                hash_fingerprint=fingerprint,
                changed=changed,
                tier=self.tiers[tier.store_of(i, settings.workers)] if self.tiers else None,
                cost=cost,
                schedule_load=self._schedule_load,
            )
            for i in range(settings.workers)
        ]
        rng = random.Random(settings.seed)
        self.policy = make_policy(policy_name, self.workers, rng, self.clock, settings.routing,
                                  changed, tier_aware=settings.tier_aware)  # fmt: skip
        self.kv_consumer: RouterPolicy | None = None
        if isinstance(self.policy, RouterPolicy) and self.policy.wants_kv_events:
            self.kv_consumer = self.policy
        else:
            for w in self.workers:
                w.kv.sink = None  # nobody listens: skip building event lists
        self.requests: list[SimRequest] = []
        self.sample_times: list[float] = []
        self.load_samples: list[list[int]] = []

    def _push(self, at: float, kind: int, a: int = 0, b: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, kind, self.seq, a, b))

    def _schedule_step(self, at: float, worker: int, version: int) -> None:
        self._push(at, _STEP, worker, version)

    def _schedule_load(self, at: float, worker: int, req: SimRequest) -> None:
        self._push(at, _LOAD, worker, req.index)

    def _on_finish(self, req: SimRequest) -> None:
        req.block_hashes = []  # the KV cache keeps what it needs; free the rest
        self.finished_any = True

    def _kv_event(self, worker_id: str, kind: str, hashes: list[int], tier: str = "device") -> None:
        if self.kv_consumer is not None:
            self.kv_consumer.on_kv_event(worker_id, kind, hashes, tier)

    def _dispatch(self, req: SimRequest, now: float) -> bool:
        choice = self.policy.route(req, now)
        if choice is None:
            return False
        self.workers[choice].enqueue(req, now)
        return True

    def _arrive(self, tr: TraceRequest) -> None:
        self.clock.now = max(self.clock.now, tr.arrival_s)
        req = SimRequest(
            len(self.requests),
            tr.arrival_s,
            tr.input_tokens,
            tr.output_tokens,
            self.hasher.block_hashes(tr.block_ids, tr.input_tokens, tr.namespace),
        )
        self.requests.append(req)
        if self.pending or not self._dispatch(req, self.clock.now):
            self.pending.append(req)

    def run(self) -> RunResult:
        """Replays the whole trace, then drains (up to `drain_s` after the last arrival)."""
        trace, heap, workers = self.trace, self.heap, self.workers
        end_limit = (trace[-1].arrival_s if trace else 0.0) + self.settings.drain_s
        self._push(0.0, _SAMPLE)
        next_arrival, n_trace = 0, len(trace)
        while True:
            t_event = heap[0][0] if heap else math.inf
            if next_arrival < n_trace and trace[next_arrival].arrival_s <= t_event:
                self._arrive(trace[next_arrival])
                next_arrival += 1
                continue
            if not heap or t_event > end_limit:
                break
            at, kind, _, a, b = heapq.heappop(heap)
            self.clock.now = at
            if kind == _STEP:
                self.finished_any = False
                workers[a].step_end(at, b)
                while self.finished_any and self.pending and self._dispatch(self.pending[0], at):
                    self.pending.popleft()
            elif kind == _LOAD:
                workers[a].load_done(self.requests[b], at)
            elif kind == _SAMPLE:
                self.sample_times.append(at)
                self.load_samples.append([w.load for w in workers])
                if next_arrival < n_trace or any(w.load for w in workers) or self.pending:
                    self._push(at + self.settings.sample_every_s, _SAMPLE)
        return self._result()

    def _result(self) -> RunResult:
        policy = self.policy
        index = getattr(policy, "index", None)
        return RunResult(
            policy=policy.name,
            requests=self.requests,
            served=[w.served for w in self.workers],
            busy_s=[w.busy_s for w in self.workers],
            sample_times=self.sample_times,
            load_samples=self.load_samples,
            end_time=self.clock.now,
            wall_s=time.perf_counter() - self.wall0,
            decide_wall_s=getattr(policy, "decide_wall_s", math.nan),
            index_entries=index.stats().entries if index is not None else 0,
            evictions=sum(w.kv.evictions for w in self.workers),
            tier_evictions=sum(t.evictions for t in self.tiers),
        )
