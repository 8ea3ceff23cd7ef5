"""`prefill-time`: prefer the worker where the request's first token is expected soonest.

Formula, per candidate ``w`` with its own measured cost model ``M_w`` (`mainsail.spec.kv_cost`,
reported in `LoadSnapshot.kv_cost`):

    t_w = M_w.prefill_s_per_token * w.pending_prefill_tokens            prefill queued ahead
        + prefix_seconds(M_w, prompt, prefix_hits[w], tier_hits[w], policy_w)   this prompt

``prefix_seconds`` prices the prompt by where its leading blocks are: free in the worker's own
cache, the fetch cost (round trip + bytes / bandwidth) for blocks it can read from its shared
Redis tier when the engine would fetch them, a full recompute for the rest. Scored relative to
the soonest candidate (see `_seconds`): ``s_w = 1 - min(1, (t_w - m) / (m + slack))``,
``m = min t``, ``slack`` = 512 tokens at the cheapest candidate's prefill rate.

Why one figure in seconds rather than a prefix fraction plus a backlog count: a cached prefix is
worth exactly the prefill it saves, and that is only worth something if it is not spent waiting
behind other prompts. `kv-prefix` (a fraction) calls 10 cached blocks of a 20-block prompt and
100 of a 200-block one equal; this prices them at what they save. A worker that has not reported
a cost model yet is priced with the defaults of `FetchCostModel` (block size from the router).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from mainsail.router.scheduling.scorers._seconds import (
    fetch_policy,
    kv_costs,
    seconds_scores,
    slack_tokens_of,
)
from mainsail.router.scheduling.types import SchedulingContext, WorkerSnapshot
from mainsail.spec.kv_cost import FetchCostModel, prefix_seconds


def expected_seconds(ctx: SchedulingContext, candidates: Sequence[WorkerSnapshot]) -> list[float]:
    """``t_w`` of the module docstring for each candidate (seconds)."""
    prompt = ctx.request.prompt_tokens
    hits, tier = ctx.prefix_hits, ctx.tier_hits
    out: list[float] = []
    for w, model in zip(candidates, kv_costs(ctx, candidates), strict=True):
        wid = w.worker_id
        ahead = w.pending_prefill_tokens * model.prefill_s_per_token
        out.append(
            ahead
            + prefix_seconds(model, prompt, hits.get(wid, 0), tier.get(wid, 0), fetch_policy(w))
        )
    return out


class PrefillTimeScorer:
    """Rewards the candidates with the least prefill ahead of, and in, this request."""

    name: ClassVar[str] = "prefill-time"
    reads: ClassVar[frozenset[str]] = frozenset(
        {
            "worker_id",
            "pending_prefill_tokens",
            "kv_cost",
            "kv_tier_id",
            "kv_fetch_policy",
            "prefix_hits",
            "tier_hits",
            "request",
        }
    )

    def __init__(self, slack_tokens: float = 512.0) -> None:
        self.slack_tokens = slack_tokens_of(slack_tokens)

    def score(self, ctx: SchedulingContext, candidates: Sequence[WorkerSnapshot]) -> list[float]:
        seconds = expected_seconds(ctx, candidates)
        rates = [w.kv_cost.prefill_s_per_token for w in candidates if w.kv_cost is not None]
        rate = min(rates) if rates else FetchCostModel(0, 1).prefill_s_per_token
        return seconds_scores(seconds, self.slack_tokens * rate)
