"""`prefill-backlog`: prefer workers with less prompt work queued ahead of a new request.

Formula: ``b_w = w.pending_prefill_tokens`` (the larger of the worker's report and the router's
own count of uncached prompt tokens it dispatched there and has not seen a first token for),
scored relative to the least-backlogged candidate (see `_relative`):
``s_w = 1 - min(1, (b_w - m) / (m + slack))``, ``m = min backlog``, ``slack = 512`` tokens.

Why tokens, not requests: one prompt can be a hundred times another (Mooncake prompts span 1 to
250 blocks), so request counts (`queue-depth`, `running-requests`) call two workers equal when
one has seconds of prefill queued. Time to first token grows with the tokens ahead, which is
what this measures; the simulator's design test found this signal missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from mainsail.router.scheduling.scorers._relative import relative_headroom
from mainsail.router.scheduling.types import SchedulingContext, WorkerSnapshot


class PrefillBacklogScorer:
    """Rewards short prefill backlogs, relative to the shortest."""

    name: ClassVar[str] = "prefill-backlog"
    reads: ClassVar[frozenset[str]] = frozenset({"pending_prefill_tokens"})

    def __init__(self, slack: float = 512.0) -> None:
        if slack <= 0:
            raise ValueError(f"slack must be > 0 tokens, got {slack}")
        self.slack = slack

    def score(self, ctx: SchedulingContext, candidates: Sequence[WorkerSnapshot]) -> list[float]:
        return relative_headroom([w.pending_prefill_tokens for w in candidates], self.slack)
