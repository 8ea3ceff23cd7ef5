"""Admission: refuse early a request no worker can serve within its TTFT target — on arrival,
and again while it waits in the router's flow queue.

Why before queueing: a request that will miss its target anyway only takes a slot from one
that would not; a 429 with the reason and `Retry-After` lets the client back off or go
elsewhere now instead of after the deadline (issue 14). Why again while it waits: the queue
it joined may drain slower than predicted (long decodes, a worker gone, higher bands
arriving ahead of it); once even the best worker cannot make its deadline, waiting longer
only rots it.

Prediction, per candidate worker ``w`` (one cost model, `mainsail.spec.step_cost.StepCost`,
the one the simulator replays and its calibration fits):

    ttft(w) = waited
            + cost.time_to_first_token(
                  prefill_ahead = w.pending_prefill_tokens + queued_ahead / candidates,
                  ahead_prompts = w.waiting + queued_requests_ahead / candidates,
                  uncached      = prompt - hits(w) * block_size,
                  cached        = hits(w) * block_size,
                  decode_seqs   = w.running,
                  decode_context= min(w.kv_blocks_used * block_size,
                                      w.running * w.max_model_len),
                  after_idle    = w has nothing running, queued or in flight)

``queued_ahead`` is the prompt tokens of requests waiting in the router's flow queue that
will be served before this one (on arrival: every request of the same or a higher band; on
a re-check: the requests before it in the queue's service order), spread over the
candidates. There are at least as many prompts ahead as it takes to hold their tokens in the
worker's context; no running sequence holds more than that context either (the KV blocks in
use also hold prompts mid-prefill and, right after a burst, may exceed what decodes read).
The cost model sums the engine's steps in closed form (decodes first, prefill chunks in the
rest of the token budget, each chunk's attention and per-sequence share; prompts ahead join
the decodes as they finish). A worker at its batch limit must also finish a sequence before
it admits a new one; that time depends on output lengths nobody knows yet, so each missing
slot is charged one decode step of the full batch (a lower bound there, and the flow
queue's bounds take over).

The request is admitted when ``min_w ttft(w) <= headroom * target``; otherwise refused with
the best prediction, and ``retry_after`` = how much later the best worker would make it.
Candidates are workers of the request's role whose context fits (other filters, such as
capacity, only decide *when* a worker takes it).

`recheck` applies the same test to every request waiting in the flow queue, in service
order, and adds the shedding rule for sheddable classes (negative priority): they run only
on spare capacity, so once any request of priority >= 0 is predicted to miss its target,
every waiting sheddable request is refused too — they go first under pressure.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from mainsail.router.scheduling.types import RequestInfo, SchedulingContext, WorkerSnapshot
from mainsail.spec.step_cost import StepCost


@dataclass(frozen=True, slots=True)
class AdmissionVerdict:
    """The verdict: ``admit``, the best predicted TTFT (s) and where, and when refused, the
    reason and seconds after which a retry could make it."""

    admit: bool
    predicted_s: float
    worker_id: str | None = None
    reason: str = ""
    retry_after_s: float = 0.0


def predict_ttft(
    cost: StepCost,
    worker: WorkerSnapshot,
    prompt_tokens: int,
    hit_blocks: int,
    block_size: int,
    queued_share: float = 0.0,
    queued_requests: float = 0.0,
) -> float:
    """Seconds from now to the first token of a request sent to ``worker`` now, behind
    ``queued_share`` prompt tokens in ``queued_requests`` requests still at the router."""
    # conditional expressions, not min()/max(): the `ttft` scorer runs this per candidate
    cached = hit_blocks * block_size
    cached = cached if cached < prompt_tokens else prompt_tokens
    ahead = worker.pending_prefill_tokens + math.ceil(queued_share)
    prompts = worker.waiting + math.ceil(queued_requests)
    fewest = -(-ahead // worker.max_model_len)  # no prompt ahead is longer than the context
    prompts = prompts if prompts > fewest else fewest
    running = worker.running
    context = worker.kv_blocks_used * block_size
    most = running * worker.max_model_len  # nor any running sequence's context
    idle = not (running or worker.waiting or worker.outstanding or ahead)
    return cost.time_to_first_token(
        prefill_ahead=ahead,
        uncached_tokens=prompt_tokens - cached,
        cached_tokens=cached,
        decode_seqs=running,
        decode_context=context if context < most else most,
        ahead_prompts=prompts if prompts > 1 else 1,
        after_idle=idle,
    )


def _candidates(workers: Sequence[WorkerSnapshot], request: RequestInfo) -> list[WorkerSnapshot]:
    need = request.prompt_tokens + request.max_tokens
    return [w for w in workers if w.healthy and w.role == request.role and need <= w.max_model_len]


def _best(
    cost: StepCost,
    candidates: Sequence[WorkerSnapshot],
    request: RequestInfo,
    prefix_hits: Mapping[str, int],
    block_size: int,
    ahead_tokens: int,
    ahead_requests: int,
) -> tuple[float, str]:
    """The lowest predicted TTFT (from now) over ``candidates`` (non-empty), and where."""
    share = ahead_tokens / len(candidates)
    count = ahead_requests / len(candidates)
    return min(
        (
            predict_ttft(
                cost,
                w,
                request.prompt_tokens,
                prefix_hits.get(w.worker_id, 0),
                block_size,
                share,
                count,
            ),
            w.worker_id,
        )
        for w in candidates
    )


def admit(
    cost: StepCost,
    ctx: SchedulingContext,
    *,
    block_size: int,
    target_s: float,
    waited_s: float = 0.0,
    queued_ahead_tokens: int = 0,
    queued_ahead_requests: int = 0,
    headroom: float = 1.0,
) -> AdmissionVerdict:
    """Whether any candidate worker can give the first token within ``headroom * target_s``
    (``waited_s`` already spent); see the module docstring."""
    candidates = _candidates(ctx.workers, ctx.request)
    if not candidates:
        return AdmissionVerdict(True, 0.0)  # nobody to predict for: the wait for a worker decides
    if queued_ahead_tokens and not queued_ahead_requests:
        queued_ahead_requests = 1
    ahead_s, best = _best(
        cost,
        candidates,
        ctx.request,
        ctx.prefix_hits,
        block_size,
        queued_ahead_tokens,
        queued_ahead_requests,
    )
    best_s = waited_s + ahead_s
    limit = headroom * target_s
    if best_s <= limit:
        return AdmissionVerdict(True, best_s, best)
    reason = (
        f"no worker can produce the first token within the {1000 * target_s:.0f} ms target: "
        f"the best predicted is {1000 * best_s:.0f} ms ({len(candidates)} workers; "
        f"{queued_ahead_tokens} prompt tokens queued ahead at the router)"
    )
    return AdmissionVerdict(False, best_s, best, reason, max(1.0, math.ceil(best_s - limit)))


K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Waiting(Generic[K]):
    """One request waiting in the flow queue, as `recheck` sees it: ``key`` (the caller's
    handle, e.g. its `Ticket`), its band, the request, its prefix hits per worker, how long
    it has waited and its TTFT target (seconds)."""

    key: K
    priority: int
    request: RequestInfo
    prefix_hits: Mapping[str, int]
    waited_s: float
    target_s: float


@dataclass(frozen=True, slots=True)
class Refusal(Generic[K]):
    """A waiting request to refuse now: why, the prediction behind it (0 for a sheddable
    request shed under pressure) and the seconds after which a retry could make it."""

    key: K
    reason: str
    predicted_s: float
    retry_after_s: float
    shed: bool = False


def recheck(
    cost: StepCost,
    workers: Sequence[WorkerSnapshot],
    waiting: Sequence[Waiting[K]],
    *,
    block_size: int,
    headroom: float = 1.0,
) -> list[Refusal[K]]:
    """The waiting requests to refuse now. ``waiting`` is in the flow queue's service order;
    each is predicted behind the ones before it that stay (a refused one leaves the queue),
    and refused when even its best worker misses ``headroom * target``. Then, if any request
    of priority >= 0 was refused, every sheddable one (negative priority) still waiting is
    refused too. Pure: no clock, no I/O."""
    refusals: list[Refusal[K]] = []
    ahead_tokens = 0
    ahead_requests = 0
    pressure = False
    kept_sheddable: list[Waiting[K]] = []
    for item in waiting:
        candidates = _candidates(workers, item.request)
        verdict: Refusal[K] | None = None
        if candidates:
            ahead_s, _ = _best(
                cost,
                candidates,
                item.request,
                item.prefix_hits,
                block_size,
                ahead_tokens,
                ahead_requests,
            )
            predicted = item.waited_s + ahead_s
            limit = headroom * item.target_s
            if predicted > limit:
                verdict = Refusal(
                    item.key,
                    f"it can no longer get its first token within its "
                    f"{1000 * item.target_s:.0f} ms target: waited {1000 * item.waited_s:.0f} "
                    f"ms, the best worker is predicted at {1000 * predicted:.0f} ms "
                    f"({ahead_requests} requests queued ahead of it)",
                    predicted,
                    max(1.0, math.ceil(predicted - limit)),
                )
        if verdict is not None:
            refusals.append(verdict)
            pressure = pressure or item.priority >= 0
            continue
        ahead_tokens += item.request.prompt_tokens
        ahead_requests += 1
        if item.priority < 0:
            kept_sheddable.append(item)
    if pressure:
        refusals += [
            Refusal(
                item.key,
                "it was shed: requests of a higher priority are missing their targets and "
                "sheddable requests run only on spare capacity",
                0.0,
                1.0,
                shed=True,
            )
            for item in kept_sheddable
        ]
    return refusals
