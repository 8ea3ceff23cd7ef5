"""`ttft`: prefer the worker where the request's first token is expected soonest, in seconds,
from the engine's step cost model — the prediction admission refuses by.

Formula, per candidate ``w`` with its step cost model ``C_w`` (`WorkerSnapshot.step_cost`,
`mainsail.spec.step_cost`) and its KV cost model ``M_w`` (`WorkerSnapshot.kv_cost`):

    ready_w = leading blocks of the prompt ready on w: its own cached prefix, plus the blocks
              it can read from its shared Redis tier when its engine would fetch them
    t_w = M_w.fetch_seconds(fetched blocks)                         0 without a tier fetch
        + predict_ttft(C_w, w, prompt, ready_w, block size,         `admission.predict_ttft`
                       queued_requests = max(0, outstanding - running - waiting))

``predict_ttft`` sums the worker's engine steps in closed form (`StepCost.time_to_first_token`,
O(1) per candidate from the snapshot's aggregates, no loop over queued requests): its running
sequences decode one token per step, taking their share of every step's token budget and
time, while the prompt tokens queued there (``pending_prefill_tokens``, in ``waiting``
prompts plus the router's in-flight requests its last report does not show yet) and then this
prompt's uncached part are prefilled in chunks; prompts ahead join the decodes as they finish.
Scored relative to the soonest candidate (`_seconds`): ``s_w = 1 - min(1, (t_w - m) / (m +
slack))``, ``m = min t``, ``slack`` = the time the cheapest candidate takes to prefill
``slack_tokens`` (512) alone.

Why, next to `prefill-time`: `prefill-time` counts prefill only, so a worker whose batch is
full of long decodes looks as fast as an idle one; the default profile leans on request counts
(`queue-depth`, `running-requests`) to stand in for that, and those count a 10-token and a
10,000-token prompt alike. This puts the decodes' share in the same seconds as the prefill, with
the one cost model the simulator replays and its calibration fits (issue 14).

Without a step cost model (`spec.router.admission.stepCost` unset) a worker is priced with
``token_s`` = its measured prefill seconds per token and nothing else: prefill queued plus this
prompt's uncached part plus one budget token per running decode per step, which is
`prefill-time`'s figure with the decodes' token share added.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import ClassVar

from mainsail.router.scheduling.admission import predict_ttft
from mainsail.router.scheduling.scorers._seconds import (
    fetch_policy,
    kv_costs,
    seconds_scores,
    slack_tokens_of,
)
from mainsail.router.scheduling.types import SchedulingContext, WorkerSnapshot
from mainsail.spec.kv_cost import FetchCostModel, decide_fetch
from mainsail.spec.step_cost import StepCost


@functools.lru_cache(maxsize=256)
def _token_only(prefill_s_per_token: float, max_num_seqs: int) -> StepCost:
    """The step cost of a worker nobody configured one for: its measured prefill rate."""
    return StepCost(
        step_overhead_s=0.0,
        token_s=prefill_s_per_token,
        attn_pair_s=0.0,
        kv_read_s=0.0,
        max_num_seqs=max_num_seqs,
    )


def step_cost_of(w: WorkerSnapshot, kv: FetchCostModel) -> StepCost:
    """``C_w`` of the module docstring."""
    if w.step_cost is not None:
        return w.step_cost
    return _token_only(kv.prefill_s_per_token, w.max_num_seqs)


def ready_blocks(
    kv: FetchCostModel, w: WorkerSnapshot, prompt: int, local: int, tier: int
) -> tuple[int, float]:
    """Leading blocks of the prompt ready on ``w`` and the seconds spent fetching the tier's
    share of them (as `mainsail.spec.kv_cost.prefix_seconds` prices them)."""
    reusable = max(0, (prompt - 1) // kv.block_size)
    ready = min(max(local, 0), reusable)
    if tier > ready and w.kv_fetch_policy:
        policy = fetch_policy(w)
        extra = min(tier, reusable) - ready
        if policy is not None and extra > 0 and decide_fetch(policy, kv, extra):
            return ready + extra, kv.fetch_seconds(extra)
    return ready, 0.0


def expected_ttft(
    ctx: SchedulingContext,
    candidates: Sequence[WorkerSnapshot],
    kvs: Sequence[FetchCostModel] | None = None,
) -> list[float]:
    """``t_w`` of the module docstring for each candidate (seconds): O(1) each, the step cost
    model's closed form over the aggregates the snapshot carries (no per-request loop).
    ``kvs``: the candidates' `kv_costs`, when the caller has them already."""
    prompt = ctx.request.prompt_tokens
    hits, tier = ctx.prefix_hits, ctx.tier_hits
    out: list[float] = []
    for w, kv in zip(candidates, kvs or kv_costs(ctx, candidates), strict=True):
        wid = w.worker_id
        ready, fetch_s = ready_blocks(kv, w, prompt, hits.get(wid, 0), tier.get(wid, 0))
        unreported = w.outstanding - w.running - w.waiting
        out.append(
            fetch_s
            + predict_ttft(
                step_cost_of(w, kv),
                w,
                prompt,
                ready,
                kv.block_size,
                queued_requests=unreported if unreported > 0 else 0,
            )
        )
    return out


class TTFTScorer:
    """Rewards the candidates with the soonest expected first token, decodes included."""

    name: ClassVar[str] = "ttft"
    reads: ClassVar[frozenset[str]] = frozenset(
        {
            "worker_id",
            "running",
            "waiting",
            "outstanding",
            "max_num_seqs",
            "max_model_len",
            "kv_blocks_used",
            "pending_prefill_tokens",
            "kv_cost",
            "kv_tier_id",
            "kv_fetch_policy",
            "step_cost",
            "prefix_hits",
            "tier_hits",
            "request",
        }
    )

    def __init__(self, slack_tokens: int = 512) -> None:
        self.slack_tokens = int(slack_tokens_of(slack_tokens))

    def score(self, ctx: SchedulingContext, candidates: Sequence[WorkerSnapshot]) -> list[float]:
        kvs = kv_costs(ctx, candidates)
        seconds = expected_ttft(ctx, candidates, kvs)
        costs: dict[int, StepCost] = {}  # workers usually share one model: price each once
        for w, kv in zip(candidates, kvs, strict=True):
            cost = step_cost_of(w, kv)
            costs[id(cost)] = cost
        slack = min((c.prefill_time(self.slack_tokens) for c in costs.values()), default=1.0)
        return seconds_scores(seconds, slack)
