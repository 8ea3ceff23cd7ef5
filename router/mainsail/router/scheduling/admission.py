"""Admission: refuse early a request no worker can serve within its TTFT target.

Why before queueing: a request that will miss its target anyway only takes a slot from one
that would not; a 429 with the reason and `Retry-After` lets the client back off or go
elsewhere now instead of after the deadline (issue 14).

Prediction, per candidate worker ``w`` (one cost model, `mainsail.spec.step_cost.StepCost`,
the one the simulator replays and its calibration fits):

    ttft(w) = waited
            + cost.time_to_first_token(
                  prefill_ahead = w.pending_prefill_tokens + queued_ahead / candidates,
                  uncached      = prompt - hits(w) * block_size,
                  cached        = hits(w) * block_size,
                  decode_seqs   = w.running,
                  decode_context= w.kv_blocks_used * block_size)

``queued_ahead`` is the prompt tokens of requests waiting in the router's flow queue that
will be served before this one (same or higher band), spread over the candidates. Steps run
at the engine's token budget with decodes first, so a worker busy decoding prefills slower.
A worker at its batch limit must also finish a sequence before it admits a new one; that
time depends on output lengths nobody knows yet, so it is not charged (the prediction is a
lower bound there, and the flow queue's bounds take over).

The request is admitted when ``min_w ttft(w) <= headroom * target``; otherwise refused with
the best prediction, and ``retry_after`` = how much later the best worker would make it.
Candidates are workers of the request's role whose context fits (other filters, such as
capacity, only decide *when* a worker takes it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mainsail.router.scheduling.types import SchedulingContext, WorkerSnapshot
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
) -> float:
    """Seconds from now to the first token of a request sent to ``worker`` now."""
    cached = min(prompt_tokens, hit_blocks * block_size)
    return cost.time_to_first_token(
        prefill_ahead=worker.pending_prefill_tokens + math.ceil(queued_share),
        uncached_tokens=prompt_tokens - cached,
        cached_tokens=cached,
        decode_seqs=worker.running,
        decode_context=worker.kv_blocks_used * block_size,
    )


def admit(
    cost: StepCost,
    ctx: SchedulingContext,
    *,
    block_size: int,
    target_s: float,
    waited_s: float = 0.0,
    queued_ahead_tokens: int = 0,
    headroom: float = 1.0,
) -> AdmissionVerdict:
    """Whether any candidate worker can give the first token within ``headroom * target_s``
    (``waited_s`` already spent); see the module docstring."""
    request = ctx.request
    need = request.prompt_tokens + request.max_tokens
    candidates = [
        w for w in ctx.workers if w.healthy and w.role == request.role and need <= w.max_model_len
    ]
    if not candidates:
        return AdmissionVerdict(True, 0.0)  # nobody to predict for: the wait for a worker decides
    share = queued_ahead_tokens / len(candidates)
    best_s, best = min(
        (
            waited_s
            + predict_ttft(
                cost,
                w,
                request.prompt_tokens,
                ctx.prefix_hits.get(w.worker_id, 0),
                block_size,
                share,
            ),
            w.worker_id,
        )
        for w in candidates
    )
    limit = headroom * target_s
    if best_s <= limit:
        return AdmissionVerdict(True, best_s, best)
    reason = (
        f"no worker can produce the first token within the {1000 * target_s:.0f} ms target: "
        f"the best predicted is {1000 * best_s:.0f} ms ({len(candidates)} workers; "
        f"{queued_ahead_tokens} prompt tokens queued ahead at the router)"
    )
    return AdmissionVerdict(False, best_s, best, reason, max(1.0, math.ceil(best_s - limit)))
