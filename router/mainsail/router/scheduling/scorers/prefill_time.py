"""`prefill-time`: prefer the worker where the request's first token is expected soonest.

Formula, per candidate ``w`` with its own measured cost model ``M_w`` (`mainsail.spec.kv_cost`,
reported in `LoadSnapshot.kv_cost`):

    t_w = M_w.prefill_s_per_token * w.pending_prefill_tokens            prefill queued ahead
        + prefix_seconds(M_w, prompt, prefix_hits[w], tier_hits[w], policy_w)   this prompt

``prefix_seconds`` prices the prompt by where its leading blocks are: free in the worker's own
cache, the fetch cost (round trip + bytes / bandwidth) for blocks it can read from its shared
Redis tier when the engine would fetch them, a full recompute for the rest. Scored relative to
the soonest candidate (see `_relative`): ``s_w = 1 - min(1, (t_w - m) / (m + slack))``,
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

from mainsail.router.scheduling.scorers._relative import relative_headroom
from mainsail.router.scheduling.types import SchedulingContext, WorkerSnapshot
from mainsail.spec.kv_cost import FETCH_POLICIES, FetchCostModel, FetchPolicy, prefix_seconds

_DEFAULT_BLOCK = 16


def fetch_policy(w: WorkerSnapshot) -> FetchPolicy | None:
    """The worker's tier fetch policy, None when it reads no tier."""
    p = w.kv_fetch_policy
    for known in FETCH_POLICIES:
        if p == known:
            return known
    return None


def fallback_kv_cost(
    ctx: SchedulingContext, candidates: Sequence[WorkerSnapshot]
) -> FetchCostModel:
    """The cost model for a worker that has reported none: defaults, at the block size of
    the candidates that did (or the request's)."""
    for w in candidates:
        if w.kv_cost is not None:
            return FetchCostModel(block_bytes=0, block_size=w.kv_cost.block_size)
    blocks = len(ctx.request.block_hashes)
    size = ctx.request.prompt_tokens // blocks if blocks else _DEFAULT_BLOCK
    return FetchCostModel(block_bytes=0, block_size=max(1, size))


def expected_seconds(ctx: SchedulingContext, candidates: Sequence[WorkerSnapshot]) -> list[float]:
    """``t_w`` of the module docstring for each candidate (seconds)."""
    prompt = ctx.request.prompt_tokens
    hits, tier = ctx.prefix_hits, ctx.tier_hits
    fallback: FetchCostModel | None = None
    out: list[float] = []
    for w in candidates:
        model = w.kv_cost
        if model is None:
            model = fallback = fallback or fallback_kv_cost(ctx, candidates)
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
        if slack_tokens <= 0:
            raise ValueError(f"slack_tokens must be > 0, got {slack_tokens}")
        self.slack_tokens = slack_tokens

    def score(self, ctx: SchedulingContext, candidates: Sequence[WorkerSnapshot]) -> list[float]:
        seconds = expected_seconds(ctx, candidates)
        rates = [w.kv_cost.prefill_s_per_token for w in candidates if w.kv_cost is not None]
        rate = min(rates) if rates else FetchCostModel(0, 1).prefill_s_per_token
        return relative_headroom(seconds, max(self.slack_tokens * rate, 1e-9))
