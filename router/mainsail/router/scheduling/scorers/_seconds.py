"""What the scorers that price a request in seconds (`prefill-time`, `ttft`) share: each
candidate's KV cost model, its tier fetch policy, and the score of an expected time.

Scores are relative to the soonest candidate (`_relative`): ``s_w = 1 - min(1, (t_w - m) /
(m + slack))``, ``m = min t``; ``slack`` (seconds) is a small prompt's worth of work on the
cheapest candidate, so near-ties between idle workers do not swing the choice.
"""

from __future__ import annotations

from collections.abc import Sequence

from mainsail.router.scheduling.scorers._relative import relative_headroom
from mainsail.router.scheduling.types import SchedulingContext, WorkerSnapshot
from mainsail.spec.kv_cost import FETCH_POLICIES, FetchCostModel, FetchPolicy

_DEFAULT_BLOCK = 16


def slack_tokens_of(slack_tokens: float) -> float:
    """``slack_tokens`` checked: the scorers' one option, > 0."""
    if slack_tokens <= 0:
        raise ValueError(f"slack_tokens must be > 0, got {slack_tokens}")
    return slack_tokens


def seconds_scores(seconds: Sequence[float], slack_s: float) -> list[float]:
    """Scores in [0, 1] of expected times ``seconds``, 1 for the soonest (see above)."""
    return relative_headroom(seconds, max(slack_s, 1e-9))


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


def kv_costs(ctx: SchedulingContext, candidates: Sequence[WorkerSnapshot]) -> list[FetchCostModel]:
    """Each candidate's KV cost model, `fallback_kv_cost` where it reported none."""
    out: list[FetchCostModel] = []
    fallback: FetchCostModel | None = None
    for w in candidates:
        kv = w.kv_cost
        if kv is None:
            kv = fallback = fallback or fallback_kv_cost(ctx, candidates)
        out.append(kv)
    return out
