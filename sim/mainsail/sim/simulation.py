"""The discrete-event loop: arrivals, routing, engine steps and load samples on a virtual clock.

Why discrete events: time jumps from one state change to the next (an arrival, the end of a
step or of a fast-forwarded decode stretch), so an hour of traffic on a thousand workers costs
work proportional to requests and prefill chunks, not to wall time or token count.

Ordering at equal times is fixed and documented, so runs are deterministic for a seed: step
ends first (a worker finishing frees room before the next request is routed), then arrivals in
trace order, then load samples. Ties inside a kind keep insertion order. Requests a policy
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
from mainsail.sim.policies import make_policy
from mainsail.sim.prompts import PromptHasher
from mainsail.sim.request import SimRequest
from mainsail.sim.traces import TraceRequest
from mainsail.sim.worker import SimWorker
from mainsail.spec.deployment import RoutingProfile
from mainsail.spec.kvhash import KVHashConfig

_STEP, _ARRIVAL, _SAMPLE = 0, 1, 2


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


def run_policy(
    policy_name: str,
    trace: list[TraceRequest],
    profile: GPUProfile,
    settings: SimSettings,
    hasher: PromptHasher | None = None,
) -> RunResult:
    """Replays ``trace`` through ``policy_name`` on fresh simulated workers."""
    wall0 = time.perf_counter()
    clock = VirtualClock()
    hasher = hasher or PromptHasher(settings.block_size, settings.hash_seed)
    if hasher.block_size != settings.block_size:
        raise ValueError("hasher and settings disagree on block_size")
    fingerprint = KVHashConfig(
        block_size=settings.block_size, hash_seed=settings.hash_seed
    ).fingerprint()
    heap: list[tuple[float, int, int, int, int]] = []
    seq = 0

    def schedule_step(at: float, worker: int, version: int) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (at, _STEP, seq, worker, version))

    pending: deque[SimRequest] = deque()
    finished_any = False

    def on_finish(req: SimRequest) -> None:
        nonlocal finished_any
        req.block_hashes = []  # the KV cache keeps what it needs; free the rest
        finished_any = True

    policy_box: list[object] = []

    def kv_sink(worker_id: str, kind: str, hashes: list[int]) -> None:
        consumer = policy_box[0]
        consumer.on_kv_event(worker_id, kind, hashes)  # type: ignore[attr-defined]

    workers: list[SimWorker] = []
    rng = random.Random(settings.seed)
    changed: set[int] = set()
    for i in range(settings.workers):
        workers.append(
            SimWorker(
                i,
                profile,
                settings.block_size,
                schedule_step,
                on_finish,
                sink=kv_sink,
                max_model_len=settings.max_model_len,
                hash_fingerprint=fingerprint,
                changed=changed,
            )
        )
    policy = make_policy(policy_name, workers, rng, clock, settings.routing, changed)
    if getattr(policy, "wants_kv_events", False):
        policy_box.append(policy)
    else:
        for w in workers:
            w.kv.sink = None  # nobody listens: skip building event lists

    requests: list[SimRequest] = []
    sample_times: list[float] = []
    load_samples: list[list[int]] = []
    last_arrival = trace[-1].arrival_s if trace else 0.0
    end_limit = last_arrival + settings.drain_s
    seq += 1
    heapq.heappush(heap, (0.0, _SAMPLE, seq, 0, 0))
    next_arrival = 0
    n_trace = len(trace)

    def dispatch(req: SimRequest, now: float) -> bool:
        choice = policy.route(req, now)
        if choice is None:
            return False
        workers[choice].enqueue(req, now)
        return True

    while True:
        t_event = heap[0][0] if heap else math.inf
        if next_arrival < n_trace and trace[next_arrival].arrival_s <= t_event:
            tr = trace[next_arrival]
            clock.now = max(clock.now, tr.arrival_s)
            req = SimRequest(
                next_arrival,
                tr.arrival_s,
                tr.input_tokens,
                tr.output_tokens,
                hasher.block_hashes(tr.block_ids, tr.input_tokens, tr.namespace),
            )
            requests.append(req)
            next_arrival += 1
            if pending or not dispatch(req, clock.now):
                pending.append(req)
            continue
        if not heap or t_event > end_limit:
            break
        at, kind, _, a, b = heapq.heappop(heap)
        clock.now = at
        if kind == _STEP:
            finished_any = False
            workers[a].step_end(at, b)
            while finished_any and pending and dispatch(pending[0], at):
                pending.popleft()
        elif kind == _SAMPLE:
            sample_times.append(at)
            load_samples.append([w.load for w in workers])
            if next_arrival < n_trace or any(w.load for w in workers) or pending:
                seq += 1
                heapq.heappush(heap, (at + settings.sample_every_s, _SAMPLE, seq, 0, 0))

    index = getattr(policy, "index", None)
    return RunResult(
        policy=policy.name,
        requests=requests,
        served=[w.served for w in workers],
        busy_s=[w.busy_s for w in workers],
        sample_times=sample_times,
        load_samples=load_samples,
        end_time=clock.now,
        wall_s=time.perf_counter() - wall0,
        decide_wall_s=getattr(policy, "decide_wall_s", math.nan),
        index_entries=index.stats().entries if index is not None else 0,
        evictions=sum(w.kv.evictions for w in workers),
    )
