"""`running-requests`: prefer workers with fewer requests in flight from this router.

Formula: ``s_w = 1 - min(1, (w.outstanding - m) / (m + slack))`` with ``m`` the smallest
``outstanding`` among candidates and ``slack = 2`` requests (see `_relative`).

Why ``outstanding`` (the router's own count) rather than the worker's reported ``running``: it
changes the moment a request is dispatched, so consecutive decisions within one report interval
see each other; this is what keeps a stream of requests sharing a prefix from piling onto the
one worker that caches it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from mainsail.router.scheduling.scorers._relative import relative_headroom
from mainsail.router.scheduling.types import SchedulingContext, WorkerSnapshot


class RunningRequestsScorer:
    """Rewards workers with fewer in-flight requests, relative to the least loaded."""

    name: ClassVar[str] = "running-requests"
    reads: ClassVar[frozenset[str]] = frozenset({"outstanding"})

    def __init__(self, slack: float = 2.0) -> None:
        if slack <= 0:
            raise ValueError(f"slack must be > 0, got {slack}")
        self.slack = slack

    def score(self, ctx: SchedulingContext, candidates: Sequence[WorkerSnapshot]) -> list[float]:
        return relative_headroom([w.outstanding for w in candidates], self.slack)
